"""Routed experts paged from disk: hit rate, bytes read per token and decode tok/s at expert budgets of
100%, 50% and 25% of the experts' resident bytes, next to the fully resident model.

    python benchmarks/distributed.py --make-model /tmp/ds-v3-300mb      # the ~300 MB bench model
    python benchmarks/paging.py --model /tmp/ds-v3-300mb [--prompt-tokens 16] [--gen-tokens 32]

Prints JSON lines: one per budget ("resident" = no paging). Counters cover the decode steps only (the
prompt's prefill fills the LRU first). `--cold` asks the OS to drop the checkpoint from its page cache
before each run (posix_fadvise DONTNEED), so first reads come from the disk rather than from RAM.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxseek.generation.steps import generate_step
from mlxseek.loading.loader import load_model


def drop_page_cache(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(folder: Path, budget_gb, prompt: mx.array, gen_tokens: int) -> dict:
    gc.collect()
    mx.clear_cache()
    model = load_model(folder, **({} if budget_gb is None else {"expert_memory_gb": budget_gb}))
    pager = getattr(model, "pager", None)
    steps = generate_step(prompt, model, max_tokens=gen_tokens)
    t0 = time.perf_counter()
    next(steps)  # prefill + first token
    t1 = time.perf_counter()
    if pager:
        pager.reset_stats()
    tokens = [t for t, _ in steps]
    t2 = time.perf_counter()
    row = {"budget_gb": budget_gb, "tokens": tokens,
           "param_bytes": sum(v.nbytes for _, v in tree_flatten(model.parameters())),
           "prefill_s": t1 - t0, "decode_tps": len(tokens) / (t2 - t1)}
    if pager:
        s = pager.stats()
        row.update(hit_rate=s["hit_rate"], misses=s["misses"], prefetched=s["prefetched"],
                   prefetch_used=s["prefetch_used"], bytes_read_per_token=s["bytes_read"] / len(tokens), resident_expert_bytes=s["resident_bytes"],
                   expert_bytes_total=pager.total_bytes())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    total = load_model(args.model, expert_memory_gb=0).pager.total_bytes()
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    prompt = mx.array(np.random.default_rng(0).integers(3, vocab, args.prompt_tokens), dtype=mx.uint32)
    base = None
    for fraction in (None, 1.0, 0.5, 0.25):
        if args.cold:
            drop_page_cache(args.model)
        row = run(args.model, None if fraction is None else fraction * total / 1e9, prompt, args.gen_tokens)
        row["budget"] = "resident" if fraction is None else f"{fraction:.0%}"
        tokens = row.pop("tokens")
        base = base or tokens
        row["tokens_equal_resident"] = tokens == base
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
