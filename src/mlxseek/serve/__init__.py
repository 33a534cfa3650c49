"""`mlxseek serve`: OpenAI- and Anthropic-compatible HTTP serving of one loaded model.

`create_app(...)` builds the ASGI app around a model, its tokenizer and an `engine.Engine` (one worker
thread, a bounded queue and a prefix cache: `prefix_cache` in RAM, `prefix_disk` on disk, `cache_state`
for snapshots of prompt caches); `serve(...)` loads a checkpoint, starts the engine and runs uvicorn.
"""

from .app import create_app
from .limits import Limits
from .runner import serve

__all__ = ["Limits", "create_app", "serve"]
