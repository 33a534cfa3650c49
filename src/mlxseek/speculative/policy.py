"""Counters and the draft="auto" decision, kept apart: `DraftStats` only counts what happened,
`DraftPolicy` decides whether drafting goes on (from measured costs and the acceptance so far)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .costs import DraftCosts

AUTO_MIN_SPEEDUP = 1.05  # draft="auto" drafts only while the expected speedup exceeds this
AUTO_WARMUP_STEPS = 8  # verify steps before "auto" judges the measured acceptance
# draft="auto" in "acceptance" mode (the GPU policy's, mlxseek.backend): a verify step of a few tokens costs
# about one decode step on a bandwidth-bound device, plus the MTP block's step (one layer of ~40-60 and
# its dispatches), so drafting pays while more than about one step in ten gains a token.
AUTO_MIN_TOKENS_PER_STEP = 1.1


@dataclass
class DraftStats:
    """Counters of one speculative generation. A verify step is one main-model decode forward."""

    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_steps: int = 0
    first_drafts: int = 0  # steps that drafted at least one token
    first_accepted: int = 0  # ... whose first draft was accepted
    confidence_cuts: int = 0  # proposals a drafter's confidence head cut short (DSpark)
    position_drafts: list = field(default_factory=list)  # [i]: steps that drafted an (i+1)-th token
    position_accepted: list = field(default_factory=list)  # [i]: ... whose first i+1 drafts were all accepted

    def count_positions(self, k: int, a: int) -> None:
        """One verify of k drafts of which the first a were accepted."""
        grow = k - len(self.position_drafts)
        if grow > 0:
            self.position_drafts += [0] * grow
            self.position_accepted += [0] * grow
        for i in range(k):
            self.position_drafts[i] += 1
            self.position_accepted[i] += i < a

    @property
    def acceptance_by_position(self) -> list[float]:
        """[i]: the share of blocks with an (i+1)-th draft whose first i+1 drafts were all accepted (vLLM's
        per-position acceptance: it falls with i, and sums to the mean accepted length at full blocks)."""
        return [acc / n if n else 0.0 for acc, n in zip(self.position_accepted, self.position_drafts)]

    @property
    def mean_accepted(self) -> float:
        """Drafts accepted per verify step that drafted (the mean accepted length)."""
        return self.accepted_tokens / self.first_drafts if self.first_drafts else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def first_acceptance_rate(self) -> float:
        return self.first_accepted / self.first_drafts if self.first_drafts else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens emitted per verify step (the verified token counted): 1.0 without drafting."""
        return (self.accepted_tokens + self.verify_steps) / self.verify_steps if self.verify_steps else 0.0


@dataclass
class DraftPolicy:
    """Whether to draft. draft="mtp" always drafts; "auto" (`auto=True`) in `mode` "measure" drafts while
    the expected speedup, from the measured step costs and the observed tokens per step, exceeds
    `min_speedup`; in mode "acceptance" it skips the timing and drafts while the observed tokens per step
    exceed `min_tokens_per_step`. mode None: the model's backend policy (`mlxseek.backend`) decides."""

    auto: bool = False
    mode: Optional[str] = None  # "measure" | "acceptance" | None (the backend policy's draft_auto)
    min_tokens_per_step: float = AUTO_MIN_TOKENS_PER_STEP
    min_speedup: float = AUTO_MIN_SPEEDUP
    warmup_steps: int = AUTO_WARMUP_STEPS
    drafting: bool = True  # False once "auto" turned drafting off
    costs: Optional[DraftCosts] = None
    expected_speedup: Optional[float] = None  # "auto": its latest estimate

    def calibrate(self, costs: DraftCosts, num_draft: int) -> None:
        """Before decoding: if even perfect drafts would not pay on this device, never draft."""
        self.costs = costs
        best = costs.speedup(num_draft + 1.0, num_draft)  # every draft accepted
        if self.expected_speedup is None or best <= self.min_speedup:
            self.expected_speedup = best
        if best <= self.min_speedup:
            self.drafting = False

    def judge(self, stats: DraftStats, draft_wall_s: float, draft_steps: int) -> None:
        """After each drafting step: compare what drafting achieves (tokens per step over the wall time of
        a drafting step, which also counts the loop's own overhead) with a plain step's measured cost."""
        if not self.auto or draft_steps < self.warmup_steps:
            return
        if self.mode == "acceptance":  # no timing: a verify step is taken to cost one decode step
            self.expected_speedup = stats.tokens_per_step
            if stats.tokens_per_step <= self.min_tokens_per_step:
                self.drafting = False
            return
        if self.costs is None:
            return
        self.expected_speedup = stats.tokens_per_step * self.costs.step_s / (draft_wall_s / draft_steps)
        if self.expected_speedup <= self.min_speedup:
            self.drafting = False
