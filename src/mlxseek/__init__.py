"""mlxseek: DeepSeek-family models on Apple Silicon with MLX."""

# Before anything imports mlx.core: on Linux, let MLX's float matmuls use a system OpenBLAS (see blas.py).
from .cpu import blas as _blas

_blas.choose(defer=True)  # a failure is raised at first use (blas.check), where the CLI can print it


from .config import ModelConfig
from .convert.convert import convert
from .errors import MlxseekError
from .formats import ReplyFormat, ReplyParser, parse_reply, render_chat
from .generation.batch import (
           BatchDecoder,
           BatchResult,
           batch_generate,
           stream_batch_generate,
)
from .generation.chat import ChatSession  # noqa: E402
from .generation.rows import BatchRecord, RowParams
from .generation.steps import make_prompt_cache
from .generation.stream import GenerationResponse, generate, stream_generate
from .loading.loader import load, load_model, load_tokenizer
from .models.deepseek_v3 import Model

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "MlxseekError", "convert", "load", "load_model", "load_tokenizer",
           "BatchDecoder", "BatchRecord", "BatchResult", "RowParams", "batch_generate", "stream_batch_generate",
           "ChatSession", "GenerationResponse", "generate", "make_prompt_cache", "stream_generate",
           "ReplyFormat", "ReplyParser", "parse_reply", "render_chat"]
