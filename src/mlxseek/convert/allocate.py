"""Bits and group size per module to hit a size target (`--target-bpw`), by measured sensitivity x importance.

While calibration holds a layer resident, every quantizable module of it is quantized at each option
(bits in BITS x group sizes in GROUP_SIZES that divide its input dim; every MEASURED_ROW_STRIDE-th row,
up to MEASURED_EXPERTS experts of a stack) and its cost measured as the expected output error over the
calibration tokens:
  cost = sum over experts e of  count_e * sum_rows sum_j imp_ej (Q(W) - W)_rj^2
(count_e the tokens routed to expert e, imp_ej their mean squared input of column j; a plain Linear is
one "expert" every token goes through). Modules with no recorded input count every token with imp = 1
(MultiLinear kv_b halves), or one row per token (the embedding); the MTP block borrows the last layer's
statistics at MTP_WEIGHT. Sizes count what `info` counts: bits + two float scales/biases per group.
Allocation walks each module's lower convex hull of (size, cost), buying the step with the largest cost
drop per added bit while it fits (the classic greedy for a separable knapsack with diminishing returns),
then spends what is left on any option that still fits, so the result lands just under the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
from mlx import nn

from ..errors import ConversionError
from .quantize import BITS, GROUP_SIZES, MODE, QuantPlan
from .stream import MEASURED_ROW_STRIDE, measured_experts


# The MTP block only drafts: its error costs draft acceptance, never the main model's output, so it
# counts at a tenth (drop it with --drop-mtp to spend nothing on it).
MTP_WEIGHT = 0.1
Option = tuple[int, int]  # (bits, group_size)


@dataclass
class Sensitivity:
    """cost[path][(bits, group_size)] and params[path] for the modules of `plan` measured so far."""

    plan: QuantPlan
    last_layer: int  # index of the last decoder layer: the MTP block's modules borrow its statistics
    cost: dict[str, dict[Option, float]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def measure(self, prefix: str, root: nn.Module, stats) -> None:
        """on_layer hook of calibrate.collect: `root` resident, its recorders (if any) wrapping modules."""
        for rel, m in root.named_modules():
            path = prefix + rel.replace(".inner", "")
            if path not in self.plan.params or "weight" not in m or path in self.cost or path in self.plan.imported:
                continue
            self.params[path] = math.prod(m.weight.shape)
            self.cost[path] = self._module_cost(path, m.weight, stats)

    def _module_cost(self, path: str, w: mx.array, stats) -> dict[Option, float]:
        lead = w.shape[:-2] if w.ndim == 3 else ()
        mats = measured_experts(lead[0]) if lead else [None]
        scale = (lead[0] / len(mats) if lead else 1.0) * MEASURED_ROW_STRIDE
        options = [(b, g) for b in BITS for g in GROUP_SIZES if w.shape[-1] % g == 0]
        out = dict.fromkeys(options, 0.0)
        for e in mats:
            we = (w[e] if e is not None else w).astype(mx.float32)
            we = we.reshape(-1, w.shape[-1])[::MEASURED_ROW_STRIDE]
            imp, weight = self._importance(path, e, w, stats)
            if weight == 0:
                continue
            for b, g in options:
                q = mx.dequantize(*mx.quantize(we, group_size=g, bits=b, mode=MODE), group_size=g, bits=b, mode=MODE)
                d = q - we
                out[(b, g)] += weight * scale * float((imp * d * d).sum())
        return out

    def _importance(self, path: str, e, w: mx.array, stats) -> tuple[mx.array, float]:
        ones, tokens, weight = mx.ones((w.shape[-1],)), float(stats.tokens), 1.0
        if path.startswith("mtp."):
            weight = MTP_WEIGHT
            if path.startswith("mtp.block."):  # the MTP block reads hidden states like the last layer does
                path = f"model.layers.{self.last_layer}." + path[len("mtp.block."):]
            elif path == "mtp.shared_head.head":
                path = "lm_head"
        found = stats.importance(path, e or 0)
        if found is not None:
            return mx.array(found), weight * float(stats.modules[path].count[e or 0])
        if path.endswith("embed_tokens"):  # a token reads one row: expected error = mean row error
            return ones, tokens / w.shape[0]
        if path in stats.modules:  # a cold routed expert: no calibration token pays for it
            return ones, 0.0
        return ones, weight * tokens


def _hull(points: list[tuple[float, float, Option]]) -> list[tuple[float, float, Option]]:
    """The lower convex hull of (size, cost) points, by growing size: the options worth buying in order."""
    pts = sorted(points)
    hull = []
    for p in pts:
        if hull and p[1] >= hull[-1][1]:
            continue  # bigger and no better
        while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
                                  >= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
            hull.pop()
        hull.append(p)
    return hull


def allocate(sens: Sensitivity, *, target_bpw: float, total_params: int, fixed_bits: float,
             float_bits: int) -> dict:
    """Choose (bits, group size) per measured module so the model lands at or just under `target_bpw`.

    fixed_bits: bits of everything not allocated here (float tensors, imported FP4 experts).
    Sets sens.plan.params[path]; returns the allocation's reasoning for the report."""
    paths = sorted(sens.cost)
    size = lambda p, o: sens.params[p] * (o[0] + 2 * float_bits / o[1])
    hulls = {p: _hull([(size(p, o), c, o) for o, c in sens.cost[p].items()]) for p in paths}
    budget = target_bpw * total_params - fixed_bits
    lo = sum(h[0][0] for h in hulls.values())
    hi = sum(h[-1][0] for h in hulls.values())
    if lo > budget:
        raise ConversionError(f"--target-bpw {target_bpw}: below the smallest mix ({(lo + fixed_bits) / total_params:.3f} "
                              f"bits/weight); choose between that and {(hi + fixed_bits) / total_params:.3f}")
    at = dict.fromkeys(paths, 0)  # index into each hull
    used, last_ratio = lo, 0.0
    while True:  # greedy along the hulls: the best cost drop per added bit that still fits
        best = None
        for p in paths:
            h, i = hulls[p], at[p]
            if i + 1 < len(h) and used + h[i + 1][0] - h[i][0] <= budget:
                ratio = (h[i][1] - h[i + 1][1]) / (h[i + 1][0] - h[i][0])
                if best is None or ratio > best[0]:
                    best = (ratio, p)
        if best is None:
            break
        last_ratio, p = best
        used += hulls[p][at[p] + 1][0] - hulls[p][at[p]][0]
        at[p] += 1
    chosen = {p: hulls[p][at[p]] for p in paths}
    for p in paths:  # fill: any cheaper-in-cost option the leftover budget still pays for
        opts = [(c, s, o) for o, c in sens.cost[p].items() for s in [size(p, o)]
                if c < chosen[p][1] and used - chosen[p][0] + s <= budget]
        if opts:
            c, s, o = min(opts)
            used += s - chosen[p][0]
            chosen[p] = (s, c, o)
    for p in paths:
        b, g = chosen[p][2]
        sens.plan.params[p] = {**sens.plan.params[p], "bits": b, "group_size": g}
    mix: dict[str, int] = {}
    for p in paths:
        key = "{}-bit g{}".format(*chosen[p][2])
        mix[key] = mix.get(key, 0) + sens.params[p]
    return {"target_bpw": target_bpw, "bits_per_weight": round((used + fixed_bits) / total_params, 4),
            "parameters_per_option": dict(sorted(mix.items())),
            "rule": "start every module at its smallest option; repeatedly buy the (bits, group size) step with the "
                    "largest measured cost drop per added bit while it fits (cost = calibration tokens x "
                    "importance-weighted squared error, measured on sampled rows); then fill the remainder",
            "last_gain_per_bit": _g(last_ratio),
            "modules": {p: {"bits": chosen[p][2][0], "group_size": chosen[p][2][1], "parameters": sens.params[p],
                            "cost": _g(chosen[p][1]), "cost_smallest": _g(hulls[p][0][1]),
                            "cost_largest": _g(hulls[p][-1][1])} for p in paths}}


def _g(x: float) -> float:
    return float(f"{x:.4g}")
