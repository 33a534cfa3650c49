"""mlxseek: DeepSeek-family models on Apple Silicon with MLX."""

# Before anything imports mlx.core: on Linux, let MLX's float matmuls use a system OpenBLAS (see blas.py).
from . import blas as _blas

_blas.choose()


from .chat import ChatSession  # noqa: E402
from .config import ModelConfig
from .convert.convert import convert
from .errors import MlxseekError
from .formats import ReplyParser, parse_reply, render_chat
from .generate import GenerationResponse, generate, make_prompt_cache, stream_generate
from .loader import load, load_model, load_tokenizer
from .model import Model

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "MlxseekError", "convert", "load", "load_model", "load_tokenizer",
           "ChatSession", "GenerationResponse", "generate", "make_prompt_cache", "stream_generate",
           "ReplyParser", "parse_reply", "render_chat"]
