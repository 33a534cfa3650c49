#!/usr/bin/env python
"""mlx-lm's GPTQ on the trained tiny DeepSeek-V3, fed the same calibration text as `mlxseek convert
--calibration` (benchmarks/quant_quality.py), scored by the same `mlxseek eval` against bf16.

    python benchmarks/mlx_lm_gptq_compare.py --bits 3 >> benchmarks/results/issue25_quant_quality.jsonl

mlx-lm's own `python -m mlx_lm.gptq` downloads its calibration text from the network, so this calls its
`gptq_quantize` directly. GPTQ handles Linear and SwitchLinear (one Hessian per stacked switch layer,
shared by its experts); `--fallback-bits` (default: the same bits) quantizes the rest. It accepts 2, 4
and 8 bits only ("AssertionError: Unsupported bits 3"), and at group 64 its fallback fails on MLA's
embed_q (input dim 32: "[quantize] The last dimension of the matrix needs to be divisible by the
quantization group size 64"), so compare at group 32. MTP is dropped
(mlx-lm's DeepSeek-V3 model has no MTP), so its bits/weight are not comparable to rows that keep MTP;
the KL is. mlx-lm's AWQ refuses the model: "AWQ support for deepseek_v3 models NYI."
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
FIX = ROOT / "tests" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--fallback-bits", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-gptq"))
    args = ap.parse_args()
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.quant.gptq import gptq_quantize
    from mlx_lm.utils import compute_bits_per_weight, save

    import mlxseek
    from mlxseek.convert.calibrate import make_batches
    from mlxseek.tools.evaluate import evaluate
    from quant_quality import CALIBRATION_TOKENS, calibration_text

    shutil.rmtree(args.work, ignore_errors=True)
    bf16 = args.work / "fp32-no-mtp"  # MLX's CPU gather_mm takes float32 only
    mlxseek.convert(hf_path=FIX / "trained_v3", mlx_path=bf16, drop_mtp=True, quiet=True, dtype="float32")
    model, tok, config = load(str(bf16), return_config=True)
    text = calibration_text(args.work, FIX / "trained_v3").read_text()
    ids = tok.encode(text, add_special_tokens=False)
    data = mx.concatenate([mx.array(b) for b in make_batches(ids, bos=tok.bos_token_id, ctx=512,
                                                             limit=CALIBRATION_TOKENS)])
    fb = args.fallback_bits or args.bits
    model, config["quantization"] = gptq_quantize(model, data, args.bits, args.group_size, fb, args.group_size)
    # The other rows store scales, biases and float weights in bf16 (the checkpoint's dtype); GPTQ ran in
    # float32 (MLX's CPU gather_mm), so store its result as they are stored.
    from mlx.utils import tree_map

    model.update(tree_map(lambda p: p.astype(mx.bfloat16) if p.dtype == mx.float32 else p, model.parameters()))
    bpw = compute_bits_per_weight(model)
    out = args.work / f"gptq-{args.bits}bit"
    save(str(out), str(bf16), model, tok, config)
    r = evaluate(model=out, data=FIX / "trained_v3_heldout.txt", kl_vs=FIX / "trained_v3", ctx=256)
    print(json.dumps({"variant": f"mlx-lm gptq {args.bits}-bit g{args.group_size} (fallback {fb}-bit, no MTP)",
                      "source": "bf16", "bits_per_weight_mlx_lm": round(float(bpw), 3), "ppl": round(r.ppl, 4),
                      "kl_mean": round(r.kl_mean, 6), "kl_p99": round(r.kl_p99, 6),
                      "top1_agreement": round(r.top1_agreement, 4), "tokens": r.tokens, "ctx": r.ctx,
                      "calibration_tokens": int(data.size)}), flush=True)


if __name__ == "__main__":
    main()
