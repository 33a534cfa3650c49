"""Quantization error per tensor, measured while converting, summarised and written as JSON.

For each quantized weight W (a stack: over all experts) with dequantized Q = dequant(quant(W)):
  max_abs_err   max |Q - W|
  mean_abs_err  mean |Q - W|
  rel_rms_err   ||Q - W|| / ||W||  (Frobenius; comparable across tensors, used to rank the worst)
W is the float weight that was quantized (already cast to the output dtype). A stack of more than
16 experts is measured on 16 evenly spaced experts ("measured_experts"), and every matrix on every 8th
row ("measured_rows": "1/8"; mlxseek.convert.stream.MEASURED_ROW_STRIDE): the statistics are estimates
from a fixed sample, which keeps measuring cheaper than quantizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import ConversionError

REPORT_NAME = "convert_report.json"


def error_terms(w: mx.array, packed: tuple, params: dict, row_stride: int = 8,
                imp: mx.array | None = None) -> tuple[mx.array, int]:
    """Lazy (4, rows) float32 per sampled row of `w` (every `row_stride`-th along axis -2): max |err|,
    sum |err|, sum err^2, sum w^2; and how many elements they cover. With column importances `imp` (I,),
    (6, rows): also sum imp * err^2 and sum imp * w^2 (the calibrated error, weighted by mean input^2).

    Rows are summed in float64 by TensorError, so the totals do not depend on how a tensor was
    split into pieces."""
    from .quantize import KMAJOR, dequantize

    if w.ndim >= 2 and row_stride > 1:
        if params.get("layout") == KMAJOR:  # rows of W are columns of the stored transpose
            q = dequantize(packed, params)[..., ::row_stride, :]
        else:  # groups run along rows: slicing the packed rows dequantizes only the sampled ones
            q = dequantize(tuple(p[..., ::row_stride, :] for p in packed), params)
        w = w[..., ::row_stride, :]
    else:
        q = dequantize(packed, params)
    w32 = w.astype(mx.float32)
    d = q.astype(mx.float32) - w32
    ad = mx.abs(d)
    rows = [ad.max(axis=-1), ad.sum(axis=-1), (d * d).sum(axis=-1), (w32 * w32).sum(axis=-1)]
    if imp is not None:
        rows += [(imp * d * d).sum(axis=-1), (imp * w32 * w32).sum(axis=-1)]
    return mx.stack(rows).reshape(len(rows), -1), w.size


@dataclass
class TensorError:
    shape: tuple
    bits: int
    group_size: int
    sampled_experts: int | None = None  # a stack measured on this many of its experts
    row_stride: int = 1  # measured on every row_stride-th row
    max_abs: float = 0.0
    sum_abs: float = 0.0
    sum_sq_err: float = 0.0
    sum_sq_w: float = 0.0
    count: int = 0
    weighted_sq_err: float = 0.0  # sum imp * err^2 (calibrated conversions only)
    weighted_sq_w: float = 0.0

    def add(self, terms: np.ndarray, count: int) -> None:
        self.max_abs = max(self.max_abs, float(terms[0].max()))
        sums = terms[1:].astype(np.float64).sum(axis=1)
        self.sum_abs += float(sums[0])
        self.sum_sq_err += float(sums[1])
        self.sum_sq_w += float(sums[2])
        if len(sums) == 5:
            self.weighted_sq_err += float(sums[3])
            self.weighted_sq_w += float(sums[4])
        self.count += count

    def to_dict(self) -> dict:
        r = lambda x: float(f"{x:.6g}")
        rel = math.sqrt(self.sum_sq_err / self.sum_sq_w) if self.sum_sq_w else 0.0
        out = {"shape": list(self.shape), "bits": self.bits, "group_size": self.group_size,
               "max_abs_err": r(self.max_abs), "mean_abs_err": r(self.sum_abs / max(1, self.count)),
               "rel_rms_err": r(rel)}
        if self.weighted_sq_w:
            out["weighted_rel_rms_err"] = r(math.sqrt(self.weighted_sq_err / self.weighted_sq_w))
        if self.sampled_experts is not None and self.sampled_experts < self.shape[0]:
            out["measured_experts"] = self.sampled_experts
        if self.row_stride > 1 and len(self.shape) >= 2 and self.shape[-2] > 1:
            out["measured_rows"] = f"1/{self.row_stride}"
        return out


def build_report(*, options: dict, size: dict, skipped: dict, tensors: dict[str, dict], output_bytes: int) -> dict:
    worst = sorted(tensors, key=lambda k: -tensors[k]["rel_rms_err"])
    return {
        **options,
        "parameters": size["parameters"],
        "bits_per_weight": float(f"{size['bits_per_weight']:.4f}"),
        "output_bytes": output_bytes,
        "unquantized_modules": skipped,
        "worst_tensors": worst[:20],
        "tensors": tensors,
    }


def summary_lines(report: dict, top: int = 10) -> list[str]:
    head = (f"{report['parameters'] / 1e9:.3f}B parameters, {report['bits_per_weight']:.3f} bits/weight, "
            f"{report['output_bytes'] / 2**30:.2f} GiB")
    lines = [head]
    cal, alloc = report.get("calibration"), report.get("allocation")
    if cal:
        lines.append(f"calibrated on {cal['tokens']} tokens ({cal['chunks']} x {cal['ctx']}) in {cal['seconds']:.1f}s; "
                     f"{cal['cold_experts']} expert(s) never routed and {len(cal['weight_only_modules'])} module(s) "
                     "with no recorded input use weight-only statistics")
    if alloc:
        mix = ", ".join(f"{k}: {v / report['parameters']:.1%}" for k, v in alloc["parameters_per_option"].items())
        lines.append(f"--target-bpw {alloc['target_bpw']:g}: {alloc['bits_per_weight']:.3f} bits/weight ({mix})")
    if report["unquantized_modules"]:
        lines.append(f"{len(report['unquantized_modules'])} quantizable module(s) left in float:")
        lines += [f"  {p}: {why}" for p, why in list(report["unquantized_modules"].items())[:top]]
    tensors = report["tensors"]
    if tensors:
        lines.append(f"worst {min(top, len(tensors))} of {len(tensors)} quantized tensors (relative RMS error):")
        for name in report["worst_tensors"][:top]:
            t = tensors[name]
            weighted = f", weighted {t['weighted_rel_rms_err']:.4f}" if "weighted_rel_rms_err" in t else ""
            lines.append(f"  {name} [{t['bits']}b g{t['group_size']}]: rel_rms {t['rel_rms_err']:.4f}{weighted}, "
                         f"max {t['max_abs_err']:.3g}, mean {t['mean_abs_err']:.3g}")
    return lines


def merge(entries: list[dict]) -> dict[str, dict]:
    """Per-shard report entries -> one {tensor: stats} dict; a tensor appears in exactly one shard."""
    out: dict[str, dict] = {}
    for e in entries:
        for k, v in e.items():
            if k in out:
                raise ConversionError(f"conversion report: tensor {k} reported by two shards")
            out[k] = v
    return out
