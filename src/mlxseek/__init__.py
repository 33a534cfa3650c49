"""mlxseek: DeepSeek-family models on Apple Silicon with MLX."""

# Before anything imports mlx.core: on Linux, let MLX's float matmuls use a system OpenBLAS (see blas.py).
from .cpu import blas as _blas

_blas.choose(defer=True)  # a failure is raised at first use (blas.check), where the CLI can print it


from .generation.chat import ChatSession  # noqa: E402
from .config import ModelConfig
from .convert.convert import convert
from .errors import MlxseekError
from .generation.stream import GenerationResponse, generate, make_prompt_cache, stream_generate
from .loading.loader import load, load_model, load_tokenizer
from .models.deepseek_v3 import Model

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "MlxseekError", "convert", "load", "load_model", "load_tokenizer",
           "ChatSession", "GenerationResponse", "generate", "make_prompt_cache", "stream_generate"]
