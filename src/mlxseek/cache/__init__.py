"""Caches: the MLA latent cache (trimmable, 8/4-bit quantized), the DSA indexer cache, V4's caches, the MTP
cache and the batched caches. All follow mlx-lm's cache protocol (`update_and_fetch`, `state`, `trim`,
`offset`) and ours (`protocol`: snapshot, restore, cut_state, capabilities), which the server and
batching use instead of asking for a class."""
