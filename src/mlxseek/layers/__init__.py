"""DeepSeek building blocks, one paper concept per module."""

from .experts import RoutedExperts
from .mla import MultiHeadLatentAttention
from .mlp import MLP
from .moe import DeepSeekMoE, MoEGate
from .mtp import MultiTokenPrediction
from .norms import RMSNorm
from .rope import RotaryEmbedding
from .router import route

__all__ = [
    "DeepSeekMoE", "MLP", "MoEGate", "MultiHeadLatentAttention", "MultiTokenPrediction",
    "RMSNorm", "RotaryEmbedding", "RoutedExperts", "route",
]
