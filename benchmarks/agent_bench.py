"""Agent-like sessions per family through the serving engine (prefix cache on vs off), and aggregate batched
decode per family; prints JSON lines.

    python benchmarks/agent_bench.py                                   # the test fixtures: V3, V3.2, V4
    python benchmarks/agent_bench.py --turns 8 --system 1900 --turn-tokens 2000 --jsonl out.jsonl
    python benchmarks/agent_bench.py --models v4=DIR --batches 1 2 4 8
    python benchmarks/agent_bench.py --turns 0                         # batched decode only
    python benchmarks/agent_bench.py --models v4.1=tiny --turns 12 --turn-tokens 1300 --cold-turns 2 12
    python benchmarks/agent_bench.py --models v3.2=tests/fixtures/v32 --http mlxseek mlx_lm --no-engine

A session: a system block (with tool schemas, here random ids) ends at `<｜User｜>`; each turn appends a user
turn of --turn-tokens ids and `<｜Assistant｜>`, and the next turn resends everything plus the reply (greedy,
--reply tokens). Per turn: prompt tokens, cached tokens, TTFT warm (an engine whose prefix cache has seen the
earlier turns, with a disk tier) and cold (an engine with the prefix cache off, same history), the prefix
cache's RAM and disk bytes (shared pieces counted once) and where the warm TTFT went (restoring the
snapshot, taking new snapshots, the rest: prefilling the suffix and the first token). --cold-turns limits
the cold runs (each a whole-history prefill) to the turns named. `--http`: the same session over HTTP,
`mlxseek serve` beside `mlx_lm.server` (agent_http.py). Batched decode: aggregate decode tok/s (every row's
tokens after its first, over the wall clock from all rows admitted to the last token) at each batch size.

The default models are the repository's tiny fixtures (tests/fixtures: 2-4 layers, hidden 64-128), so the
figures show the cache's behaviour (what is cached, bytes per snapshot, warm vs cold ratio) rather than
real-model speed; pass converted folders with --models for that. `v4.1=tiny` builds a V4.1 in miniature
in process (V41_TINY: random weights, no Engram; no V4.1 fixture folder holds a long enough context);
`v3-wide=wide` writes WIDE_V3 once, a V3 whose per-token work outweighs its attention at 16K. Token ids stand in for <｜User｜> /
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
# V4.1's schedule in miniature: tests/v41_fixture.py's TINY (window-only layers, ratio-2 and ratio-1 KV sources
# with reuse layers, index sources, the two-level top-k) with a context and vocabulary for 16K-token sessions.
sys.path.insert(0, str(ROOT / "tests"))
from v41_fixture import TINY  # noqa: E402

V41_TINY = {**TINY, "vocab_size": 1024, "rms_norm_eps": 1e-6, "max_position_embeddings": 65536}
MARKS = {"user": USER_ID, "assistant": ASSISTANT_ID}


def tiny_v41(seed: int = 0):
    """A V4.1 model of V41_TINY's shape with seeded random weights (norms around 1), float32."""
    import numpy as np
    from mlx.utils import tree_flatten

    from mlxseek.config import ModelConfig
    from mlxseek.models.deepseek_v41 import V41Model

    model, rng = V41Model(ModelConfig.from_dict(V41_TINY)), np.random.default_rng(seed)
    params = []
    for name, p in tree_flatten(model.parameters()):
        one = name.endswith(("norm.weight", "layernorm.weight", ".scale"))
        params.append((name, mx.array((one + rng.normal(0, 0.1, p.shape)).astype(np.float32))))
    model.load_weights(params, strict=True)
    mx.eval(model.parameters())
    return model


# A V3 whose per-token work outweighs attention at 16K, as a real checkpoint's does (written once, float32):
# hidden 1024, 2 heads with a 64-wide latent; ~16 ms a token of prefill on this CPU.
WIDE_V3 = {"vocab_size": 1024, "hidden_size": 1024, "num_hidden_layers": 2, "intermediate_size": 2048,
           "moe_intermediate_size": 1024, "n_routed_experts": 8, "num_experts_per_tok": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "q_lora_rank": 256, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
           "qk_rope_head_dim": 32, "v_head_dim": 32, "max_position_embeddings": 32768}
WIDE_FOLDER = Path(tempfile.gettempdir()) / "mlxseek-bench" / "agent-v3-wide"


def wide_v3() -> str:
    if not (WIDE_FOLDER / "config.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from random_checkpoint import PRESETS, write_random_checkpoint

        tiny = PRESETS["tiny"]
        rope = dict(tiny["rope_scaling"], factor=8, original_max_position_embeddings=4096)
        write_random_checkpoint(WIDE_FOLDER, dict(tiny, **WIDE_V3, rope_scaling=rope), bits=0, dtype="float32",
                                tokenizer=False)
    return str(WIDE_FOLDER)


def load_model(folder: str):
    """`tiny`: V41_TINY; `wide`: WIDE_V3; else a checkpoint folder."""
    if folder == "tiny":
        return tiny_v41()
    return mlxseek.load(wide_v3() if folder == "wide" else folder, dtype="float32", tokenizer=False)[0]


def _emit(line: dict, out) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.write(text + "\n")
        out.flush()


def _ask(engine: Engine, prompt: list[int], n: int, on_first=None) -> tuple[list, float]:
    """(events, seconds to the first event); `on_first()` runs when the first event arrives."""
    async def go():
        t0, first, events = time.perf_counter(), None, []
        async for e in engine.generate(prompt, SamplingParams(max_tokens=n)):
            if first is None:
                first = time.perf_counter() - t0
                if on_first is not None:
                    on_first()
            events.append(e)
        return events, first

    return asyncio.run(go())


def _engine(model, **kw) -> Engine:
    eng = Engine(model, None, model_id="bench", snapshot_marks=MARKS, **kw)
    eng.start()
    return eng


class _Timed:
    """Seconds spent in one method of an object (the warm engine's prefix cache) and its calls so far."""

    def __init__(self, obj, name: str):
        self.seconds, self.last, self.calls, fn = 0.0, 0.0, 0, getattr(obj, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.last = time.perf_counter() - t0
                self.seconds += self.last
                self.calls += 1

        setattr(obj, name, timed)

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s

    def wait_for(self, calls: int, timeout: float = 600.0) -> None:
        deadline = time.time() + timeout
        while self.calls < calls and time.time() < deadline:
            time.sleep(0.01)


def _cache_bytes(warm: Engine, folder: str) -> dict:
    stats, files = warm.stats(), list(Path(folder).glob("*.safetensors"))
    entries = max(stats["entries"], 1)
    return {"snapshot_kind": "block" if stats["cache"]["cut"] else "exact", "ram_entries": stats["entries"],
            "ram_bytes": stats["bytes"], "ram_bytes_per_entry": stats["bytes"] // entries,
            "ram_bytes_unshared_per_entry": stats["bytes_unshared"] // entries, "disk_files": len(files),
            "disk_bytes": sum(f.stat().st_size for f in files),
            "disk_bytes_per_file": sum(f.stat().st_size for f in files) // max(len(files), 1)}


def _warm_engine(model, folder: str, args) -> tuple[Engine, _Timed, _Timed]:
    warm = _engine(model, prompt_cache_dir=folder, prompt_cache_bytes=int(args.cache_gb * (1 << 30)))
    deadline = time.time() + 60
    while warm.prefix is None and warm.prefix_reason is None and time.time() < deadline:
        time.sleep(0.01)  # the worker builds the prefix cache as it starts
    if warm.prefix is None:
        raise SystemExit(f"the prefix cache is off for this model: {warm.prefix_reason}")
    return warm, _Timed(warm.prefix, "lookup"), _Timed(warm.prefix, "insert")


def session(family: str, model, args, out) -> None:
    rng = random.Random(args.seed)
    vocab = model.config.vocab_size
    words = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731 - never a mark id
    folder = tempfile.TemporaryDirectory(prefix="agent_bench_")
    warm, lookup, insert = _warm_engine(model, folder.name, args)
    history = words(args.system)
    try:
        for turn in range(1, args.turns + 1):
            prompt = history + [USER_ID] + words(args.turn_tokens) + [ASSISTANT_ID]
            at_first = []
            events, ttft_warm = _ask(warm, prompt, args.reply, on_first=lambda: at_first.append(insert.calls))
            # The finished turn's snapshot is taken after its last token: wait for it, and time it apart
            # from the snapshots taken before the first token (V4's points while prefill passes them).
            insert.wait_for(at_first[0] + 1)
            turn_end = insert.last
            line = {"bench": "agent_session", "family": family, "turn": turn, "prompt_tokens": len(prompt),
                    "cached_tokens": events[-1].cached_tokens,
                    "cached_share": round(events[-1].cached_tokens / len(prompt), 3),
                    "ttft_warm_s": round(ttft_warm, 4), "warm_restore_s": round(lookup.take(), 4),
                    "warm_snapshot_s": round(insert.take() - turn_end, 4), "turn_end_snapshot_s": round(turn_end, 4)}
            if not args.cold_turns or turn in args.cold_turns:
                cold = _engine(model, prompt_cache_bytes=0)  # fresh per turn: nothing carried over
                try:
                    cold_events, ttft_cold = _ask(cold, prompt, args.reply)
                finally:
                    cold.stop()
                line.update(ttft_cold_s=round(ttft_cold, 4), warm_over_cold=round(ttft_warm / ttft_cold, 3),
                            same_reply_as_cold=[e.token for e in events] == [e.token for e in cold_events])
            _emit(dict(line, **_cache_bytes(warm, folder.name)), out)
            history = prompt + [e.token for e in events]
    finally:
        warm.stop()
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
                    help="families to run (default: the fixtures for v3, v3.2, v4); v4.1=tiny builds one")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--system", type=int, default=1900, help="system block tokens")
    ap.add_argument("--turn-tokens", type=int, default=1900, help="tokens each user turn (tool output) adds")
    ap.add_argument("--reply", type=int, default=16, help="reply tokens per turn")
    ap.add_argument("--cold-turns", type=int, nargs="*", default=[], help="turns with a cold run (default: all)")
    ap.add_argument("--cache-gb", type=float, default=4)
    ap.add_argument("--no-engine", action="store_true", help="skip the in-process session (with --http)")
    ap.add_argument("--http", nargs="*", default=[], choices=["mlxseek", "mlx_lm"],
                    help="also run the session over HTTP against these servers (fixture folders only)")
    ap.add_argument("--http-dir", default=tempfile.gettempdir(), help="where the word-tokenizer folders go")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--batch-prompt", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", type=Path, help="also append the lines to this file")
    args = ap.parse_args(argv)
    args.user_id, args.assistant_id = USER_ID, ASSISTANT_ID
    models = dict(m.split("=", 1) for m in args.models) or {k: str(v) for k, v in DEFAULT_MODELS.items()}
    out = open(args.jsonl, "a") if args.jsonl else None
    emit = lambda line: _emit(line, out)  # noqa: E731
    try:
        emit({"bench": "agent_bench", "argv": sys.argv[1:], "models": models, "device": str(mx.default_device())})
        for family, folder in models.items():
            if args.http:
                from agent_http import http_session

                http_session(family, Path(folder), args, emit)
            if args.no_engine:
                continue
            model = load_model(folder)
            if args.turns > 0:  # --turns 0: the batched decode alone
                session(family, model, args, out)
            if args.batches:
                batched_decode(family, model, args, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
