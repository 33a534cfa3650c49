"""Agent-like sessions per family through the serving engine (prefix cache on vs off), and aggregate batched
decode per family; prints JSON lines.

    python benchmarks/agent_bench.py                                   # the test fixtures: V3, V3.2, V4
    python benchmarks/agent_bench.py --turns 8 --system 1900 --turn-tokens 2000 --jsonl out.jsonl
    python benchmarks/agent_bench.py --models v4=DIR --batches 1 2 4 8

A session: a system block (with tool schemas, here random ids) ends at `<｜User｜>`; each turn appends a user
turn of --turn-tokens ids and `<｜Assistant｜>`, and the next turn resends everything plus the reply (greedy,
--reply tokens). Per turn: prompt tokens, cached tokens, TTFT warm (an engine whose prefix cache has seen the
earlier turns, with a disk tier) and cold (an engine with the prefix cache off, same history), the prefix
cache's RAM bytes per entry and disk bytes per file. Batched decode: aggregate decode tok/s (every row's
tokens after its first, over the wall clock from all rows admitted to the last token) at each batch size.

The default models are the repository's tiny fixtures (tests/fixtures: 2-4 layers, hidden 64-128), so the
figures show the cache's behaviour (what is cached, bytes per snapshot, warm vs cold ratio) rather than
real-model speed; pass converted folders with --models for that. Token ids stand in for <｜User｜> /
<｜Assistant｜> (the fixtures have no tokenizer): USER_ID / ASSISTANT_ID below.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx

import mlxseek
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams
from mlxseek.serve.engine import Engine, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_MODELS = {"v3": FIXTURES / "v3", "v3.2": FIXTURES / "v32", "v4": FIXTURES / "v4_flash"}
USER_ID, ASSISTANT_ID = 5, 6
MARKS = {"user": USER_ID, "assistant": ASSISTANT_ID}


def _emit(line: dict, out) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.write(text + "\n")
        out.flush()


def _ask(engine: Engine, prompt: list[int], n: int) -> tuple[list, float]:
    """(events, seconds to the first event)."""
    async def go():
        t0, first, events = time.perf_counter(), None, []
        async for e in engine.generate(prompt, SamplingParams(max_tokens=n)):
            first = first if first is not None else time.perf_counter() - t0
            events.append(e)
        return events, first

    return asyncio.run(go())


def _engine(model, **kw) -> Engine:
    eng = Engine(model, None, model_id="bench", snapshot_marks=MARKS, **kw)
    eng.start()
    return eng


def session(family: str, model, args, out) -> None:
    rng = random.Random(args.seed)
    vocab = model.config.vocab_size
    words = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731 - never a mark id
    folder = tempfile.TemporaryDirectory(prefix="agent_bench_")
    warm = _engine(model, prompt_cache_dir=folder.name, prompt_cache_bytes=args.cache_gb << 30)
    cold = _engine(model, prompt_cache_bytes=0)
    history = words(args.system)
    try:
        for turn in range(1, args.turns + 1):
            prompt = history + [USER_ID] + words(args.turn_tokens) + [ASSISTANT_ID]
            events, ttft_warm = _ask(warm, prompt, args.reply)
            cold_events, ttft_cold = _ask(cold, prompt, args.reply)
            stats = warm.stats()
            files = list(Path(folder.name).glob("*.safetensors"))
            _emit({"bench": "agent_session", "family": family, "turn": turn, "prompt_tokens": len(prompt),
                   "cached_tokens": events[-1].cached_tokens,
                   "cached_share": round(events[-1].cached_tokens / len(prompt), 3),
                   "ttft_warm_s": round(ttft_warm, 4), "ttft_cold_s": round(ttft_cold, 4),
                   "warm_over_cold": round(ttft_warm / ttft_cold, 3),
                   "same_reply_as_cold": [e.token for e in events] == [e.token for e in cold_events],
                   "snapshot_kind": "exact" if not stats["cache"]["cut"] else "block",
                   "ram_entries": stats["entries"], "ram_bytes_per_entry": stats["bytes"] // max(stats["entries"], 1),
                   "disk_files": len(files),
                   "disk_bytes_per_file": sum(f.stat().st_size for f in files) // max(len(files), 1)}, out)
            history = prompt + [e.token for e in events]
    finally:
        warm.stop()
        cold.stop()
        folder.cleanup()


def batched_decode(family: str, model, args, out) -> None:
    rng = random.Random(args.seed + 1)
    vocab = model.config.vocab_size
    for batch in args.batches:
        prompts = [[rng.randrange(10, vocab) for _ in range(args.batch_prompt)] for _ in range(batch)]
        dec = BatchDecoder(model, None)
        for p in prompts:
            dec.add(p, RowParams(max_tokens=args.gen_tokens))
        mx.eval(mx.zeros(1))
        t0, n = time.perf_counter(), 0
        while dec.active or dec.pending:
            n += sum(rec.generation_tokens > 1 for _, rec in dec.step())
        wall = time.perf_counter() - t0
        _emit({"bench": "batched_decode", "family": family, "batch": batch, "decode_tokens": n,
               "wall_s": round(wall, 3), "aggregate_tok_s": round(n / wall, 2),
               "shared_forward": bool(dec.cache[0].shared_forward)}, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=[], metavar="FAMILY=DIR",
                    help="families to run (default: the fixtures for v3, v3.2, v4)")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--system", type=int, default=1900, help="system block tokens")
    ap.add_argument("--turn-tokens", type=int, default=1900, help="tokens each user turn adds")
    ap.add_argument("--reply", type=int, default=16, help="reply tokens per turn")
    ap.add_argument("--cache-gb", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--batch-prompt", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", type=Path, help="also append the lines to this file")
    args = ap.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.models) or {k: str(v) for k, v in DEFAULT_MODELS.items()}
    out = open(args.jsonl, "a") if args.jsonl else None
    try:
        _emit({"bench": "agent_bench", "argv": sys.argv[1:], "models": models, "device": str(mx.default_device())}, out)
        for family, folder in models.items():
            model = mlxseek.load(folder, dtype="float32", tokenizer=False)[0]
            session(family, model, args, out)
            if args.batches:
                batched_decode(family, model, args, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
