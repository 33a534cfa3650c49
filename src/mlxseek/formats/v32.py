"""DeepSeek V3.2: what DeepSeek's `encoding/encoding_dsv32.py` renders, re-implemented.

Each user turn ends with `<｜Assistant｜>` plus `<think>` (the last user turn, thinking mode) or `</think>`;
tool results follow the calling turn as `<function_results><result>...</result></function_results>`;
tool schemas are rendered into the system prompt (mlxseek puts `tools` on the first system message,
adding an empty one when there is none). In thinking mode the reasoning of turns before the last user
message is dropped and the turns after it carry `reasoning</think>`.
"""

from __future__ import annotations

from ..errors import ChatFormatError
from .dsml import encode_block, to_json
from .tokens import ASSISTANT, BOS, DSML, EOS, THINK_END, THINK_START, USER

# The paragraph breaks follow DeepSeek's current encoding_dsv32.py; tests/fixtures/make_chat_goldens.py
# lists the copies that show them (vLLM's and SGLang's copies lack them).
TOOLS_PROMPT = """## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{d}function_calls>" block like the following as part of your reply to the user:
<{d}function_calls>
<{d}invoke name="$FUNCTION_NAME">
<{d}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{d}parameter>
...
</{d}invoke>
<{d}invoke name="$FUNCTION_NAME2">
...
</{d}invoke>
</{d}function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<{d}function_calls>
...
</{d}function_calls>

<function_results>
...
</function_results>

{ts}...thinking about results{te}

Here are the functions available in JSONSchema format:
<functions>
{schemas}
</functions>
"""


def tools_prompt(functions: list[dict]) -> str:
    schemas = "\n".join(to_json(f) for f in functions)
    return TOOLS_PROMPT.format(d=DSML, ts=THINK_START, te=THINK_END, schemas=schemas)


def last_user_index(messages: list[dict]) -> int:
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)


def _assistant(m: dict, i: int, after_last_user: bool, thinking: bool) -> str:
    reasoning = ""
    if thinking and after_last_user:
        if not (m["reasoning_content"] or m["tool_calls"]):
            raise ChatFormatError(f"messages[{i}].reasoning_content is missing: in thinking mode an assistant "
                                  "turn after the last user message needs its reasoning or tool calls",
                                  field=f"messages[{i}].reasoning_content")
        reasoning = (m["reasoning_content"] or "") + THINK_END
    calls = encode_block(m["tool_calls"], "function_calls") if m["tool_calls"] else ""
    return reasoning + (m["content"] or "") + calls + EOS


def render(messages: list[dict], *, tools: list[dict], thinking: bool) -> str:
    last_user = last_user_index(messages)
    out = [BOS]
    calls_left, n_calls = 0, 0
    if tools and (not messages or messages[0]["role"] != "system"):
        out.append("\n\n" + tools_prompt(tools))  # an empty system message carries them
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            out.append(m["content"])
            if tools and i == 0:
                out.append("\n\n" + tools_prompt(tools))
        elif role == "user":
            out.append(USER + m["content"] + ASSISTANT)
            out.append(THINK_START if thinking and i == last_user else THINK_END)
        elif role == "assistant":
            out.append(_assistant(m, i, i > last_user, thinking))
            n_calls = calls_left = len(m["tool_calls"] or [])
        elif role == "tool":
            out.append(("\n\n<function_results>" if calls_left == n_calls else "") + f"\n<result>{m['content']}</result>")
            calls_left -= 1
            if calls_left == 0:
                out.append("\n</function_results>\n\n" + (THINK_START if thinking and i >= last_user else THINK_END))
    return "".join(out)
