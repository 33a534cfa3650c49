#!/usr/bin/env python
"""DSpark vs MTP drafting on one trained tiny V4 backbone: tests/fixtures/trained_dspark (0731 layout, the
DSpark drafter) and tests/fixtures/trained_v4 (April layout, the MTP head), which store the same backbone
shard. Acceptance per block position, mean accepted length per verify, tokens per verify step, DSpark at
block 5 and 2 with the confidence cut off and on, MTP at 1 and 2 drafts; wall clock beside plain greedy
decoding on the same prompts, and what one verify and one draft cost against one plain decode step (so a
GPU run can be predicted from its own step costs). JSON lines.

    python benchmarks/dspark_bench.py --out benchmarks/results/issue21_dspark_trained.jsonl

Prompts are held out: windows of tests/fixtures/trained_v3_heldout.txt (files neither training saw), or
random ids from an unused seed when the checkpoint ships no tokenizer, continued greedily.
On MLX's CPU backend a k+1-row verify costs several plain steps (rows cost linearly), so wall-clock
speedups below 1x are expected here; `verify_over_step` and `draft_over_step` are the figures to carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

import mlxseek
from mlxseek.generation.steps import generate_step
from mlxseek.speculative import DraftStats, speculative_generate_step
from mlxseek.speculative.costs import measure_draft_costs
from mlxseek.tools.draft_bench import text_prompts

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
HELD_OUT = FIXTURES / "trained_v3_heldout.txt"


def held_out_prompts(folder: Path, vocab: int, n: int, length: int, seed: int) -> list[mx.array]:
    tok = mlxseek.load_tokenizer(folder)
    if tok is not None:
        return text_prompts(tok, HELD_OUT, n, length)
    rng = np.random.default_rng(seed)
    return [mx.array(rng.integers(2, vocab - 1, length).astype(np.uint32)) for _ in range(n)]


def timed(gen) -> tuple[list[int], float]:
    tic = time.perf_counter()
    toks = [t for t, _ in gen]
    return toks, time.perf_counter() - tic


def run(model, prompts, gen: int, draft: str, block: int, cut) -> dict:
    """Plain and drafted decoding alternate prompt by prompt, so load from other processes hits both alike."""
    stats, wall, plain_wall, identical = DraftStats(), 0.0, 0.0, 0
    extra = {"confidence_cut": cut} if draft == "dspark" else {}
    for p in prompts:
        plain, s_plain = timed(generate_step(p, model, max_tokens=gen))
        spec, s_spec = timed(speculative_generate_step(p, model, max_tokens=gen, draft=draft, num_draft=block,
                                                       stats=stats, **extra))
        identical += spec == plain
        wall, plain_wall = wall + s_spec, plain_wall + s_plain
    return {
        "bench": draft, "block": block, "confidence_cut": cut, "prompts": len(prompts), "gen_tokens": gen,
        "identical_outputs": identical, "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens,
        "verify_steps": stats.verify_steps, "acceptance": round(stats.acceptance_rate, 4),
        "acceptance_by_position": [round(a, 4) for a in stats.acceptance_by_position],
        "mean_accepted_length": round(stats.mean_accepted, 4), "tokens_per_step": round(stats.tokens_per_step, 4),
        "confidence_cuts": stats.confidence_cuts, "wall_s": round(wall, 3), "plain_wall_s": round(plain_wall, 3),
        "speedup_vs_plain": round(plain_wall / wall, 3),
    }


def costs(model, draft: str, block: int) -> dict:
    c = measure_draft_costs(model, block, kind=draft)
    return {"bench": f"{draft}_costs", "block": block, "step_ms": round(1e3 * c.step_s, 3),
            "verify_ms": round(1e3 * c.verify_s, 3), "draft_ms": round(1e3 * c.mtp_s, 3),
            "cycle_ms": round(1e3 * c.cycle_s, 3), "verify_over_step": round(c.verify_ratio, 3),
            "draft_over_step": round(c.mtp_s / c.step_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=FIXTURES / "trained_dspark", help="a DSpark checkpoint")
    ap.add_argument("--mtp-model", type=Path, default=FIXTURES / "trained_v4",
                    help="an MTP checkpoint on the same backbone ('' to skip the MTP rows)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--cut", type=float, default=0.5, help="confidence cut for the 'on' rows")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    args = ap.parse_args()
    runs = [(args.model, "dspark", [(b, c) for b in (5, 2) for c in (None, args.cut)])]
    if str(args.mtp_model):
        runs.append((args.mtp_model, "mtp", [(1, None), (2, None)]))
    lines = []
    for folder, draft, settings in runs:
        model = mlxseek.load(folder, tokenizer=False)[0]
        prompts = held_out_prompts(folder, model.config.vocab_size, args.prompts, args.prompt_tokens, args.seed)
        list(speculative_generate_step(prompts[0], model, max_tokens=8, draft=draft, num_draft=settings[0][0]))  # warm up
        meta = {"model": str(folder), "machine": platform.machine(), "mlx": mx.__version__,
                "device": str(mx.default_device()), "seed": args.seed, "load_avg_1m": os.getloadavg()[0]}
        rows = [run(model, prompts, args.gen_tokens, draft, block, cut) for block, cut in settings]
        rows += [costs(model, draft, block) for block in sorted({b for b, _ in settings}, reverse=True)]
        lines += [json.dumps({**meta, **r}) for r in rows]
        print("\n".join(lines[-len(rows):]), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
