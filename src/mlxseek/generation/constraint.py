"""Constrained decoding: a per-row logits mask from llguidance (structured outputs, forced tool calls).

A grammar (llguidance's Lark text, see `mlxseek.formats.constraints`) is compiled once per request
against a bridge of our tokenizer (built once per tokenizer, ~2 s for DeepSeek's 129K vocabulary, and
kept on the tokenizer object). A `TokenConstraint` follows one sequence: before each sampling step the
decoder `feed`s it the row's last emitted token and `apply`s its mask (forbidden tokens to -inf).
Every decoder keeps the same rule: the constraint has consumed every emitted token but the last, so the
mask is that of the position being sampled. Drafted tokens go through `verify`, which masks each of the
k+1 verify positions as if the drafts before it were accepted: a forbidden draft cannot equal the
masked argmax (greedy) and has p = 0 (rejection sampling), so it is rejected either way.

A prompt that leaves the model inside its reasoning (`<think>` open) runs free until the reasoning's
close token; the grammar applies from the token after it.
"""

from __future__ import annotations

import re
import time
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from ..errors import ConstraintError
from .reasoning import THINK_END, prompt_opens_reasoning

_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \["([^"]+)"')


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError:  # a dependency of mlxseek; only a broken install lacks it
        raise ConstraintError("constrained decoding needs the llguidance package: pip install llguidance",
                              keyword=None) from None
    return llguidance


def check_grammar(grammar: str) -> None:
    """Raise ConstraintError naming the JSON-schema keyword (or the grammar error) llguidance refuses.
    Needs no tokenizer, so a server checks a request before queueing it."""
    message = _llguidance().LLMatcher.validate_grammar(grammar)
    if message:
        m = _UNIMPLEMENTED.search(message)
        keyword = m.group(1) if m else None
        why = f"the schema keyword '{keyword}' is not supported" if keyword else message.strip().splitlines()[0]
        raise ConstraintError(f"{why}; remove it or describe the constraint in the prompt", keyword=keyword)


def constraint_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of `tokenizer` (an mlx-lm TokenizerWrapper or a Hugging Face fast tokenizer) for a
    model whose logits have `vocab_size` columns; built once and kept on the tokenizer."""
    kept = getattr(tokenizer, "_mlxseek_llg", None)
    if kept is not None and kept[0] == vocab_size:
        return kept[1]
    llg = _llguidance()
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
    bridge = llg.hf.from_tokenizer(hf, n_vocab=vocab_size, eos_token=eos[0])
    tokenizer._mlxseek_llg = (vocab_size, bridge)
    return bridge


def _think_end_id(tokenizer) -> Optional[int]:
    ends = getattr(tokenizer, "think_end_tokens", None)
    if ends and len(ends) == 1:
        return ends[0]
    ids = tokenizer.encode(THINK_END, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


class TokenConstraint:
    """One sequence's grammar state as a logits mask; see the module docstring for when it is fed."""

    def __init__(self, matcher, vocab_size: int, eos: int, *, free_until: Optional[int] = None):
        self.matcher, self.vocab_size, self.eos = matcher, vocab_size, eos
        self.free_until = free_until  # the reasoning-close token while reasoning runs free, else None
        self.mask_seconds, self.masks = 0.0, 0  # host time spent computing masks (the benchmark reads it)

    @property
    def free(self) -> bool:
        return self.free_until is not None

    def feed(self, token: int) -> None:
        """Advance past an emitted token."""
        if self.free:
            if token == self.free_until:
                self.free_until = None
            return
        if not self.matcher.is_stopped():
            self.matcher.consume_token(int(token))

    def mask(self) -> Optional[np.ndarray]:
        """(V,) bool of the tokens allowed next, or None while reasoning runs free. A finished grammar (or
        one in an error state) allows only the end-of-sequence token."""
        if self.free:
            return None
        tic = time.perf_counter()
        if self.matcher.is_error():
            bits = np.zeros(self.vocab_size, dtype=bool)
            bits[self.eos] = True
        else:
            raw = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            bits = np.unpackbits(raw, bitorder="little")[: self.vocab_size].astype(bool)
        self.mask_seconds += time.perf_counter() - tic
        self.masks += 1
        return bits

    def apply(self, logits: mx.array) -> mx.array:
        """logits (..., V) with the tokens the grammar forbids at this position set to -inf."""
        bits = self.mask()
        if bits is None:
            return logits
        return mx.where(mx.array(bits[: logits.shape[-1]]), logits, -mx.inf)

    def verify(self, logits: mx.array, drafts: Sequence[int]) -> mx.array:
        """logits (k+1, V) of a verify forward over [y, d_1..d_k] (y already fed): row i masked as if
        d_1..d_i were accepted. Stops consuming at the first forbidden draft (it will be rejected, so
        the rows after it are never used); the grammar state is restored before returning."""
        state, fed, rows = self.free_until, 0, []
        for i in range(logits.shape[0]):
            rows.append(self.apply(logits[i: i + 1]))
            if i == len(drafts):
                break
            d = int(drafts[i])
            if not self.free and (self.matcher.is_stopped() or self.matcher.validate_tokens([d]) < 1):
                rows.extend(logits[j: j + 1] for j in range(i + 1, logits.shape[0]))
                break
            if not self.free:
                fed += 1
            self.feed(d)
        if fed:
            self.matcher.rollback(fed)
        self.free_until = state
        return mx.concatenate(rows)


def make_constraint(tokenizer, grammar: str, *, vocab_size: Optional[int], prompt_ids: Sequence[int] = (),
                    in_reasoning: Optional[bool] = None, answer: str = "") -> TokenConstraint:
    """A TokenConstraint for one sequence. Reasoning runs free first when `in_reasoning` (the prompt leaves
    the model inside `<think>`, as the reply's ReplyFormat says); None reads it off `prompt_ids`, the
    prompt's last few tokens. `vocab_size`: the model's logits width (None: the tokenizer's size).
    `answer`: the start of the answer the prompt already holds (chat prefix completion); the grammar
    continues from it. Raises ConstraintError for a grammar llguidance refuses
    or an `answer` it does not allow."""
    if tokenizer is None:
        raise ConstraintError("constrained decoding needs the model's tokenizer", keyword=None)
    check_grammar(grammar)
    vocab_size = vocab_size or len(tokenizer)
    llg = _llguidance()
    bridge = constraint_tokenizer(tokenizer, vocab_size)
    matcher = llg.LLMatcher(bridge, grammar)
    if matcher.is_error():
        raise ConstraintError(f"the grammar cannot be used: {matcher.get_error()}", keyword=None)
    if in_reasoning is None:
        in_reasoning = prompt_opens_reasoning(tokenizer, list(prompt_ids)[-4:])
    free = _think_end_id(tokenizer) if in_reasoning else None
    if answer and not in_reasoning:
        # The grammar lexes bytes, so the answer's own tokenization serves as well as the prompt's.
        if not matcher.consume_tokens(bridge.tokenize_str(answer)) or matcher.is_error():
            raise ConstraintError(f"the reply's given start {answer[:40]!r} does not follow the grammar",
                                  keyword=None)
    return TokenConstraint(matcher, vocab_size, bridge.eos_token, free_until=free)
