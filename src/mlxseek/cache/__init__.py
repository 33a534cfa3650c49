"""Caches: the MLA latent cache (trimmable, 8/4-bit quantized), the DSA indexer cache and V4's caches.
All follow mlx-lm's cache protocol (`update_and_fetch`, `state`, `trim`, `offset`)."""
