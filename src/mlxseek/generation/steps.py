"""The decode loop: `generate_step` yields (token, logprobs) after a chunked prefill.

The next step is built and queued with `mx.async_eval` before the current token is handed out, so
detokenizing and printing overlap with the next forward pass. Samplers and logits processors come from
`mlx_lm.sample_utils` (built once by the caller). Every model that follows mlx-lm's protocol
(`model(inputs, cache)`, `model.make_cache()`) works here.
"""

from __future__ import annotations

from typing import Callable, Generator, Optional, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from .prefill import cached_tokens, prefill_chunk

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def make_prompt_cache(model) -> list:
    """A fresh cache for `model`: one entry per layer, then (for a model with an MTP module) the MTP
    module's cache, as mlx-lm keeps a draft model's cache after the layers'. Pass it as `prompt_cache`
    to keep context (and MTP drafting state) across calls."""
    cache = model.make_cache()
    drafters = getattr(model, "drafters", ())
    if drafters:  # the drafter draft="auto" takes: MTP, or DSpark's ring (V4-0731/0813)
        cache.append(model.make_dspark_cache() if drafters[0] == "dspark" else model.make_mtp_cache())
    return cache


def split_prompt_cache(model, prompt_cache: list) -> tuple[list, list]:
    """(the per-layer caches, what follows them: the MTP entry, if any)."""
    n = len(model.layers)
    return prompt_cache[:n], prompt_cache[n:]


def last_logits(model, tokens: mx.array, cache) -> mx.array:
    """Logits (1, V) for the last position only: with `trunk`/`head`, skip the LM head on the rest."""
    if hasattr(model, "trunk") and hasattr(model, "head"):
        return model.head(model.trunk(tokens, cache)[:, -1])
    return model(tokens, cache=cache)[:, -1, :]


def generate_step(
    prompt: mx.array,
    model,
    *,
    max_tokens: int,
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[Sequence[LogitsProcessor]] = None,
    prompt_cache: Optional[list] = None,
    prefill_step_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    constraint=None,
) -> Generator[tuple[int, mx.array], None, None]:
    """Yield (token, logprobs (V,)) for up to `max_tokens` new tokens after `prompt` (1-D int array).

    The prompt is prefilled in chunks of `prefill_step_size` tokens (None: the backend policy's), fewer as the context grows (see
    `prefill_chunk`: attention scores stay bounded); `prompt_cache` (if given) is extended in
    place, so a later call continues the same context. No EOS handling here: see `stream_generate`.
    `constraint` (a `generation.constraint.TokenConstraint`) masks every sampled position.
    """
    cache = prompt_cache if prompt_cache is not None else make_prompt_cache(model)
    sampler = sampler or make_sampler()  # temp 0: argmax
    history = None  # tokens fed so far, for logits processors (repetition penalties look back over them)
    n_prompt = prompt.size

    def step(tokens: mx.array, first: bool) -> tuple[mx.array, mx.array]:
        nonlocal history
        logits = last_logits(model, tokens[None], cache)  # (1, V)
        if logits_processors:
            history = prompt if first else mx.concatenate([history, tokens])
            for proc in logits_processors:
                logits = proc(history, logits)
        if constraint is not None:
            mx.async_eval(logits)  # the forward runs while the host computes the mask
            if not first:
                constraint.feed(tokens.item())
            logits = constraint.apply(logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs[0]

    done = 0
    while n_prompt - done > (n := prefill_chunk(model, cached_tokens(cache), prefill_step_size)):
        model(prompt[done : done + n][None], cache=cache)
        mx.eval([c.state for c in cache])  # only the cache: the chunk's logits are never computed
        done += n
        if progress:
            progress(done, n_prompt)
        mx.clear_cache()
    y, logprobs = step(prompt[done:], True)
    mx.async_eval(y, logprobs)
    for n in range(max_tokens):
        if n + 1 < max_tokens:  # queue step n+1 before handing token n out
            next_y, next_logprobs = step(y, False)
            mx.async_eval(next_y, next_logprobs)
        if n == 0 and progress:
            mx.eval(y)
            progress(n_prompt, n_prompt)
        yield y.item(), logprobs
        if n + 1 < max_tokens:
            y, logprobs = next_y, next_logprobs
        if n % 256 == 255:
            mx.clear_cache()
