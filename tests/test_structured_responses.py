"""Structured outputs and forced tool calls through the Responses API (`text.format`, `tool_choice`) with
the official openai SDK, on the random-weight real-vocabulary model of test_structured_outputs: a model that
writes nothing sensible unless the grammar holds it. Also chat prefix completion under a grammar: the grammar
continues the prefix's content (a start it forbids is a 400 naming that content) and holds the answer after a
reasoning-only prefix."""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from scripted_model import ScriptedModel, servable
from serve_helpers import deadline, running_server
from test_structured_outputs import SCHEMA_OF, SCHEMAS, STYLES, TOOLS, random_v3  # noqa: F401 (a fixture)


MODEL_ID = "random-v3"
TIMEOUT = 120
# the Responses API's function tools: the chat shape without the "function" wrapper
FUNCTIONS = [{"type": "function", **t["function"]} for t in TOOLS]


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(900):
        yield


def _client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def _no_reasoning(style: str) -> dict:
    """V3 never reasons; the others are asked not to, so the random model reaches the constrained part."""
    return {} if style == "v3" else {"reasoning": {"effort": "none"}}


@pytest.fixture(scope="module")
def batched_server(random_v3):  # noqa: F811 (the imported fixture)
    model, tok = random_v3
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3", max_batch=4,
                        prompt_cache_bytes=0) as (srv, _):
        yield srv


@pytest.mark.parametrize("stream", [False, True])
def test_responses_json_schema_replies_validate(batched_server, stream):
    client, picks = _client(batched_server), [0, 4, 6, 12, 16, 19]

    def ask(i):
        fmt = {"type": "json_schema", "name": f"s{i}", "schema": SCHEMAS[i], "strict": True}
        kw = dict(model=MODEL_ID, input=f"Record {i} as JSON.", max_output_tokens=200, temperature=0,
                  text={"format": fmt})
        if not stream:
            r = client.responses.create(**kw)
            return r.status, r.output_text
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
        return r.status, r.output_text

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, picks))
    for i, (status, text) in zip(picks, replies):
        assert status == "completed", (i, text)
        jsonschema.validate(json.loads(text), SCHEMAS[i])


@pytest.mark.parametrize("style", STYLES)
def test_responses_tool_choice_forces_a_valid_call(random_v3, style):  # noqa: F811
    model, tok = random_v3
    with running_server(model, tok, model_id=MODEL_ID, chat_style=style, max_batch=4,
                        prompt_cache_bytes=0) as (srv, _):
        client = _client(srv)
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda choice: client.responses.create(
                model=MODEL_ID, input="Go", tools=FUNCTIONS, tool_choice=choice, max_output_tokens=300,
                temperature=0, **_no_reasoning(style)),
                ["required", {"type": "function", "name": "get_time"}]))
    for r, want in zip(replies, (None, "get_time")):
        calls = [item for item in r.output if item.type == "function_call"]
        assert r.status == "completed" and calls, r.output
        for call in calls:
            assert want is None or call.name == want
            jsonschema.validate(json.loads(call.arguments), SCHEMA_OF[call.name])


def test_responses_unsupported_schema_keyword_is_a_400_naming_the_field(batched_server):
    client = _client(batched_server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL_ID, input="x", max_output_tokens=20, text={"format": {
            "type": "json_schema", "name": "u", "schema": {"type": "array", "uniqueItems": True}}})
    assert bad.value.body["param"] == "text.format.schema" and "uniqueItems" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL_ID, input="x", tools=FUNCTIONS, max_output_tokens=20,
                                tool_choice={"type": "function", "name": "nope"})
    assert bad.value.body["param"].startswith("tool_choice")


def _prefixed(content: str) -> list[dict]:
    return [{"role": "user", "content": "Give me JSON."}, {"role": "assistant", "content": content, "prefix": True}]


@pytest.mark.parametrize("i", [0, 3, 12])
def test_a_grammar_continues_a_content_prefix(batched_server, i):
    """The grammar starts where the prefix's content ends: the prefix plus the reply is one valid value."""
    schema = SCHEMAS[i]
    start = '{"' + next(iter(schema["properties"])) + '": '
    r = _client(batched_server).chat.completions.create(
        model=MODEL_ID, messages=_prefixed(start), max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(start + r.choices[0].message.content), schema)


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS[0]}}},
    {"tools": TOOLS, "tool_choice": "required"},
])
def test_a_prefix_the_grammar_forbids_is_a_400_naming_it(batched_server, extra):
    with pytest.raises(openai.BadRequestError) as bad:
        _client(batched_server).chat.completions.create(model=MODEL_ID, messages=_prefixed('{"size": '),
                                                        max_tokens=20, **extra)
    assert bad.value.body["param"] == "messages.1.content" and "does not follow the grammar" in bad.value.message


def test_a_grammar_applies_after_a_reasoning_prefix(random_v3):  # noqa: F811
    """A prefix of reasoning only leaves the answer unbegun: the reasoning runs free (the rendered prompt, not
    its last tokens, says it is open) and the grammar holds the answer after it. The scripted model writes
    the rest of the reasoning and then a valid answer, which the mask must let through token by token."""
    _, tok = random_v3
    script = " so the answer is red.</think>" + '{"color": "red"}'
    model = servable(ScriptedModel(tok.encode(script, add_special_tokens=False), len(tok.get_vocab())), tok)
    msgs = [{"role": "user", "content": "Pick a color."},
            {"role": "assistant", "content": "", "reasoning_content": "The user wants a color", "prefix": True}]
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3.1", prompt_cache_bytes=0) as (srv, _):
        r = _client(srv).chat.completions.create(
            model=MODEL_ID, messages=msgs, max_tokens=100, extra_body={"thinking": {"type": "enabled"}},
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMAS[0]}})
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and msg.reasoning_content.strip() == "so the answer is red."
    jsonschema.validate(json.loads(msg.content), SCHEMAS[0])
