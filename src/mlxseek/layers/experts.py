"""Routed experts stacked into (E, out, in) tensors and run with gather_mm / gather_qmm.

Shapes: T tokens (flattened leading dims), K experts per token, E experts, D hidden, I moe_intermediate.
Parameter paths `switch_mlp.{gate,up,down}_proj.weight` follow mlx-lm's layout, so mlx-community
checkpoints load unchanged; mlx-lm's SwitchLinear provides the (quantizable) stacked weight.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu  # mx.compile-d silu(g) * u
from mlx_lm.models.switch_layers import SwitchLinear

# Sorting tokens by expert makes gathered matmuls read each expert once; it only pays for many rows.
SORT_THRESHOLD = 64


def _sort_by_expert(x: mx.array, inds: mx.array):
    """x (T, 1, D), inds (T, K) -> rows (T*K, 1, D) grouped by expert, their ids, the order and its inverse."""
    flat = inds.flatten()
    order = mx.argsort(flat)
    inv = mx.argsort(order)
    return x[order // inds.shape[-1]], flat[order], order, inv


class RoutedExperts(nn.Module):
    # A function rounding each matmul input, as DeepSeek's FP8/FP4 GEMMs do (V4.1's set_fake_quant sets it);
    # the down projection's input is then the route-weighted activation, as in DeepSeek's Expert.forward.
    input_rounding = None

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int):
        super().__init__()
        self.gate_proj = SwitchLinear(hidden_size, intermediate_size, num_experts, bias=False)
        self.up_proj = SwitchLinear(hidden_size, intermediate_size, num_experts, bias=False)
        self.down_proj = SwitchLinear(intermediate_size, hidden_size, num_experts, bias=False)

    def _activate(self, g: mx.array, u: mx.array) -> mx.array:
        return swiglu(g, u)  # compiled silu(g) * u (one kernel); V4 overrides it with its clamped variant

    def _round(self, x: mx.array) -> mx.array:
        return x if self.input_rounding is None else self.input_rounding(x)

    def _glu(self, x, idx, sorted_indices, scales=None):
        g = self.gate_proj(x, idx, sorted_indices=sorted_indices)
        u = self.up_proj(x, idx, sorted_indices=sorted_indices)
        h = self._activate(g, u)
        h = h if scales is None else h * scales
        return self.down_proj(self._round(h), idx, sorted_indices=sorted_indices)

    def __call__(self, x: mx.array, inds: mx.array, scales=None) -> mx.array:
        """x (..., D), inds (..., K), scales (..., K) route weights to apply before the down projection (or
        None: the caller weights the outputs) -> per-expert outputs (..., K, D)."""
        lead, K, D = x.shape[:-1], inds.shape[-1], x.shape[-1]
        xt, it = self._round(x).reshape(-1, 1, D), inds.reshape(-1, K)
        st = None if scales is None else scales.reshape(-1, K)
        if it.size >= SORT_THRESHOLD:
            xs, idx, order, inv = _sort_by_expert(xt, it)
            ss = None if st is None else st.flatten()[order][:, None, None]  # (T*K, 1, 1), sorted like xs
            y = self._glu(xs, idx, True, ss)[inv]  # (T*K, 1, D) back in token order
        else:
            ss = None if st is None else st[:, :, None, None]  # (T, K, 1, 1)
            y = self._glu(xt[:, None], it, False, ss)  # x (T, 1, 1, D) broadcasts over K
        # Float32 experts under half-precision activations (the CPU fallback, mlxseek.backend) promote;
        # hand the rest of the model its own dtype back.
        return y.reshape(*lead, K, D).astype(x.dtype)

    def reference(self, x: mx.array, inds: mx.array, scales=None) -> mx.array:
        """Slow path: loop over experts with dense weights. Same contract as __call__."""
        lead, K, D = x.shape[:-1], inds.shape[-1], x.shape[-1]
        xt, it = self._round(x).reshape(-1, D), inds.reshape(-1, K)
        out = mx.zeros((xt.shape[0], K, D), dtype=x.dtype)
        for e in sorted(set(it.flatten().tolist())):
            w = [_dense(p, e) for p in (self.gate_proj, self.up_proj, self.down_proj)]
            h = self._activate(xt @ w[0].T, xt @ w[1].T)
            if scales is not None:  # a token picks expert e at most once: its weight for e, else 0
                h = h * mx.where(it == e, scales.reshape(-1, K), 0).sum(axis=-1, keepdims=True)
            y = self._round(h) @ w[2].T  # (T, D): expert e applied to every token
            out = mx.where((it == e)[..., None], y[:, None, :], out)
        return out.reshape(*lead, K, D)


def _dense(layer, e: int) -> mx.array:
    """Expert e's weight (out, in) as a dense matrix, dequantizing if the stack is quantized."""
    if hasattr(layer, "dense_weight"):  # device-specific layouts know their own storage
        return layer.dense_weight(e)
    if "scales" in layer:
        return mx.dequantize(
            layer.weight[e], layer.scales[e], layer.get("biases")[e] if "biases" in layer else None,
            group_size=layer.group_size, bits=layer.bits, mode=getattr(layer, "mode", "affine"),
        )
    return layer.weight[e]
