"""Measure speculation (MTP or DSpark) against plain decoding on the same prompts: acceptance, tokens per verify
step, decode tok/s of both and the wall speedup, and whether greedy outputs are token-for-token equal.
Used by `mlxseek bench --draft` and `benchmarks/mtp_speed.py`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np

from ..errors import GenerationError
from ..generation.steps import generate_step
from ..speculative import DraftPolicy, DraftStats, speculative_generate_step
from .evaluate import encode_text


def text_prompts(tokenizer, path: str | Path, n: int, length: int) -> list[mx.array]:
    """n prompts of `length` tokens (bos first when the tokenizer has one) spread evenly over a text file."""
    ids = encode_text(tokenizer, Path(path).read_text(encoding="utf-8"))
    bos = getattr(tokenizer, "bos_token_id", None)
    body = length - (bos is not None)
    if len(ids) < n * body:
        raise GenerationError(f"{path}: {len(ids)} tokens, too few for {n} prompts of {length} tokens")
    stride = (len(ids) - body) // max(1, n - 1) if n > 1 else 0
    return [mx.array(([bos] if bos is not None else []) + ids[i * stride: i * stride + body], dtype=mx.uint32)
            for i in range(n)]


def random_prompts(vocab_size: int, n: int, length: int, seed: int = 0) -> list[mx.array]:
    rng = np.random.default_rng(seed)
    return [mx.array(rng.integers(min(3, vocab_size - 1), vocab_size, length), dtype=mx.uint32) for _ in range(n)]


def _run(steps) -> tuple[list[int], float]:
    """Tokens and decode seconds (first token to last, so prefill is left out)."""
    mx.synchronize()
    tokens, t1 = [], None
    for tok, _ in steps:
        tokens.append(tok)
        if t1 is None:
            t1 = time.perf_counter()
    mx.synchronize()
    return tokens, time.perf_counter() - t1


def bench_draft(model, prompts: Sequence[mx.array], *, gen_tokens: int = 128, num_draft: int = 1,
                draft: str = "mtp", sampler=None, seed: int = 0) -> dict:
    """One row: plain decoding vs `draft` with `num_draft` drafts over every prompt (same sampler/seed).
    Plain and drafted runs alternate prompt by prompt, so load from other processes hits both alike."""
    warm = prompts[0][:8]
    list(speculative_generate_step(warm, model, max_tokens=4, draft=draft, num_draft=num_draft))  # compile/warm
    list(generate_step(warm, model, max_tokens=4))
    stats, policy = DraftStats(), DraftPolicy()
    plain_runs = []
    same, spec_s, spec_tokens = 0, 0.0, 0
    for i, prompt in enumerate(prompts):
        mx.random.seed(seed + i)
        plain_runs.append(_run(generate_step(prompt, model, max_tokens=gen_tokens, sampler=sampler)))
        mx.random.seed(seed + i)
        toks, secs = _run(speculative_generate_step(prompt, model, max_tokens=gen_tokens, draft=draft,
                                                    num_draft=num_draft, sampler=sampler, stats=stats,
                                                    policy=policy))
        same += toks == plain_runs[i][0]
        spec_s += secs
        spec_tokens += len(toks) - 1
    plain_s = sum(r[1] for r in plain_runs)
    plain_tokens = sum(len(r[0]) - 1 for r in plain_runs)
    row = {
        "draft": draft, "num_draft": num_draft, "prompts": len(prompts), "gen_tokens": gen_tokens,
        "identical_outputs": same, "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens,
        "acceptance_rate": stats.acceptance_rate, "first_draft_acceptance": stats.first_acceptance_rate,
        "tokens_per_step": stats.tokens_per_step, "mean_accepted_length": stats.mean_accepted,
        "acceptance_by_position": stats.acceptance_by_position, "confidence_cuts": stats.confidence_cuts,
        "plain_tps": plain_tokens / plain_s,
        "draft_tps": spec_tokens / spec_s, "speedup": (spec_tokens / spec_s) / (plain_tokens / plain_s),
        "drafting": policy.drafting, "greedy": sampler is None or getattr(sampler, "greedy", False),
    }
    if policy.costs is not None:
        row.update(verify_cost_ratio=policy.costs.verify_ratio, mtp_cost_ratio=policy.costs.mtp_s / policy.costs.step_s,
                   expected_speedup=policy.expected_speedup)
    return row


def format_rows(rows: list[dict]) -> str:
    head = ("| draft | k | first-draft acceptance | acceptance | tokens/verify step | plain tok/s | draft tok/s "
            "| speedup | identical |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['draft']}{'' if r['drafting'] else ' (off)'} | {r['num_draft']} | "
            f"{100 * r['first_draft_acceptance']:.1f}% | {100 * r['acceptance_rate']:.1f}% | "
            f"{r['tokens_per_step']:.2f} | {r['plain_tps']:.1f} | {r['draft_tps']:.1f} | {r['speedup']:.2f}x | "
            + (f"{r['identical_outputs']}/{r['prompts']} |" if r["greedy"] else "- (sampled) |")
        )
    return "\n".join(lines)
