"""mlxseek: DeepSeek-family models on Apple Silicon with MLX."""

from .config import ModelConfig
from .errors import MlxseekError
from .loader import load, load_model, load_tokenizer
from .model import Model

__version__ = "0.1.0"
__all__ = ["Model", "ModelConfig", "MlxseekError", "load", "load_model", "load_tokenizer"]
