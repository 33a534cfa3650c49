"""The server's one decode path against what its solo path used to be, in one run; prints JSON lines.

    python benchmarks/decode_path_bench.py --label s23b --jsonl benchmarks/results/issue23_decode_path.jsonl
    PYTHONPATH=/path/to/older/src python benchmarks/decode_path_bench.py --label base ...

One greedy request at a time through `mlxseek.serve.engine.Engine(max_batch=1)` (no HTTP, prefix cache
off), with draft "none" and "mtp", beside `mlxseek.stream_generate` on the same prompt in the same
process (the solo path's own generator before the server had one path); rounds alternate the order.
Reports the whole request's seconds (prompt to last token, median of --runs) and tokens per second over
it, time to the first token, the share of tokens whose forward drafted, and whether the tokens equal
stream_generate's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "fixtures" / "trained_v3"
TEXT = HERE.parent / "tests" / "fixtures" / "trained_v3_heldout.txt"


def timed(events) -> tuple[list[int], float, float, float | None, float]:
    """(tokens, seconds to the first, seconds to the last, share of tokens whose forward drafted, CPU
    seconds of the process) of an iterable of (arrival time, record) pairs; the share is None for records
    that do not say. The whole request's time is the figure to compare (the engine's events can reach the
    consumer in bursts); CPU seconds (all threads) are what a shared machine's load disturbs least."""
    t0, c0, items = time.perf_counter(), time.process_time(), list(events)
    cpu = time.process_time() - c0
    (first, _), (end, _) = items[0], items[-1]
    flags = [getattr(e, "drafting", None) for _, e in items]
    share = None if None in flags else sum(flags) / len(flags)
    return [e.token for _, e in items], first - t0, end - t0, share, cpu


def stamped(records):
    for r in records:
        yield time.perf_counter(), r


def engine_events(engine, prompt, n):
    """(arrival time, TokenEvent) for one request, stamped as each event reaches the consumer."""
    from mlxseek.serve.params import SamplingParams

    async def go():
        return [(time.perf_counter(), e) async for e in engine.generate(prompt, SamplingParams(max_tokens=n))]

    return asyncio.run(go())


class _Lazy:
    """An iterable that runs `fn` when iterated (so `timed` starts its clock before the request)."""

    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return iter(self.fn())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(FIXTURE))
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jsonl", type=Path)
    args = ap.parse_args()
    import mlxseek
    from mlxseek.serve.engine import Engine

    model, tok = mlxseek.load(args.model)
    prompt = tok.encode(TEXT.read_text())[: args.prompt_tokens]
    want = [r.token for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=args.tokens)]
    for draft in ("none", "mtp"):
        eng = Engine(model, tok, model_id="bench", prompt_cache_bytes=0, draft=draft)
        eng.start()
        rows = {"stream_generate": [], "engine": []}
        try:
            engine_events(eng, prompt, 4)  # warm-up
            for r in range(args.runs):
                order = ("engine", "stream_generate") if r % 2 else ("stream_generate", "engine")
                for path in order:
                    if path == "engine":  # timed from before the request is queued
                        got = timed(_Lazy(lambda: engine_events(eng, prompt, args.tokens)))
                    else:
                        got = timed(stamped(mlxseek.stream_generate(model, tok, prompt, max_tokens=args.tokens,
                                                                    draft=None if draft == "none" else draft)))
                    rows[path].append(got)
        finally:
            eng.stop()
        for path, runs in rows.items():
            row = {"label": args.label, "path": path, "draft": draft, "model": Path(args.model).name,
                   "prompt_tokens": len(prompt), "tokens": args.tokens,
                   "request_s": round(statistics.median(r[2] for r in runs), 4),
                   "tok_s": round(args.tokens / statistics.median(r[2] for r in runs), 2),
                   "cpu_s": round(statistics.median(r[4] for r in runs), 4),
                   "ttft_s": round(statistics.median(r[1] for r in runs), 4),
                   "drafted_share": None if runs[0][3] is None else round(statistics.median(r[3] for r in runs), 3),
                   "equal_tokens": all(r[0] == want for r in runs), "runs": len(runs),
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            line = json.dumps(row)
            print(line, flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
