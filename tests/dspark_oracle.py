"""A stand-in for `DSparkDrafter.block_logits` in the DSpark cache tests: the real block runs (so the stages
run), but the logits name the plain run's next tokens for the first `accept(...)` slots and a wrong token
after them. `accept` is called with the block's first position P (by="position") or with how many blocks
were drafted before (by="count"); `starts` records each P, `accepted` each min(accept, k)."""

from __future__ import annotations

import mlx.core as mx


class BlockOracle:
    def __init__(self, real, seq, V, accept, *, by: str):
        self.real, self.seq, self.V, self.accept, self.by = real, seq, V, accept, by
        self.starts: list[int] = []
        self.accepted: list[int] = []

    def __call__(self, drafter, y, k):
        raw, x = self.real(drafter, y, k)
        P = drafter.entry.offset
        a = self.accept(P if self.by == "position" else len(self.accepted))
        self.starts.append(P)
        self.accepted.append(min(a, k))
        best = [self.seq[P + 1 + i] if P + 1 + i < len(self.seq) else 0 for i in range(k)]
        best = [b if i < a else (b + 1) % self.V for i, b in enumerate(best)]
        return (mx.eye(self.V)[mx.array(best)] * 1e4).astype(raw.dtype), x
