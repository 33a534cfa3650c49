"""Tool calls and reasoning through the SDKs, for the v3, v3.1, v3.2 and v4 chat formats: a scripted test
model (it writes a fixed reply, token by token, through the real DeepSeek tokenizer) behind the real engine
and a live server. The OpenAI SDK must receive `tool_calls` and `reasoning_content`, the Anthropic SDK
`tool_use` and `thinking` blocks, streamed and not."""

import json
from types import SimpleNamespace

import anthropic
import openai
import pytest
from scripted_model import ScriptedModel
from serve_helpers import deadline, running_server

MODEL_ID = "scripted"
TIMEOUT = 60
REASONING = "The user wants the weather in Paris."
CONTENT = "Checking the forecast."
CALLS_V3 = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
            '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
CALLS_V31 = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}'
             "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def _dsml(block: str) -> str:
    return (f'\n\n<｜DSML｜{block}>\n<｜DSML｜invoke name="get_weather">\n'
            '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
            f"</｜DSML｜invoke>\n</｜DSML｜{block}>")


# style -> (the reply the model writes after the generation prompt, whether it reasons)
REPLIES = {
    "v3": (CONTENT + CALLS_V3, False),
    "v3.1": (REASONING + "</think>" + CONTENT + CALLS_V31, True),
    "v3.2": (REASONING + "</think>" + CONTENT + _dsml("function_calls"), True),
    "v4": (REASONING + "</think>" + CONTENT + _dsml("tool_calls"), True),
}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather for a city",
                  "input_schema": TOOL["function"]["parameters"]}
# a finished tool round first, so the history's tool_calls / tool results render too
HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What time is it in Tokyo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Tokyo"}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "09:00"},
    {"role": "assistant", "content": "It is 09:00 in Tokyo."},
    {"role": "user", "content": "And the weather in Paris?"},
]
ANTHROPIC_HISTORY = [
    {"role": "user", "content": "What time is it in Tokyo?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_0", "name": "get_time",
                                       "input": {"city": "Tokyo"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "09:00"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "It is 09:00 in Tokyo."}]},
    {"role": "user", "content": "And the weather in Paris?"},
]


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(600):
        yield


def scripted_server(style: str, tokenizer):
    """A live server whose model writes REPLIES[style] (then EOS) for the next request."""
    text, _ = REPLIES[style]
    ids = tokenizer.encode(text, add_special_tokens=False)
    model = ScriptedModel(ids, len(tokenizer.get_vocab()))
    # the engine reads the context length and vocabulary off config and fingerprints the weights
    if getattr(model, "config", None) is None:
        model.config = SimpleNamespace(max_position_embeddings=4096, vocab_size=len(tokenizer.get_vocab()),
                                       model_type="deepseek_v3")
    if not hasattr(model, "parameters"):
        model.parameters = dict
    return running_server(model, tokenizer, model_id=MODEL_ID, chat_style=style, prompt_cache_bytes=0)


def openai_client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def anthropic_client(srv):
    return anthropic.Anthropic(base_url=srv.url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def thinking_body(style: str) -> dict:
    # both switches: DeepSeek's `thinking` field, and chat_template_kwargs as vLLM/SGLang clients send it
    if not REPLIES[style][1]:
        return {}
    return {"chat_template_kwargs": {"thinking": True}} if style == "v3.1" else {"thinking": {"type": "enabled"}}


def check_call(name: str, arguments) -> None:
    assert name == "get_weather"
    assert (json.loads(arguments) if isinstance(arguments, str) else arguments) == {"city": "Paris"}


STYLES = list(REPLIES)


@pytest.mark.parametrize("style", STYLES)
def test_openai_tool_call_and_reasoning(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        r = openai_client(srv).chat.completions.create(model=MODEL_ID, messages=HISTORY, tools=[TOOL],
                                                       tool_choice="auto", max_tokens=200,
                                                       extra_body=thinking_body(style))
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    check_call(call.function.name, call.function.arguments)
    assert (choice.message.content or "").strip() == CONTENT
    reasoning = getattr(choice.message, "reasoning_content", None)
    assert (reasoning or None) == (REASONING if REPLIES[style][1] else None)


@pytest.mark.parametrize("style", STYLES)
def test_openai_streamed_tool_call_and_reasoning(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        stream = openai_client(srv).chat.completions.create(
            model=MODEL_ID, messages=HISTORY, tools=[TOOL], max_tokens=200, stream=True,
            extra_body=thinking_body(style))
        reasoning, content, calls, finish = [], [], [], None
        for chunk in stream:
            for c in chunk.choices:
                reasoning.append(getattr(c.delta, "reasoning_content", None) or "")
                content.append(c.delta.content or "")
                calls += c.delta.tool_calls or []
                finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert [c.index for c in calls] == [0]
    check_call(calls[0].function.name, calls[0].function.arguments)
    assert calls[0].id
    assert "".join(content).strip() == CONTENT
    assert "".join(reasoning) == (REASONING if REPLIES[style][1] else "")


def anthropic_kwargs(style: str) -> dict:
    kw = {"model": MODEL_ID, "system": "You are a helpful assistant.", "messages": ANTHROPIC_HISTORY,
          "tools": [ANTHROPIC_TOOL], "max_tokens": 200}
    if REPLIES[style][1]:
        kw["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    return kw


def check_blocks(style: str, message) -> None:
    want = (["thinking"] if REPLIES[style][1] else []) + ["text", "tool_use"]
    assert [b.type for b in message.content] == want
    if REPLIES[style][1]:
        assert message.content[0].thinking == REASONING
    assert message.content[-2].text.strip() == CONTENT
    use = message.content[-1]
    assert use.id
    check_call(use.name, use.input)
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("style", STYLES)
def test_anthropic_tool_use_and_thinking(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        check_blocks(style, anthropic_client(srv).messages.create(**anthropic_kwargs(style)))


@pytest.mark.parametrize("style", STYLES)
def test_anthropic_streamed_tool_use_and_thinking(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        starts = []
        with anthropic_client(srv).messages.stream(**anthropic_kwargs(style)) as stream:
            for event in stream:
                if event.type == "content_block_start":
                    starts.append(event.content_block.type)
            final = stream.get_final_message()
    assert starts == [b.type for b in final.content]
    check_blocks(style, final)


@pytest.mark.parametrize("style", ["v3.2", "v4"])
def test_thinking_disabled_keeps_reasoning_out(style, tokenizer):
    """With thinking off the prompt does not open a reasoning block, so the scripted text is all content
    (its `</think>` included): nothing may come back as reasoning_content."""
    with scripted_server(style, tokenizer) as (srv, _):
        r = openai_client(srv).chat.completions.create(model=MODEL_ID, messages=HISTORY, max_tokens=200,
                                                       extra_body={"thinking": {"type": "disabled"}})
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    assert REASONING in (r.choices[0].message.content or "")
