"""Expert paging: keep an LRU of routed experts resident and read the rest from the checkpoint."""
