"""DeepSeek V4 (Flash / Pro): what DeepSeek's `encoding/encoding_dsv4.py` renders, re-implemented.

Differences from V3.2: tool results are merged into user turns as `<tool_result>...</tool_result>`
(consecutive user text and results joined by a blank line, results in call order); the `<｜Assistant｜>`
+ think token goes after a user turn only when an assistant turn (or the end) follows; a
`latest_reminder` role; `reasoning_effort="max"` prepends a fixed paragraph in thinking mode; when tools
are given, earlier reasoning is kept instead of dropped. Calls are DSML `tool_calls` blocks.

The 0731 encoder (V4-Flash-0731, V4-Pro-0813; style "v4-0731") differs only in the effort paragraph: three
tiers, "low" (the default) adds nothing, "high" gets the paragraph April's V4 used for "max", and "max" a
new, stronger one. Evidence: tests/fixtures/make_chat_goldens.py V4_0731_EVIDENCE.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dsml import PLAIN, Tags, encode_block, to_json
from .tokens import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    LATEST_REMINDER,
    THINK_END,
    THINK_START,
    USER,
)

ROLES = ("system", "user", "assistant", "tool", "latest_reminder")
REASONING_EFFORTS = (None, "high", "max")

REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

REASONING_EFFORTS_0731 = (None, "low", "high", "max")
# The 0731 encoder's effort paragraphs, written at the very start in thinking mode (None means "low").
EFFORT_PROMPTS_0731 = {
    "low": "",
    "high": REASONING_EFFORT_MAX,
    "max": (
        "Reasoning Effort: Beyond maximum \u2014 exhaustive, relentless, and uncompromising.\n"
        "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: exhaustively "
        "decompose the problem into its most fundamental components, trace every causal chain to its root, and "
        "resolve the underlying cause rather than any surface symptom.\n"
        "Do not stop reasoning until you have independently verified the solution from multiple angles and are "
        "certain that no assumption remains unchecked and no error remains undiscovered.\n\n"
    ),
}


def effort_prompt(reasoning_effort: str | None, *, v0731: bool) -> str:
    """The paragraph that opens a thinking-mode prompt for this effort (April V4 or the 0731 encoder)."""
    if v0731:
        return EFFORT_PROMPTS_0731[reasoning_effort or "low"]
    return REASONING_EFFORT_MAX if reasoning_effort == "max" else ""


TOOLS_PROMPT = """## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{d}tool_calls>" block like the following:

<{d}tool_calls>
<{d}invoke name="$TOOL_NAME">
<{d}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{d}parameter>
...
</{d}invoke>
<{d}invoke name="$TOOL_NAME2">
...
</{d}invoke>
</{d}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {ts}), you MUST output your complete reasoning inside {ts}...{te} BEFORE any tool calls or final response.

Otherwise, output directly after {te} with tool calls or final response.

### Available Tool Schemas

{schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""


def tools_prompt(functions: list[dict]) -> str:
    schemas = "\n".join(to_json(f) for f in functions)
    return TOOLS_PROMPT.format(d=DSML, ts=THINK_START, te=THINK_END, schemas=schemas)


def merge_turns(messages: list[dict]) -> list[dict]:
    """Tool results and user text that follow each other become one user turn of parts."""
    turns: list[dict] = []
    order: dict[str, int] = {}
    for m in messages:
        if m["role"] in ("user", "tool"):
            part = (m["content"], None) if m["role"] == "user" else (m["content"], m["tool_call_id"])
            if turns and turns[-1]["role"] == "user":
                turns[-1]["parts"].append(part)
            else:
                turns.append({"role": "user", "parts": [part], "order": order})
        else:
            turns.append(dict(m))
            if m["role"] == "assistant" and m["tool_calls"]:
                order = {c["id"]: k for k, c in enumerate(m["tool_calls"]) if c["id"]}
    for t in turns:
        if t["role"] == "user":
            t["parts"] = _results_in_call_order(t["parts"], t.pop("order"))
    return turns


def _results_in_call_order(parts: list[tuple], order: dict[str, int]) -> list[tuple]:
    results = [p for p in parts if p[1] is not None]
    if len(results) < 2 or not order:
        return parts
    ranked = iter(sorted(results, key=lambda p: order.get(p[1], 0)))
    return [next(ranked) if p[1] is not None else p for p in parts]


def _user(parts: list[tuple]) -> str:
    return USER + "\n\n".join(text if call_id is None else f"<tool_result>{text}</tool_result>"
                              for text, call_id in parts)


@dataclass(frozen=True)
class Dialect:
    """What a V4-family encoder changes in V4's per-message loop (V4.1's: formats/v41.py)."""

    block: str = "tool_calls"  # the DSML block name around an assistant's calls
    tags: Tags = PLAIN  # DSML tag names (V4.1 spaces them)
    later_system: str = ""  # opens a system message after the first (V4.1: <｜System｜>)
    later_system_asks: bool = False  # such a message counts as a user turn (gets the assistant prefix)


V4_DIALECT = Dialect()


def prepare_turns(messages: list[dict], tools: list[dict]) -> list[dict]:
    """merge_turns, plus the empty system turn the encoders open with when tools are given and none is."""
    turns = merge_turns(messages)
    if tools and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": ""})
    return turns


def render_turns(turns: list[dict], *, head: str, tools_text: str, thinking: bool,
                 dialect: Dialect = V4_DIALECT) -> str:
    """The prompt after BOS: `head` before the first turn, `tools_text` after the first system message."""
    keep_reasoning = bool(tools_text)  # the encoder stops dropping earlier reasoning when tools are present
    asks = [t["role"] == "user" or (dialect.later_system_asks and t["role"] == "system" and i > 0)
            for i, t in enumerate(turns)]
    last_user = max((i for i, a in enumerate(asks) if a), default=-1)
    out = [BOS]
    for i, t in enumerate(turns):
        if i == 0:
            out.append(head)
        role = t["role"]
        if role == "system":
            out.append((dialect.later_system if i > 0 else "") + t["content"]
                       + ("\n\n" + tools_text if tools_text and i == 0 else ""))
        elif role == "user":
            out.append(_user(t["parts"]))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + t["content"])
        else:
            reasoning = ""
            if thinking and (keep_reasoning or i > last_user):
                reasoning = (t["reasoning_content"] or "") + THINK_END
            calls = encode_block(t["tool_calls"], dialect.block, dialect.tags) if t["tool_calls"] else ""
            out.append(reasoning + (t["content"] or "") + calls + EOS)
        nxt = turns[i + 1]["role"] if i + 1 < len(turns) else None
        if asks[i] and nxt in (None, "assistant", "latest_reminder"):
            opens = thinking and (keep_reasoning or i >= last_user)
            out.append(ASSISTANT + (THINK_START if opens else THINK_END))
    return "".join(out)


def render(messages: list[dict], *, tools: list[dict], thinking: bool, reasoning_effort: str | None,
           v0731: bool = False) -> str:
    head = effort_prompt(reasoning_effort, v0731=v0731) if thinking else ""
    return render_turns(prepare_turns(messages, tools), head=head, tools_text=tools_prompt(tools) if tools else "",
                        thinking=thinking)
