"""Grouped low-rank output projection (DeepSeek-V4 report section 2.3.1, "grouped output projection").

The attention output of H heads x head_dim is far wider than the model (V4-Flash: 64 x 512 = 32768),
so the heads are split into G = `o_groups` groups; each group's H*head_dim/G channels are projected on
their own to `o_lora_rank` channels (this module, checkpoint `attn.wo_a`, weight (G*R, H*head_dim/G)),
and one ordinary linear (`attn.wo_b`) mixes the G*R channels back to the hidden size.
The weight keeps the checkpoint's 2-D layout; rows g*R .. (g+1)*R - 1 belong to group g.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class GroupedLinear(nn.Module):
    def __init__(self, in_per_group: int, out_per_group: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = mx.zeros((groups * out_per_group, in_per_group))

    def __call__(self, x: mx.array) -> mx.array:
        """x (..., G, in_per_group) -> (..., G, out_per_group)."""
        w = self.weight.reshape(self.groups, -1, self.weight.shape[-1])  # (G, R, in)
        return (x[..., None, :] @ w.swapaxes(-1, -2))[..., 0, :]  # (..., G, 1, in) @ (G, in, R)
