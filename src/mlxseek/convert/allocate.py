"""Bits per module to hit a size target (`--target-bpw`), chosen by measured sensitivity x importance.

While calibration holds a layer resident, every quantizable module of it is quantized at each width
in BITS (every MEASURED_ROW_STRIDE-th row, up to MEASURED_EXPERTS experts of a stack) and its cost
measured as the calibration's expected output error:
  cost(b) = sum over experts e of  count_e * sum_rows sum_j imp_ej (Q_b(W) - W)_rj^2
(count_e the tokens routed to expert e, imp_ej their mean squared input of column j; a plain Linear is
one "expert" seen by every token). A module with no recorded input (MultiLinear kv_b halves, the
embedding, the MTP block) counts every token with imp = 1, the embedding per row it returns.
Allocation starts every module at the lowest width and buys, one step at a time, the upgrade with the
largest cost reduction per added bit while it fits the budget (a convex-hull greedy: the classic
answer to a separable knapsack with diminishing returns), then fills what is left with any upgrade
that still fits, so the result lands just under the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
from mlx import nn

from ..errors import ConversionError
from .quantize import BITS, MODE, QuantPlan
from .stream import MEASURED_ROW_STRIDE, measured_experts


@dataclass
class Sensitivity:
    """cost[path][bits] and params[path] for the modules of `plan` measured so far."""

    plan: QuantPlan
    cost: dict[str, dict[int, float]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def measure(self, prefix: str, root: nn.Module, stats) -> None:
        """on_layer hook of calibrate.collect: `root` resident, its recorders (if any) wrapping modules."""
        for rel, m in root.named_modules():
            path = prefix + rel.replace(".inner", "")
            p = self.plan.params.get(path)
            if p is None or "weight" not in m or path in self.cost or path in self.plan.imported:
                continue
            self.params[path] = math.prod(m.weight.shape)
            self.cost[path] = self._module_cost(path, m.weight, p["group_size"], stats)

    def _module_cost(self, path: str, w: mx.array, group_size: int, stats) -> dict[int, float]:
        lead = w.shape[:-2] if w.ndim == 3 else ()
        mats = measured_experts(lead[0]) if lead else [None]
        scale = (lead[0] / len(mats) if lead else 1.0) * MEASURED_ROW_STRIDE
        out = dict.fromkeys(BITS, 0.0)
        for e in mats:
            we = (w[e] if e is not None else w).astype(mx.float32)
            we = we.reshape(-1, w.shape[-1])[::MEASURED_ROW_STRIDE]
            imp, weight = self._importance(path, e, w, stats)
            if weight == 0:
                continue
            for b in BITS:
                q = mx.dequantize(*mx.quantize(we, group_size=group_size, bits=b, mode=MODE),
                                  group_size=group_size, bits=b, mode=MODE)
                d = q - we
                out[b] += weight * scale * float((imp * d * d).sum())
        return out

    @staticmethod
    def _importance(path: str, e, w: mx.array, stats) -> tuple[mx.array, float]:
        found = stats.importance(path, e or 0) if stats is not None else None
        if found is not None:
            return mx.array(found), float(stats.modules[path].count[e or 0])
        tokens = float(stats.tokens) if stats is not None else 1.0
        if path.endswith("embed_tokens"):  # a token reads one row: expected error = mean row error
            return mx.ones((w.shape[-1],)), tokens / w.shape[0]
        if stats is not None and path in stats.modules:  # a cold routed expert: no calibration token pays for it
            return mx.ones((w.shape[-1],)), 0.0
        return mx.ones((w.shape[-1],)), tokens


def allocate(sens: Sensitivity, *, target_bpw: float, total_params: int, fixed_bits: float,
             float_bits: int) -> dict:
    """Choose bits per measured module so the whole model lands at or just under `target_bpw`.

    fixed_bits: bits of everything not allocated here (float tensors, imported FP4 experts).
    Sets sens.plan.params[path]["bits"]; returns the allocation's reasoning for the report."""
    paths = sorted(sens.cost)
    over = {p: 2 * float_bits / sens.plan.params[p]["group_size"] for p in paths}
    size = lambda p, b: sens.params[p] * (b + over[p])
    budget = target_bpw * total_params - fixed_bits
    lo = sum(size(p, BITS[0]) for p in paths)
    hi = sum(size(p, BITS[-1]) for p in paths)
    if not lo <= budget:
        raise ConversionError(f"--target-bpw {target_bpw}: below the smallest mix ({(lo + fixed_bits) / total_params:.3f} "
                              f"bits/weight, everything at {BITS[0]} bits); choose between that and "
                              f"{(hi + fixed_bits) / total_params:.3f}")
    bits = dict.fromkeys(paths, BITS[0])
    used = lo
    last_ratio = None
    for greedy in (True, False):
        while True:
            best = None
            for p in paths:
                i = BITS.index(bits[p])
                if i + 1 == len(BITS):
                    continue
                nb = BITS[i + 1]
                extra = size(p, nb) - size(p, bits[p])
                if used + extra > budget:
                    continue
                gain = max(sens.cost[p][bits[p]] - sens.cost[p][nb], 0.0)
                ratio = gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, p, nb, extra)
            if best is None:
                break
            ratio, p, nb, extra = best
            bits[p], used = nb, used + extra
            if greedy:
                last_ratio = ratio
        # the greedy pass stops at the first upgrade that does not fit; the fill pass is the same loop
    for p in paths:
        sens.plan.params[p] = {**sens.plan.params[p], "bits": bits[p]}
    achieved = (used + fixed_bits) / total_params
    counts = {str(b): sum(1 for p in paths if bits[p] == b) for b in BITS}
    reasons = {p: {"bits": bits[p], "parameters": sens.params[p],
                   "cost": _g(sens.cost[p][bits[p]]), "cost_at_2": _g(sens.cost[p][BITS[0]]),
                   "cost_at_8": _g(sens.cost[p][BITS[-1]])} for p in paths}
    return {"target_bpw": target_bpw, "bits_per_weight": round(achieved, 4), "modules_per_bits": counts,
            "rule": "start at 2 bits; repeatedly upgrade the module with the largest measured cost drop per "
                    "added bit (cost = calibration tokens x importance-weighted squared error) while it fits",
            "last_gain_per_bit": _g(last_ratio or 0.0), "modules": reasons}


def _g(x: float) -> float:
    return float(f"{x:.4g}")

