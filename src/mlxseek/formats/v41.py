"""DeepSeek-V4.1 (Flash): what DeepSeek's V4.1 encoder (`encoding/encoding.py` in the release, copied by
serving engines as `encoding_dsv41.py`) renders, re-implemented. V4.1 ships its own encoder; V4's is not it.

What differs from V4 (formats/v4.py), the rest (tool results merged into user turns, `latest_reminder`,
earlier reasoning kept when tools are given, the assistant prefix after a user turn) is V4's:
- a `<｜System｜>` token (id 128799 in V4.1's tokenizer) opens the first message when it is a system
  message or when the effort line is written, and a system message later in the conversation; such a later
  system message also counts as a user turn (it gets the assistant prefix when an assistant turn follows);
- the reasoning effort is a number, written in thinking mode only and always there: "Reasoning Effort: N
  (range 1-100, ...)", N an int in [1, 100] or low 50 / high 75 (the default) / max 100;
- DSML tag names carry a leading space: `<｜DSML｜ calls>`, `<｜DSML｜ invoke>`, `<｜DSML｜ parameter>`.
Evidence and goldens: tests/fixtures/make_chat_goldens.py V41_EVIDENCE.
"""

from __future__ import annotations

from ..errors import ChatFormatError
from .dsml import SPACED, to_json
from .tokens import DSML, SYSTEM, THINK_END, THINK_START
from .v4 import TOOLS_PROMPT, Dialect, prepare_turns, render_turns

BLOCK = " calls"
EFFORTS = {"low": 50, "high": 75, "max": 100}  # the released encoder's table (vLLM PR #58316 aligned to it)
DEFAULT_EFFORT = "high"
EFFORT_LINE = "Reasoning Effort: {} (range 1-100, the higher the value, the more thorough the reasoning)\n\n"
IMAGE_PLACEHOLDER = "<｜deepseek_image｜>"
DIALECT = Dialect(block=BLOCK, tags=SPACED, later_system=SYSTEM, later_system_asks=True)


def effort_budget(reasoning_effort: str | int | None) -> int:
    """The number the effort line carries; ChatFormatError for anything the encoder refuses."""
    effort = DEFAULT_EFFORT if reasoning_effort is None else reasoning_effort
    if type(effort) is int and 1 <= effort <= 100:
        return effort
    if isinstance(effort, str) and effort in EFFORTS:
        return EFFORTS[effort]
    raise ChatFormatError(f"reasoning_effort={reasoning_effort!r}: the v4.1 format takes an integer from 1 to 100 "
                          "or 'low' (50), 'high' (75, the default) or 'max' (100)", field="reasoning_effort")


def tools_prompt(functions: list[dict]) -> str:
    # V4's tool prompt text with V4.1's tag names (`<｜DSML｜ calls>`: the block name stands in for `tool_calls`)
    text = TOOLS_PROMPT.replace("{d}tool_calls", "{d}" + BLOCK).replace("{d}invoke", "{d}" + SPACED.invoke)
    text = text.replace("{d}parameter", "{d}" + SPACED.parameter)
    schemas = "\n".join(to_json(f) for f in functions)
    return text.format(d=DSML, ts=THINK_START, te=THINK_END, schemas=schemas)


def _check_no_image_token(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        for field in ("content", "reasoning_content"):
            if IMAGE_PLACEHOLDER in (m.get(field) or ""):
                raise ChatFormatError(f"messages[{i}].{field}: the text holds V4.1's image placeholder "
                                      f"{IMAGE_PLACEHOLDER}, which the encoder refuses; images are not supported",
                                      field=f"messages[{i}].{field}")


def render(messages: list[dict], *, tools: list[dict], thinking: bool, reasoning_effort: str | int | None) -> str:
    _check_no_image_token(messages)
    effort = EFFORT_LINE.format(effort_budget(reasoning_effort)) if thinking else ""
    turns = prepare_turns(messages, tools)
    # <｜System｜> opens the prompt when the first message is a system one or the effort line is written
    head = SYSTEM + effort if effort or (turns and turns[0]["role"] == "system") else ""
    return render_turns(turns, head=head, tools_text=tools_prompt(tools) if tools else "", thinking=thinking,
                        dialect=DIALECT)
