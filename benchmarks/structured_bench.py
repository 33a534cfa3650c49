"""Constrained decoding cost: decode tok/s with a JSON-schema grammar (llguidance mask per token) vs without,
and the host time each mask takes.

    python benchmarks/structured_bench.py                        # the ~1 GB random V3 (written if missing)
    python benchmarks/structured_bench.py --model <dir> --gen-tokens 64 --rounds 5 --batch 4

One JSON line per (round, mode, batch): decode tok/s over the tokens after the first (the prefill's), and for
the constrained runs the mean host time per mask (compute + unpack, `TokenConstraint.mask_seconds`);
then one summary line per batch size: medians and the ratio constrained / plain (the goal is >= 0.9).
Solo runs go through `generate_step` (the loop `stream_generate` drives), batched ones through
`BatchDecoder`; modes alternate, and so does which goes first, so machine noise hits both alike. The
schema is an array of at least 1,000 small objects, so a random model cannot finish it before
--gen-tokens; greedy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx

import mlxseek
from mlxseek.formats import render_chat
from mlxseek.formats.constraints import json_grammar
from mlxseek.generation.constraint import make_constraint
from mlxseek.generation.steps import generate_step

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_random_v3 import BENCH_MODEL as DEFAULT_MODEL  # noqa: E402
from make_random_v3 import ensure_bench_model  # noqa: E402

ITEM = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                         "score": {"type": "integer", "minimum": 0, "maximum": 1000},
                                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                                  "maxItems": 4}},
        "required": ["name", "score", "tags"], "additionalProperties": False}
SCHEMA = {"type": "array", "items": ITEM, "minItems": 1000}


def solo(model, tok, ids, gen: int, grammar) -> dict:
    c = None if grammar is None else make_constraint(tok, grammar, vocab_size=model.config.vocab_size,
                                                     prompt_ids=ids[-4:].tolist())
    t1, n = None, 0
    for n, _ in enumerate(generate_step(ids, model, max_tokens=gen, constraint=c), start=1):
        if n == 1:
            t1 = time.perf_counter()
    wall = time.perf_counter() - t1
    return {"decode_tps": (n - 1) / wall, "tokens": n, "mask_ms": _mask_ms([c])}


def batched(model, tok, ids, gen: int, grammar, batch: int) -> dict:
    dec = mlxseek.BatchDecoder(model, tok)
    for _ in range(batch):
        dec.add(ids, mlxseek.RowParams(max_tokens=gen, grammar=grammar))
    constraints = [r.constraint for r in dec.rows]
    t1, n = time.perf_counter(), 0
    while dec.active or dec.pending:
        n += sum(rec.generation_tokens > 1 for _, rec in dec.step())
    wall = time.perf_counter() - t1
    return {"decode_tps": n / wall, "tokens": n, "mask_ms": _mask_ms(constraints)}


def _mask_ms(constraints) -> float | None:
    cs = [c for c in constraints if c is not None and c.masks]
    return 1e3 * sum(c.mask_seconds for c in cs) / sum(c.masks for c in cs) if cs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    model, tok = mlxseek.load(ensure_bench_model(args.model))
    text = render_chat([{"role": "user", "content": "List the scores as JSON."}], style="v3", tokenizer=tok)
    ids = mx.array(tok.encode(text, add_special_tokens=False), dtype=mx.uint32)
    grammar = json_grammar(SCHEMA)
    make_constraint(tok, grammar, vocab_size=model.config.vocab_size, prompt_ids=[0])  # the one-time bridge
    solo(model, tok, ids, 4, None)  # warm-up
    rows: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for batch in args.batch:
            modes = [("plain", None), ("json_schema", grammar)]
            for mode, g in modes if rnd % 2 == 0 else modes[::-1]:  # alternate who goes first
                r = solo(model, tok, ids, args.gen_tokens, g) if batch == 1 else \
                    batched(model, tok, ids, args.gen_tokens, g, batch)
                rows.setdefault((batch, mode), []).append(r)
                print(json.dumps({"round": rnd, "mode": mode, "batch": batch, **r}), flush=True)
    for batch in args.batch:
        plain = statistics.median(r["decode_tps"] for r in rows[(batch, "plain")])
        cons = statistics.median(r["decode_tps"] for r in rows[(batch, "json_schema")])
        mask = statistics.median(r["mask_ms"] for r in rows[(batch, "json_schema")])
        print(json.dumps({"summary": True, "batch": batch, "model": args.model.name, "plain_decode_tps": plain,
                          "json_schema_decode_tps": cons, "ratio": cons / plain, "mask_ms_per_token": mask,
                          "rounds": args.rounds, "gen_tokens": args.gen_tokens}), flush=True)


if __name__ == "__main__":
    main()
