"""The incremental reply parser: streamed text in, reasoning / content / complete tool-call deltas out.

A possible partial marker at the end of the text seen so far (a special token split across deltas, or the
blank line that may start a DSML block) is held back until it resolves, so any split of a reply gives the
same result as parsing it whole. A tool call is emitted once its end tag arrives; one that does not decode
(bad markup, arguments that are not JSON, an unknown tool name) or a block left unclosed keeps its text
in `content` and sets `reply.malformed`.
"""

from __future__ import annotations

import uuid

from .grammar import GRAMMARS
from .messages import tool_functions
from .reply import Reply, ReplyDelta, ReplyFormat, ToolCall
from .style import check_style
from .tokens import SPECIAL_TEXTS, THINK_END, THINK_START

REASONING, CONTENT, BLOCK = "reasoning", "content", "block"


def held_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for tag in markers:
        for k in range(min(len(text), len(tag) - 1), best, -1):
            if tag.startswith(text[-k:]):
                best = k
                break
    return best


def _earliest(text: str, markers: tuple[str, ...]) -> tuple[int, str]:
    hits = [(i, m) for m in markers if (i := text.find(m)) >= 0]
    return min(hits, key=lambda h: (h[0], -len(h[1]))) if hits else (-1, "")


class ReplyParser:
    """Parses one reply of `style` as it streams. `thinking=True`: the reply starts inside reasoning
    (the prompt ended with `<think>`). `tools` (OpenAI schemas): calls to other names are malformed.
    `id_prefix`: tool call ids are id_prefix + index (default: a random prefix per reply).
    `continuation=True`: the prompt ended with text of the reply itself (chat prefix completion), so the
    start of the text is not a fresh start: no leading newline is dropped and no `<think>` is looked for."""

    def __init__(self, style: str, *, thinking: bool, tools: list[dict] | None = None,
                 id_prefix: str | None = None, continuation: bool = False):
        self._g = GRAMMARS[check_style(style)]
        self._state = REASONING if thinking and self._g.has_reasoning else CONTENT
        self._names = {f["name"] for f in tool_functions(tools)} if tools else None
        self._prefix = id_prefix if id_prefix is not None else f"call_{uuid.uuid4().hex[:12]}_"
        self._buf, self._fresh = "", not continuation
        # whether the start of the reply has been looked at
        self._started = self._state == REASONING or continuation
        self._opener, self._block_bad, self._block_calls = "", False, 0
        self.reply = Reply()

    @classmethod
    def of(cls, fmt: ReplyFormat) -> "ReplyParser":
        """The parser of a reply in format `fmt`."""
        return cls(fmt.style, thinking=fmt.thinking, tools=fmt.tools, continuation=fmt.continuation)

    def feed(self, delta: str) -> ReplyDelta:
        """Parse the next piece of text; returns what it completes."""
        out = ReplyDelta()
        self._buf += delta
        self._run(out, final=False)
        return out

    def finish(self) -> ReplyDelta:
        """End of stream: flushes held-back text (an unclosed tool-call block becomes content)."""
        out = ReplyDelta()
        self._run(out, final=True)
        return out

    def _emit(self, out: ReplyDelta, text: str, kind: str) -> None:
        if self._fresh and self._g.strip_newlines:
            text = text.lstrip("\n")
        if not text:
            return
        self._fresh = False
        if kind == REASONING:
            out.reasoning += text
            self.reply.reasoning += text
        else:
            out.content += text
            self.reply.content += text

    def _keep(self, out: ReplyDelta, markers: tuple[str, ...], kind: str, final: bool) -> None:
        keep = 0 if final else held_prefix(self._buf, markers)
        self._emit(out, self._buf[: len(self._buf) - keep], kind)
        self._buf = self._buf[len(self._buf) - keep:]

    def _run(self, out: ReplyDelta, *, final: bool) -> None:
        while True:
            if self._state == REASONING:
                if self._fresh and not self._skip_think_start(final):
                    return
                i = self._buf.find(THINK_END)
                if i < 0:
                    return self._keep(out, (THINK_END,) + SPECIAL_TEXTS, REASONING, final)
                self._emit(out, self._buf[:i], REASONING)
                self._buf, self._state, self._fresh = self._buf[i + len(THINK_END):], CONTENT, True
            elif self._state == CONTENT:
                if not self._started:
                    opened = self._opens_own_reasoning(final)
                    if opened is None:
                        return
                    self._started = True
                    if opened:
                        continue
                i, opener = _earliest(self._buf, self._g.block_open)
                if i < 0:
                    return self._keep(out, self._g.block_open + SPECIAL_TEXTS, CONTENT, final)
                self._emit(out, self._buf[:i], CONTENT)
                self._buf, self._state = self._buf[i + len(opener):], BLOCK
                self._opener, self._block_bad, self._block_calls = opener, False, 0
            elif not self._block_step(out, final):
                return

    def _opens_own_reasoning(self, final: bool) -> bool | None:
        """A reply whose prompt did not open reasoning may open it itself with `<think>` (R1 distills do).
        None: too little text yet to tell."""
        rest = self._buf.lstrip("\n")
        if self._g.has_reasoning and rest.startswith(THINK_START):
            self._buf, self._state, self._fresh = rest[len(THINK_START):], REASONING, True
            return True
        if self._g.has_reasoning and THINK_START.startswith(rest) and not final:
            return None
        return False

    def _skip_think_start(self, final: bool) -> bool:
        """A reply may repeat the `<think>` its prompt ended with; drop it. False: wait for more text."""
        rest = self._buf.lstrip("\n")
        if rest.startswith(THINK_START):
            self._buf = rest[len(THINK_START):]
        elif THINK_START.startswith(rest) and not final:
            return False
        return True

    def _block_step(self, out: ReplyDelta, final: bool) -> bool:
        g = self._g
        i, tag = _earliest(self._buf, (g.call_end, g.block_end))
        if i < 0:
            if final:  # unclosed block: keep its text (a bare opener too, unless calls came out of it)
                if self._buf.strip() or not self._block_calls:
                    self._bad(out, self._buf)
                self.reply.malformed = True
                self._buf, self._state = "", CONTENT
            return False
        text, self._buf = self._buf[:i], self._buf[i + len(tag):]
        if tag == g.call_end:
            self._call(out, text)
            return True
        if text.strip():
            self._bad(out, text + tag)
        elif self._block_bad:
            self._emit(out, text + tag, CONTENT)
        self._state = CONTENT
        return True

    def _call(self, out: ReplyDelta, text: str) -> None:
        decoded = self._g.decode(text)
        if decoded is None or (self._names is not None and decoded[0] not in self._names):
            return self._bad(out, text + self._g.call_end)
        call = ToolCall(id=f"{self._prefix}{len(self.reply.tool_calls)}", name=decoded[0], arguments=decoded[1])
        out.tool_calls.append(call)
        self.reply.tool_calls.append(call)
        self._block_calls += 1

    def _bad(self, out: ReplyDelta, text: str) -> None:
        self.reply.malformed = True
        self._emit(out, self._opener + text, CONTENT)
        self._opener, self._block_bad = "", True


def parse_reply(text: str, *, style: str, thinking: bool = False, tools: list[dict] | None = None,
                id_prefix: str | None = None) -> Reply:
    """Parse a whole reply (see ReplyParser)."""
    parser = ReplyParser(style, thinking=thinking, tools=tools, id_prefix=id_prefix)
    parser.feed(text)
    parser.finish()
    return parser.reply
