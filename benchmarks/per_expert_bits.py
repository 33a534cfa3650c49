#!/usr/bin/env python
"""Would per-expert bits pay? The `--target-bpw` allocation (mlxseek.convert.allocate) chooses (bits, group size)
per module; a routed-expert stack (`switch_mlp.*`, E experts in one tensor) gets one choice for all its experts.
This measures what letting each expert choose would gain, from the statistics a calibrated run already has:

  1. calibrate as `mlxseek convert --calibration` does (same text as benchmarks/quant_quality.py);
  2. measure every module's cost at every option (allocate.Sensitivity), and, for expert stacks, every expert's
     own cost (count_e x importance-weighted squared error of expert e alone; the module's cost is their sum);
  3. run the same greedy allocation twice at the same budget: per module, and with each expert a module of its
     own; report both total costs (the allocation's objective: expected squared output error over the
     calibration tokens) and the gain.

    python benchmarks/per_expert_bits.py >> benchmarks/results/issue25_per_expert_bits.jsonl

The gain is the allocation's own predicted objective, not a measured KL: realizing per-expert bits would
need a layout neither mlxseek nor mlx-lm reads today (one bits value per stacked tensor).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
FIX = ROOT / "tests" / "fixtures"


def per_expert_sensitivity(base):
    """An allocate.Sensitivity that also records, for each expert e of a stack, cost["path#e"]."""
    import mlx.core as mx

    from mlxseek.convert.allocate import MODE, Sensitivity
    from mlxseek.convert.quantize import BITS, GROUP_SIZES
    from mlxseek.convert.stream import MEASURED_ROW_STRIDE

    class PerExpert(Sensitivity):
        def __init__(self, plan, last_layer):
            super().__init__(plan, last_layer)
            self.expert_cost, self.expert_params = {}, {}

        def _module_cost(self, path, w, stats):
            out = super()._module_cost(path, w, stats)
            if ".switch_mlp." in path:  # a routed-expert stack (E, out, in); MultiLinear stays one module
                options = [(b, g) for b in BITS for g in GROUP_SIZES if w.shape[-1] % g == 0]
                for e in range(w.shape[0]):  # every expert (the fixture's 8), each on the sampled rows
                    we = w[e].astype(mx.float32)[::MEASURED_ROW_STRIDE]
                    imp, weight = self._importance(path, e, w, stats)
                    cost = {}
                    for b, g in options:
                        q = mx.dequantize(*mx.quantize(we, group_size=g, bits=b, mode=MODE), group_size=g, bits=b,
                                          mode=MODE)
                        cost[(b, g)] = weight * MEASURED_ROW_STRIDE * float((imp * (q - we) ** 2).sum())
                    self.expert_cost[f"{path}#{e}"] = cost
                    self.expert_params[f"{path}#{e}"] = math.prod(w.shape[1:])
            return out

    return PerExpert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=FIX / "trained_v3")
    ap.add_argument("--targets", default="2.5,3.0,3.5")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-per-expert"))
    args = ap.parse_args()
    from mlxseek.checkpoint.keymap import build_plan
    from mlxseek.convert.allocate import Sensitivity, allocate
    from mlxseek.convert.calibrate import CALIBRATION_CTX, collect, read_calibration
    from mlxseek.convert.inputs import read_config, resolve_dtype
    from mlxseek.convert.quantize import plan_quantization, size_summary
    from mlxseek.convert.reader import SourceReader
    from mlxseek.convert.stream import Source
    from mlxseek.models import build_model
    from quant_quality import CALIBRATION_TOKENS, calibration_text

    raw, cfg = read_config(args.model)
    dtype = resolve_dtype(None, raw)
    reader = SourceReader(args.model)
    plan = build_plan(reader.keys(), cfg)
    skeleton = build_model(cfg, with_mtp=plan.has_mtp)
    qplan = plan_quantization(skeleton, cfg, recipe="uniform", bits=4, group_size=args.group_size)
    text = calibration_text(args.work, args.model)
    batches = read_calibration(text, args.model, ctx=CALIBRATION_CTX, limit=CALIBRATION_TOKENS,
                               vocab_size=cfg.vocab_size)
    sens = per_expert_sensitivity(Sensitivity)(qplan, cfg.num_hidden_layers - 1)
    t0 = time.perf_counter()
    stats = collect(Source(reader, cfg, plan, dtype), batches, on_layer=sens.measure)
    seconds = time.perf_counter() - t0
    size = size_summary(skeleton, qplan, dtype)
    fb = 8 * dtype.size
    fixed = size["bits"] - sum(sens.params[p] * (qplan.params[p]["bits"] + 2 * fb / qplan.params[p]["group_size"])
                               for p in sens.cost)
    # Per expert: each stack replaced by its experts, everything else as it is.
    split = SimpleNamespace(cost={p: c for p, c in sens.cost.items() if "switch_mlp" not in p},
                            params={p: n for p, n in sens.params.items() if "switch_mlp" not in p})
    split.cost.update(sens.expert_cost)
    split.params.update(sens.expert_params)
    counts = {p: s.count.tolist() for p, s in stats.modules.items() if p.endswith("switch_mlp.gate_proj")}
    for target in (float(t) for t in args.targets.split(",")):
        rows = {}
        for name, s in (("per_module", sens), ("per_expert", split)):
            s.plan = SimpleNamespace(params={p: {"bits": 4, "group_size": args.group_size} for p in s.cost})
            a = allocate(s, target_bpw=target, total_params=size["parameters"], fixed_bits=fixed, float_bits=fb)
            rows[name] = (sum(m["cost"] for m in a["modules"].values()), a["bits_per_weight"],
                          sorted({(m["bits"], m["group_size"]) for p, m in a["modules"].items() if "#" in p}))
        gain = 1 - rows["per_expert"][0] / rows["per_module"][0]
        print(json.dumps({"benchmark": "per_expert_bits", "model": args.model.name, "target_bpw": target,
                          "calibration_tokens": stats.tokens, "cost_per_module": round(rows["per_module"][0], 6),
                          "cost_per_expert": round(rows["per_expert"][0], 6), "predicted_cost_gain": round(gain, 4),
                          "bpw_per_module": rows["per_module"][1], "bpw_per_expert": rows["per_expert"][1],
                          "expert_options_used": [f"{b}-bit g{g}" for b, g in rows["per_expert"][2]],
                          "tokens_per_expert": counts, "calibration_seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
