"""1 rank vs 2 ranks (pipeline and expert parallel) on this machine: greedy tokens, weights per rank, tok/s.

    python benchmarks/distributed.py --model DIR [--ranks 2] [--prompt-tokens 32] [--gen-tokens 16]
    python benchmarks/distributed.py --make-model /tmp/ds-v3-300mb     # write the ~300 MB bench model

Prints JSON lines: one per (mode, rank), then a summary per mode (tokens equal to 1 rank, max weights
per rank, tok/s). The ranks run over MLX's ring backend on 127.0.0.1 under `mlxseek.parallel.launcher`.
Also the rank worker of tests/test_distributed.py (`--worker`; `--die-rank R --die-after N` makes rank R
kill itself with SIGKILL after N tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ~300 MB at 4-bit: V3's shape scaled down (8 layers, 64 experts top-6), small vocabulary (no tokenizer).
BENCH_CONFIG = dict(hidden_size=768, num_hidden_layers=8, intermediate_size=2048, moe_intermediate_size=512,
                    n_routed_experts=64, num_experts_per_tok=6, n_group=8, topk_group=4, num_attention_heads=16,
                    num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64,
                    qk_rope_head_dim=32, v_head_dim=64, vocab_size=32000, max_position_embeddings=4096)


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KB on Linux


def run_one(model_dir: str, parallel: str, group, prompt_tokens: int, gen_tokens: int, die_after: int,
            prefill_step: int = 512) -> dict:
    """Load (this rank's share of) the model, decode greedily, report tokens, memory and speed."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    from mlxseek.generation.steps import generate_step
    from mlxseek.loading.loader import load_model

    mx.reset_peak_memory()
    t0 = time.perf_counter()
    kw = {"group": group, "parallel": parallel} if parallel != "single" else {}
    model = load_model(model_dir, with_mtp=False, **kw)
    load_s = time.perf_counter() - t0
    param_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    load_peak = mx.get_peak_memory()
    vocab = model.config.vocab_size
    prompt = mx.array(np.random.default_rng(0).integers(3, vocab, prompt_tokens), dtype=mx.uint32)
    tokens, t1 = [], None
    t0 = time.perf_counter()
    for n, (tok, _) in enumerate(generate_step(prompt, model, max_tokens=gen_tokens, prefill_step_size=prefill_step)):
        if n == 0:
            t1 = time.perf_counter()
        tokens.append(tok)
        if die_after and n + 1 == die_after:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, mid-run, with no goodbye to the peers
    t2 = time.perf_counter()
    return {"mode": parallel, "rank": group.rank() if group else 0, "size": group.size() if group else 1,
            "tokens": tokens, "param_bytes": param_bytes, "load_peak_bytes": load_peak,
            "peak_rss_bytes": _peak_rss_bytes(), "load_s": load_s,
            "prefill_tps": prompt_tokens / (t1 - t0), "decode_tps": (gen_tokens - 1) / max(t2 - t1, 1e-9)}


def worker(args) -> None:
    from mlxseek.parallel.rank import join

    rank = join(connect_timeout=args.connect_timeout)
    die = args.die_after if rank.rank == args.die_rank else 0
    with rank.lost_peer_is_fatal():
        for mode in args.modes:
            row = run_one(args.model, mode, rank.group, args.prompt_tokens, args.gen_tokens, die, args.prefill_step)
            print(json.dumps(row), flush=True)


def driver(args) -> None:
    from mlxseek.parallel.launcher import launch

    single = run_single(args)
    print(json.dumps(single), flush=True)
    for mode in ("pipeline", "expert"):
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--modes", mode,
               "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
        res = launch(cmd, args.ranks, deadline=args.deadline)
        rows = [json.loads(line) for r in res.ranks for line in r.stdout.splitlines() if line.startswith("{")]
        for row in rows:
            print(json.dumps(row), flush=True)
        if res.returncode != 0 or len(rows) != args.ranks:
            print(json.dumps({"mode": mode, "error": res.summary(), "stderr": [r.stderr[-2000:] for r in res.ranks]}))
            continue
        summary = {"summary": mode, "ranks": args.ranks,
                   "tokens_equal_single": all(r["tokens"] == single["tokens"] for r in rows)}
        for k, pick in (("param_bytes", max), ("load_peak_bytes", max), ("decode_tps", min), ("prefill_tps", min)):
            summary[f"{k}_per_rank"], summary[f"single_{k}"] = pick(r[k] for r in rows), single[k]
        print(json.dumps(summary), flush=True)


def run_single(args) -> dict:
    """The 1-rank baseline, in its own process so its peak memory is its own."""
    import subprocess

    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--modes", "single",
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.deadline, check=True).stdout
    return json.loads(out.splitlines()[-1])


def make_model(out: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_random_v3 as w

    w.write_random_checkpoint(out, dict(w.PRESETS["v3-1gb"], **BENCH_CONFIG), bits=4, group_size=64, seed=0,
                              tokenizer=False)
    print(f"wrote {out}: {sum(f.stat().st_size for f in Path(out).glob('*.safetensors')) / 1e6:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--make-model", metavar="DIR")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=600.0)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--modes", nargs="+", default=["pipeline", "expert"])
    ap.add_argument("--die-rank", type=int, default=-1)
    ap.add_argument("--die-after", type=int, default=0)
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--prefill-step", type=int, default=512, help="prompt tokens per forward (chunked prefill)")
    args = ap.parse_args()
    if args.make_model:
        make_model(args.make_model)
    elif args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
