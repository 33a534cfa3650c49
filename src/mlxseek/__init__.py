"""mlxseek: DeepSeek-family models on Apple Silicon with MLX."""

from .chat import ChatSession
from .config import ModelConfig
from .convert.convert import convert
from .errors import MlxseekError
from .generate import GenerationResponse, generate, make_prompt_cache, stream_generate
from .loader import load, load_model, load_tokenizer
from .model import Model

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "MlxseekError", "convert", "load", "load_model", "load_tokenizer",
           "ChatSession", "GenerationResponse", "generate", "make_prompt_cache", "stream_generate"]
