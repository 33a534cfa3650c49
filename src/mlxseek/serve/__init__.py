"""`mlxseek serve`: OpenAI- and Anthropic-compatible HTTP serving of one model.

`create_app(...)` builds the ASGI app around a model, its tokenizer and an Engine; `serve(...)` loads a
checkpoint, starts the engine and runs uvicorn.
"""

from .app import create_app
from .limits import Limits
from .runner import serve

__all__ = ["Limits", "create_app", "serve"]
