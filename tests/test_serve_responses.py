"""The OpenAI Responses API (POST /v1/responses) through the official openai SDK: plain and streamed replies,
function calls and their outputs, reasoning, stored conversations, the streaming event sequence, and the
same prompt tokens and reply as the chat endpoint for the same conversation."""

import json

import httpx
import openai
import pytest
from scripted_model import ScriptedModel, servable
from serve_helpers import deadline, running_server
from test_serve_tools import CONTENT, HISTORY, REASONING, REPLIES, TOOL, check_call, scripted_server

from mlxseek.serve.responses.convert import to_messages

MODEL_ID = "scripted"
TIMEOUT = 60
FUNCTION_TOOL = {"type": "function", **TOOL["function"]}
# HISTORY (the chat endpoint's messages) as Responses input items
INPUT = [
    {"role": "user", "content": "What time is it in Tokyo?"},
    {"type": "function_call", "call_id": "call_0", "name": "get_time", "arguments": '{"city": "Tokyo"}'},
    {"type": "function_call_output", "call_id": "call_0", "output": "09:00"},
    {"role": "assistant", "content": [{"type": "output_text", "text": "It is 09:00 in Tokyo."}]},
    {"role": "user", "content": [{"type": "input_text", "text": "And the weather in Paris?"}]},
]
INSTRUCTIONS = HISTORY[0]["content"]
STYLES = list(REPLIES)


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(600):
        yield


def client_of(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def effort(style: str) -> dict:
    return {"reasoning": {"effort": "high"}} if REPLIES[style][1] else {}


def test_input_items_map_to_the_chat_messages():
    assert to_messages(INPUT) == HISTORY[1:]


@pytest.mark.parametrize("style", STYLES)
def test_function_call_and_reasoning(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        r = client_of(srv).responses.create(model=MODEL_ID, instructions=INSTRUCTIONS, input=INPUT,
                                            tools=[FUNCTION_TOOL, {"type": "web_search"}], max_output_tokens=200,
                                            store=False, **effort(style))
    assert r.status == "completed"
    kinds = [item.type for item in r.output]
    assert kinds == (["reasoning"] if REPLIES[style][1] else []) + ["message", "function_call"]
    call = r.output[-1]
    assert call.call_id and call.id != call.call_id
    check_call(call.name, call.arguments)
    assert r.output_text.strip() == CONTENT
    if REPLIES[style][1]:
        assert r.output[0].content[0].text == REASONING
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


@pytest.mark.parametrize("style", STYLES)
def test_streamed_event_sequence(style, tokenizer):
    with scripted_server(style, tokenizer) as (srv, _):
        with client_of(srv).responses.stream(model=MODEL_ID, instructions=INSTRUCTIONS, input=INPUT,
                                             tools=[FUNCTION_TOOL], store=False, **effort(style)) as stream:
            events = list(stream)
            final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed" and types.count("response.completed") == 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == len(final.output)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.strip() == CONTENT
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == (REASONING if REPLIES[style][1] else "")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    check_call("get_weather", args)
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.model_dump(exclude_none=True) for i in done] == [
        i.model_dump(exclude_none=True) for i in final.output]
    assert events[-1].response.usage.output_tokens > 0


def test_same_prompt_and_reply_as_the_chat_endpoint(tokenizer):
    with scripted_server("v3.1", tokenizer) as (srv, _):
        client = client_of(srv)
        chat = client.chat.completions.create(model=MODEL_ID, messages=HISTORY, tools=[TOOL], max_tokens=200,
                                              extra_body={"thinking": {"type": "enabled"}})
        resp = client.responses.create(model=MODEL_ID, instructions=INSTRUCTIONS, input=INPUT, tools=[FUNCTION_TOOL],
                                       max_output_tokens=200, reasoning={"effort": "medium"})
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.usage.output_tokens == chat.usage.completion_tokens
    message = chat.choices[0].message
    assert resp.output_text == message.content
    assert resp.output[0].content[0].text == message.reasoning_content
    assert (resp.output[-1].name, resp.output[-1].arguments) == (message.tool_calls[0].function.name,
                                                                 message.tool_calls[0].function.arguments)


def test_function_call_output_round_trip_through_the_store(tokenizer):
    with scripted_server("v3.1", tokenizer) as (srv, _):
        client = client_of(srv)
        first = client.responses.create(model=MODEL_ID, input=INPUT[:1], tools=[FUNCTION_TOOL])
        call = first.output[-1]
        result = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        chained = client.responses.create(model=MODEL_ID, input=result, previous_response_id=first.id,
                                          tools=[FUNCTION_TOOL])
        # the same conversation sent whole, without the store
        whole = client.responses.create(model=MODEL_ID, input=INPUT[:1] + [i.model_dump() for i in first.output]
                                        + result, tools=[FUNCTION_TOOL], store=False)
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL_ID, input="hi", previous_response_id="resp_unknown")
    assert chained.usage.input_tokens == whole.usage.input_tokens > first.usage.input_tokens
    assert e.value.body["param"] == "previous_response_id"


def test_length_cut_is_incomplete_and_plain_string_input(tokenizer):
    with scripted_server("v3", tokenizer) as (srv, _):
        r = client_of(srv).responses.create(model=MODEL_ID, input="Hello", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2 and r.output[0].type == "message"


def test_bad_fields_are_400s_naming_them(tokenizer):
    bodies = {
        "tool_choice.name": {"tools": [FUNCTION_TOOL], "tool_choice": {"type": "function", "name": "nope"}},
        "input.0.role": {"input": [{"type": "message", "role": "robot", "content": "hi"}]},
        "input.0.content.0": {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input.0.call_id": {"input": [{"type": "function_call_output", "output": "x"}]},
        "text.format.schema": {"text": {"format": {"type": "json_schema", "name": "x"}}},
        "model": {"model": "other"},
    }
    with scripted_server("v3", tokenizer) as (srv, _), httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        for param, extra in bodies.items():
            r = http.post("/v1/responses", json={"model": MODEL_ID, "input": "hi", **extra})
            assert r.status_code in (400, 404), (param, r.text)
            assert r.json()["error"]["param"] == param


def test_greedy_reply_equals_the_chat_endpoint(trained):
    model, tok = trained
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def parse_args(argv):"}]
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3") as (srv, _):
        client = client_of(srv)
        chat = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=16, temperature=0)
        resp = client.responses.create(model=MODEL_ID, instructions=messages[0]["content"],
                                       input=messages[1]["content"], max_output_tokens=16, temperature=0)
    assert resp.output_text == chat.choices[0].message.content
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.usage.output_tokens == chat.usage.completion_tokens


class FailingEngine:
    """The real engine, except that its stream raises after two tokens."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, tokens, params):
        n = 0
        async for ev in self.inner.generate(tokens, params):
            yield ev
            n += 1
            if n == 2:
                raise RuntimeError("secret internal detail")


def test_failure_mid_stream_ends_with_response_failed(trained):
    model, tok = trained
    body = {"model": MODEL_ID, "input": "hi", "stream": True, "max_output_tokens": 8}
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3", wrap=FailingEngine) as (srv, _):
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http, \
                http.stream("POST", "/v1/responses", json=body) as r:
            assert r.status_code == 200
            data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[0]["type"] == "response.created" and data[-1]["type"] == "response.failed"
    assert data[-1]["response"]["status"] == "failed" and "secret" not in json.dumps(data)


def test_late_first_token_streams_created_at_once(trained, monkeypatch):
    """The engine holds its first token until the client has seen response.created (or gives up after 20 s,
    failing the stream): a long prefill no longer keeps the stream from starting."""
    import asyncio
    import threading

    from mlxseek.serve import dispatch

    seen_created = threading.Event()

    class HeldBack(FailingEngine):
        async def generate(self, tokens, params):
            for _ in range(400):
                if seen_created.is_set():
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the client never saw response.created")
            async for ev in self.inner.generate(tokens, params):
                yield ev

    monkeypatch.setattr(dispatch, "KEEPALIVE_AFTER_S", 0.1)
    model, tok = trained
    body = {"model": MODEL_ID, "input": "hi", "stream": True, "max_output_tokens": 4}
    data = []
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3", wrap=HeldBack) as (srv, _):
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http, \
                http.stream("POST", "/v1/responses", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data.append(json.loads(line[6:]))
                    seen_created.set()
    assert data[0]["type"] == "response.created" and data[-1]["type"] == "response.completed"
    assert data[-1]["response"]["usage"]["output_tokens"] >= 1


def test_root_url_and_deepseek_model_names(tokenizer):
    """Through DeepSeek's URL layout (no /v1) and model names: deepseek-reasoner turns thinking on, as on
    the chat endpoint; deepseek-chat leaves it off."""
    from mlxseek.serve.model_names import model_names

    text = REASONING + "</think>" + CONTENT
    model = servable(ScriptedModel(tokenizer.encode(text, add_special_tokens=False), len(tokenizer.get_vocab())),
                     tokenizer)
    names = model_names([MODEL_ID])
    with running_server(model, tokenizer, model_id=MODEL_ID, chat_style="v3.1", prompt_cache_bytes=0,
                        model_names=names) as (srv, _):
        root = openai.OpenAI(base_url=srv.url, api_key="unused", timeout=TIMEOUT, max_retries=0)
        reasoner = root.responses.create(model="deepseek-reasoner", input="Weather in Paris?")
        chat = root.responses.create(model="deepseek-chat", input="Weather in Paris?")
    assert [i.type for i in reasoner.output] == ["reasoning", "message"]
    assert reasoner.output[0].content[0].text == REASONING and reasoner.output_text == CONTENT
    assert [i.type for i in chat.output] == ["message"] and REASONING in chat.output_text
