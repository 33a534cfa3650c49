"""R1-style reasoning: split streamed text into (reasoning, content) at `<think>` ... `</think>`."""

from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (could still become it)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningSplitter:
    """Splits streamed text into (reasoning, content) deltas at R1's `<think>` ... `</think>` tags.

    Tags may arrive split across deltas: a possible partial tag is held back until it resolves.
    `in_reasoning=True` starts inside a think block (R1 prompts that end with `<think>\\n`).
    """

    def __init__(self, in_reasoning: bool = False):
        self.in_reasoning = in_reasoning
        self._buf = ""
        self._fresh = in_reasoning  # strip the newlines R1 writes right after a tag

    def _emit(self, text: str, out: list[str]) -> None:
        if self._fresh:
            text = text.lstrip("\n")
            self._fresh = not text
        out[0 if self.in_reasoning else 1] += text

    def feed(self, text: str) -> tuple[str, str]:
        out = ["", ""]
        self._buf += text
        while True:
            tag = THINK_END if self.in_reasoning else THINK_START
            i = self._buf.find(tag)
            if i < 0:
                break
            self._emit(self._buf[:i], out)
            self._buf = self._buf[i + len(tag):]
            self.in_reasoning, self._fresh = not self.in_reasoning, True
        keep = held_prefix(self._buf, THINK_END if self.in_reasoning else THINK_START)
        self._emit(self._buf[: len(self._buf) - keep], out)
        self._buf = self._buf[len(self._buf) - keep:]
        return out[0], out[1]

    def flush(self) -> tuple[str, str]:
        out = ["", ""]
        self._emit(self._buf, out)
        self._buf = ""
        return out[0], out[1]


def split_reasoning(text: str, *, in_reasoning: bool = False) -> tuple[str, str]:
    """Whole-text version of ReasoningSplitter: returns (reasoning, content)."""
    s = ReasoningSplitter(in_reasoning)
    r1, c1 = s.feed(text)
    r2, c2 = s.flush()
    return r1 + r2, c1 + c2


def prompt_opens_reasoning(tokenizer, prompt_ids: list[int]) -> bool:
    """True when the prompt ends inside an unclosed `<think>` (R1's template adds `<think>\\n`)."""
    # mlx-lm's wrapper finds the single-token think tags once, at load.
    start = getattr(tokenizer, "think_start_tokens", None)
    end = getattr(tokenizer, "think_end_tokens", None)
    if not start or len(start) != 1 or not end or len(end) != 1:
        return False
    tail = list(prompt_ids[-4:])  # the tag, plus at most a few newline tokens after it
    if start[0] not in tail:
        return False
    after = tail[len(tail) - 1 - tail[::-1].index(start[0]):]
    return end[0] not in after
