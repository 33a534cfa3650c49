"""Batched decode throughput: mlxseek's BatchDecoder vs mlx-lm's BatchGenerator on the same weights.

    python benchmarks/batch_bench.py                       # the ~1 GB random V3 (written if missing)
    python benchmarks/batch_bench.py --model <converted dir> --batches 1 2 4 8 --gen-tokens 32

One JSON line per (engine, batch size), medians over interleaved rounds: aggregate decode tok/s (every row's decode tokens over the wall
clock from "every row has its first token" to the last token), per-row tok/s, peak memory; then one
line per engine with the peak memory each added row costs beside the latent-cache arithmetic
(layers x (kv_lora_rank + qk_rope_head_dim) values per token, float32, capacity in steps of 256).
mlx-lm runs float32-forced (its bf16 default runs ~1 tok/s on MLX's CPU backend), as mlxseek computes on
CPU; mlx-lm reads the folder as is (a random V3 has no MTP layer; for a real one use `convert --drop-mtp`).
Prompts are random token ids, different per row; greedy; EOS is not expected from random weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

import mlxseek
from mlxseek.cache.batch import STEP
from mlxseek.cache.mla import latent_values_per_token

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_v3 import BENCH_MODEL as DEFAULT_MODEL  # noqa: E402
from make_random_v3 import ensure_bench_model as ensure_model  # noqa: E402


def prompts_for(batch: int, n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(100, vocab, n).tolist() for _ in range(batch)]


def run_ours(model, tok, prompts, gen: int) -> dict:
    dec = mlxseek.BatchDecoder(model, tok)
    rids = [dec.add(p, mlxseek.RowParams(max_tokens=gen)) for p in prompts]
    t1, n, last = time.perf_counter(), 0, {}
    while dec.active or dec.pending:
        for rid, rec in dec.step():
            n += rec.generation_tokens > 1  # the first token of each row came from its prefill
            last[rid] = rec
    wall = time.perf_counter() - t1
    return {"decode_tokens": n, "wall_s": wall, "row_tps": [(last[r].generation_tokens - 1) / wall for r in rids]}


def run_mlx_lm(model, prompts, gen: int) -> dict:
    from mlx_lm.generate import BatchGenerator

    gen_ = BatchGenerator(model, stop_tokens=[[1]], max_tokens=gen)
    uids = gen_.insert(prompts, [gen] * len(prompts))
    seen, n, t1, t_first = {u: 0 for u in uids}, 0, None, {}
    while responses := gen_.next_generated():
        now = time.perf_counter()
        for r in responses:
            seen[r.uid] += 1
            t_first.setdefault(r.uid, now)
            if t1 is not None and seen[r.uid] > 1:
                n += 1
        if t1 is None and all(seen.values()):
            t1 = now
            n = sum(s - 1 for s in seen.values())
    wall = time.perf_counter() - t1
    gen_.close()
    return {"decode_tokens": n, "wall_s": wall, "row_tps": [(seen[u] - 1) / max(wall, 1e-9) for u in uids]}


def load(engine: str, folder: Path):
    if engine == "mlxseek":
        return mlxseek.load(folder)
    from mlx_lm.utils import load_model

    model = load_model(folder)[0]
    model.set_dtype(mx.float32)  # float32 activations, as mlxseek's on the CPU backend
    mx.eval(model.parameters())
    return model, None


def measure_one(engine: str, model, tok, vocab: int, b: int, prompt_tokens: int, gen: int) -> dict:
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    ps = prompts_for(b, prompt_tokens, vocab, seed=b)
    r = run_ours(model, tok, ps, gen) if engine == "mlxseek" else run_mlx_lm(model, ps, gen)
    return {"engine": engine, "batch": b, "aggregate_decode_tps": r["decode_tokens"] / r["wall_s"],
            "per_row_decode_tps": float(np.mean(r["row_tps"])), "decode_tokens": r["decode_tokens"],
            "wall_s": r["wall_s"], "peak_memory_gb": mx.get_peak_memory() / 1e9}


def summarize(runs: list[dict], prompt_tokens: int, gen: int) -> dict:
    """Median over the interleaved repeats of one (engine, batch)."""
    med = lambda k: float(np.median([r[k] for r in runs]))  # noqa: E731
    return {"engine": runs[0]["engine"], "batch": runs[0]["batch"], "prompt_tokens": prompt_tokens,
            "gen_tokens": gen, "repeats": len(runs), "aggregate_decode_tps": med("aggregate_decode_tps"),
            "aggregate_decode_tps_all": [round(r["aggregate_decode_tps"], 3) for r in runs],
            "per_row_decode_tps": med("per_row_decode_tps"), "peak_memory_gb": med("peak_memory_gb")}


def memory_line(engine: str, rows: list[dict], cfg, ctx: int) -> dict:
    by_b = {r["batch"]: r["peak_memory_gb"] for r in rows}
    lo, hi = min(by_b), max(by_b)
    per_token = cfg.num_hidden_layers * latent_values_per_token(cfg) * 4
    return {"engine": engine, "memory_per_added_row_mb": (by_b[hi] - by_b[lo]) * 1e3 / max(hi - lo, 1),
            "latent_cache_per_row_mb": per_token * ctx / 1e6,
            "latent_cache_allocated_per_row_mb": per_token * (-(-ctx // STEP) * STEP) / 1e6,
            "logits_per_row_mb": cfg.vocab_size * 4 / 1e6, "context_tokens": ctx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--vs", nargs="*", default=["mlx-lm"], choices=["mlx-lm"])
    args = ap.parse_args()
    folder = ensure_model(args.model)
    cfg = mlxseek.ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    engines = {e: load(e, folder) for e in ["mlxseek", *args.vs]}
    for e, (model, tok) in engines.items():  # warm-up: first-call allocations and compiles
        warm = prompts_for(1, 8, cfg.vocab_size, seed=99)
        run_ours(model, tok, warm, 4) if e == "mlxseek" else run_mlx_lm(model, warm, 4)
    # Interleaved (round, batch, engine) so that load from other processes hits every cell alike.
    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.repeats):
        for b in args.batches:
            for e, (model, tok) in engines.items():
                r = measure_one(e, model, tok, cfg.vocab_size, b, args.prompt_tokens, args.gen_tokens)
                print(json.dumps({"round": rnd, **r}), file=sys.stderr, flush=True)
                runs.setdefault((e, b), []).append(r)
    for e in engines:
        rows = [summarize(runs[(e, b)], args.prompt_tokens, args.gen_tokens) for b in args.batches]
        for row in rows:
            print(json.dumps(row), flush=True)
        print(json.dumps(memory_line(e, rows, cfg, args.prompt_tokens + args.gen_tokens)), flush=True)


if __name__ == "__main__":
    main()
