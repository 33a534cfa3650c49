#!/usr/bin/env python
"""mlx-lm's DWQ and dynamic_quant on the trained tiny DeepSeek-V3, fed local calibration text (the same text as
`mlxseek convert --calibration` in benchmarks/quant_quality.py), scored by the same `mlxseek eval` against bf16.

    python benchmarks/mlx_lm_dwq_dynamic_compare.py --method dwq >> benchmarks/results/issue25_quant_quality.jsonl
    python benchmarks/mlx_lm_dwq_dynamic_compare.py --method dynamic_quant --target-bpw 3.5

Offline: neither command line takes a local text file. `mlx_lm.dwq --data-path` is handed to Hugging Face
`datasets.load_dataset(path, split="train")` (which this venv does not install: "No module named 'datasets'";
with it, a local folder of JSON lines would do); `mlx_lm.dynamic_quant` always reads
~/.cache/mlx-lm/calibration_v5.txt, downloading it from a gist when missing (no option names another file).
Their Python functions take token arrays, so this calls them directly: `dwq_quantize` (KL distillation of
the scales and biases of an mlx-lm RTN student from the float teacher) and `estimate_sensitivities` /
`estimate_threshold` (per-module gradient sensitivity, then low/high bits to a target). As for GPTQ
(mlx_lm_gptq_compare.py): float32 (MLX's CPU gather_mm), group 32 (MLA's 32-wide embed_q), MTP dropped
(so bits/weight are mlx-lm's count without MTP; the KL is comparable).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
FIX = ROOT / "tests" / "fixtures"


def _dwq(model, config, data, args):
    import mlx.core as mx
    import mlx.optimizers as optimizers
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import quantize_model

    q_model = copy.deepcopy(model)
    _, config = quantize_model(q_model, config, group_size=args.group_size, bits=args.bits)
    chunks = [(row.tolist(), 0) for row in data]
    valid, train = chunks[: args.valid_chunks], chunks[args.valid_chunks:] * args.epochs
    opt = optimizers.Adam(learning_rate=args.learning_rate, bias_correction=True)
    dwq_quantize(q_model, lambda batch, idx, split: model(batch), opt, train, valid, batch_size=4,
                 max_seq_length=data.shape[1], seed=123, dtype=mx.float32)
    return q_model, config, {"learning_rate": args.learning_rate, "train_steps": len(train) // 4,
                             "valid_chunks": len(valid)}


def _dynamic(model, config, data, args):
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold
    from mlx_lm.utils import quantize_model

    low, high, g = args.bits, args.high_bits, args.group_size
    sens = dict(estimate_sensitivities(model, mx.array(data), low, g, high, g))
    # Sensitivities need float32 gradients on the CPU; the bits/weight the threshold aims at count bf16 scales
    # and float weights, as the other rows store them (a float32 model would count 32-bit scales).
    model.update(tree_map(lambda p: p.astype(mx.bfloat16) if p.dtype == mx.float32 else p, model.parameters()))
    threshold = estimate_threshold(model, sens, target_bpw=args.target_bpw, low_bits=low, low_group_size=g,
                                   high_bits=high, high_group_size=g)

    def predicate(p, m):
        if not hasattr(m, "to_quantized"):
            return False
        return {"bits": high, "group_size": g} if sens[p] > threshold else True

    model, config = quantize_model(model, config, group_size=g, bits=low, quant_predicate=predicate)
    return model, config, {"target_bpw": args.target_bpw, "high_bits": high}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("dwq", "dynamic_quant"), required=True)
    ap.add_argument("--bits", type=int, default=3, help="dwq: the student's bits; dynamic_quant: the low bits")
    ap.add_argument("--high-bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--target-bpw", type=float, default=3.5)
    ap.add_argument("--learning-rate", type=float, default=1e-6, help="mlx_lm.dwq's default")
    ap.add_argument("--epochs", type=int, default=4, help="dwq: passes over the calibration chunks")
    ap.add_argument("--valid-chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-dwq"))
    args = ap.parse_args()
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_map
    from mlx_lm import load
    from mlx_lm.utils import compute_bits_per_weight, save

    import mlxseek
    from mlxseek.convert.calibrate import make_batches
    from mlxseek.tools.evaluate import evaluate
    from quant_quality import CALIBRATION_TOKENS, calibration_text

    shutil.rmtree(args.work, ignore_errors=True)
    fp32 = args.work / "fp32-no-mtp"  # MLX's CPU gather_mm takes float32 only
    mlxseek.convert(hf_path=FIX / "trained_v3", mlx_path=fp32, drop_mtp=True, quiet=True, dtype="float32")
    model, tok, config = load(str(fp32), return_config=True)
    ids = tok.encode(calibration_text(args.work, FIX / "trained_v3").read_text(), add_special_tokens=False)
    data = np.concatenate(make_batches(ids, bos=tok.bos_token_id, ctx=args.ctx, limit=CALIBRATION_TOKENS))
    t0 = time.perf_counter()
    run = _dwq if args.method == "dwq" else _dynamic
    model, config, extra = run(model, config, data, args)
    seconds = time.perf_counter() - t0
    # The other rows store scales, biases and float weights in bf16 (the checkpoint's dtype).
    model.update(tree_map(lambda p: p.astype(mx.bfloat16) if p.dtype == mx.float32 else p, model.parameters()))
    bpw = compute_bits_per_weight(model)
    out = args.work / args.method
    save(str(out), str(fp32), model, tok, config)
    r = evaluate(model=out, data=FIX / "trained_v3_heldout.txt", kl_vs=FIX / "trained_v3", ctx=256)
    name = (f"mlx-lm dwq {args.bits}-bit g{args.group_size} (lr {args.learning_rate:g}, no MTP)"
            if args.method == "dwq" else
            f"mlx-lm dynamic_quant {args.bits}/{args.high_bits}-bit g{args.group_size} to {args.target_bpw} (no MTP)")
    print(json.dumps({"variant": name, "source": "bf16", "bits_per_weight_mlx_lm": round(float(bpw), 3),
                      "ppl": round(r.ppl, 4), "kl_mean": round(r.kl_mean, 6), "kl_p99": round(r.kl_p99, 6),
                      "top1_agreement": round(r.top1_agreement, 4), "tokens": r.tokens, "ctx": r.ctx,
                      "calibration_tokens": int(data.size), "seconds": round(seconds, 1), **extra}), flush=True)


if __name__ == "__main__":
    main()
