"""Routed experts whose weights live in an `ExpertPager` (mlxseek.paging.pager) instead of parameters:
a drop-in for `RoutedExperts` with the same contract, x (..., D), inds (..., K) -> (..., K, D).

Shapes: T tokens (flattened leading dims), K experts per token, U distinct experts in the call, D hidden.

The router's choice must be known before the experts can be fetched, so each call evaluates `inds`.
Each expert then runs through the very module type the resident stack uses (gather_mm / gather_qmm /
the CPU K-major layout) on exactly the rows the resident call gives it, in the same order and grouping
(per (token, k) pair below SORT_THRESHOLD; per run of one expert in the expert-sorted order above it),
so the outputs are bit for bit the resident model's (tested on MLX's CPU backend; Metal's gather kernels
tile rows by batch size, so there expect at most rounding-level differences).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..layers.experts import SORT_THRESHOLD


class PagedExperts(nn.Module):
    def __init__(self, pager, path: str):
        super().__init__()
        self.pager, self.path = pager, path

    def __call__(self, x: mx.array, inds: mx.array) -> mx.array:
        lead, K, D = x.shape[:-1], inds.shape[-1], x.shape[-1]
        xt, flat = x.reshape(-1, 1, D), inds.reshape(-1)
        order = mx.argsort(flat)  # as RoutedExperts sorts: the same permutation, so the same runs
        ids = np.array(flat[order])  # (T*K,) experts in sorted order; evaluates the router
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        bounds = np.r_[starts, ids.size]
        experts = self.pager.get(self.path, ids[starts].tolist())
        self.pager.guess_next(self.path, x)  # reads for the next layer overlap this layer's compute
        sort = flat.size >= SORT_THRESHOLD
        rows = xt[order // K]  # (T*K, 1, D) in sorted order
        parts = []
        for e, s, t in zip(ids[starts].tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
            n = t - s
            if sort:  # one run of expert e, as the resident sorted gather sees it
                y = experts[e]._glu(rows[s:t], mx.zeros((n,), mx.uint32), True)  # (n, 1, D)
            else:  # (token, k) pairs one at a time, as the resident broadcast gather computes them
                y = experts[e]._glu(rows[s:t][:, None], mx.zeros((n, 1), mx.uint32), False)  # (n, 1, 1, D)
            parts.append(y.reshape(n, D))
        y = mx.concatenate(parts)[mx.argsort(order)]  # (T*K, D) back in (token, k) order
        return y.reshape(*lead, K, D)
