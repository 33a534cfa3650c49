"""SwiGLU feed-forward (dense layers and the shared expert): down(silu(gate(x)) * up(x))."""

import mlx.nn as nn
from mlx_lm.models.activations import swiglu  # mx.compile-d silu(g) * u


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def __call__(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
