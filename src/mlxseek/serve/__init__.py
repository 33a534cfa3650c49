"""`mlxseek serve`: an OpenAI- and Anthropic-compatible server over one loaded model.

`engine.Engine` runs generation on one worker thread with a bounded queue and a prefix cache
(`prefix_cache` in RAM, `prefix_disk` on disk, `cache_state` for snapshots of prompt caches).
"""
