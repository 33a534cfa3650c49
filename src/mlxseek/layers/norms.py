"""RMSNorm (Zhang & Sennrich 2019), as every DeepSeek block uses it.

mlx's nn.RMSNorm already runs the fused `mx.fast.rms_norm` kernel and accumulates in float32, and its
single `weight` parameter matches the checkpoint key, so we use it as is rather than re-implement it.
"""

import mlx.nn as nn

RMSNorm = nn.RMSNorm

__all__ = ["RMSNorm"]
