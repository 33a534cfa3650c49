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
from .dsml import SPACED, encode_block, to_json
from .tokens import ASSISTANT, BOS, DSML, EOS, LATEST_REMINDER, SYSTEM, THINK_END, THINK_START
from .v4 import TOOLS_PROMPT, _user, merge_turns

BLOCK = " calls"
EFFORTS = {"low": 50, "high": 75, "max": 100}  # the released encoder's table (vLLM PR #58316 aligned to it)
DEFAULT_EFFORT = "high"
EFFORT_LINE = "Reasoning Effort: {} (range 1-100, the higher the value, the more thorough the reasoning)\n\n"
IMAGE_PLACEHOLDER = "<｜deepseek_image｜>"


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
    turns = merge_turns(messages)
    if tools and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": ""})
    keep_reasoning = bool(tools)  # the encoder stops dropping earlier reasoning when tools are present
    asks = [t["role"] == "user" or (t["role"] == "system" and i > 0) for i, t in enumerate(turns)]
    last_user = max((i for i, a in enumerate(asks) if a), default=-1)
    out = [BOS]
    for i, t in enumerate(turns):
        role = t["role"]
        if i == 0 and (effort or role == "system"):
            out.append(SYSTEM + effort)
        if role == "system":
            out.append((SYSTEM if i > 0 else "") + t["content"]
                       + ("\n\n" + tools_prompt(tools) if tools and i == 0 else ""))
        elif role == "user":
            out.append(_user(t["parts"]))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + t["content"])
        else:
            reasoning = ""
            if thinking and (keep_reasoning or i > last_user):
                reasoning = (t["reasoning_content"] or "") + THINK_END
            calls = encode_block(t["tool_calls"], BLOCK, SPACED) if t["tool_calls"] else ""
            out.append(reasoning + (t["content"] or "") + calls + EOS)
        nxt = turns[i + 1]["role"] if i + 1 < len(turns) else None
        if asks[i] and nxt in (None, "assistant", "latest_reminder"):
            opens = thinking and (keep_reasoning or i >= last_user)
            out.append(ASSISTANT + (THINK_START if opens else THINK_END))
    return "".join(out)
