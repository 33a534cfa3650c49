"""Structured outputs and forced tool calls (constrained decoding with llguidance) on real checkpoints:
a random-weight V3-shaped model with the real DeepSeek tokenizer (a model that writes nothing sensible
unless the grammar holds it), and the trained fixture with its MTP module for drafted decoding.

Every reply must parse and validate against its schema (jsonschema), every forced tool call must come back
as a valid call in each chat style's own syntax, batched rows must equal solo ones, and MTP-drafted
constrained output must equal undrafted constrained output."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import jsonschema
import openai
import pytest
import random_checkpoint
from serve_helpers import deadline, running_server

import mlxseek
from mlxseek.errors import ConstraintError
from mlxseek.formats import parse_reply, render_chat
from mlxseek.formats.constraints import json_grammar, tool_call_grammar
from mlxseek.generation.batch import BatchDecoder, RowParams
from mlxseek.generation.constraint import check_grammar, make_constraint

TRAINED = Path(__file__).parent / "fixtures" / "trained_v3"
MODEL_ID = "random-v3"
TIMEOUT = 120
NAME = {"type": "string", "maxLength": 16}
SCORE = {"type": "integer", "minimum": 0, "maximum": 100}
COLOR = {"enum": ["red", "green", "blue"]}
POINT = {"type": "object", "properties": {"x": SCORE, "y": SCORE}, "required": ["x", "y"],
         "additionalProperties": False}


def _obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props, "required": list(required or props),
            "additionalProperties": False}


def _array(items: dict, lo: int, hi: int) -> dict:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


# 20 schemas: enums, nested objects, arrays with bounds, optional keys, booleans, numbers.
SCHEMAS = [
    _obj({"color": COLOR}),
    _obj({"name": NAME, "age": SCORE}),
    _obj({"tags": _array(COLOR, 1, 3)}),
    _obj({"point": POINT}),
    _obj({"points": _array(POINT, 2, 3)}),
    _obj({"ok": {"type": "boolean"}, "level": {"enum": [1, 2, 3]}}),
    _obj({"user": _obj({"name": NAME, "address": _obj({"city": NAME, "zip": SCORE})})}),
    _obj({"matrix": _array(_array(SCORE, 1, 2), 1, 2)}),
    _obj({"name": NAME, "nick": NAME}, required=["name"]),
    _obj({"status": {"enum": ["open", "closed"]}, "count": SCORE, "labels": _array(NAME, 0, 2)}),
    _obj({"flag": {"type": "boolean"}}),
    _obj({"a": _obj({"b": _obj({"c": COLOR})})}),
    _obj({"items": _array(_obj({"id": SCORE, "color": COLOR}), 1, 3)}),
    _obj({"kind": {"const": "event"}, "at": SCORE}),
    _obj({"shape": {"enum": ["circle", "square"]}, "size": {"type": "integer", "minimum": 1, "maximum": 9}}),
    _obj({"names": _array(NAME, 1, 2), "primary": NAME}),
    _obj({"choice": {"anyOf": [COLOR, SCORE]}}),
    _obj({"origin": POINT, "target": POINT}),
    _obj({"empty": _obj({})}),
    _array(_obj({"k": COLOR}), 1, 2),
]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
           "parameters": _obj({"city": NAME, "days": {"type": "integer", "minimum": 1, "maximum": 7},
                               "unit": {"type": "string", "enum": ["c", "f"]}}, required=["city", "days"])}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time",
        "parameters": _obj({"zone": COLOR})}}
TOOLS = [WEATHER, TIME]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
STYLES = ["v3", "v3.1", "v3.2", "v4"]  # r1 always reasons first: tests/…::test_reasoning_runs_free covers it


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(900):
        yield


@pytest.fixture(scope="module")
def random_v3(tmp_path_factory):
    """(model, tokenizer): random V3-shaped weights, the real 129,280-token tokenizer, a 4K context."""
    out = tmp_path_factory.mktemp("structured") / "random-v3"
    bits, group = random_checkpoint.DEFAULT_QUANT["tiny"]
    config = dict(random_checkpoint.PRESETS["tiny"], max_position_embeddings=4096)
    random_checkpoint.write_random_checkpoint(out, config, bits=bits, group_size=group, seed=3)
    return mlxseek.load(out)


def _prompt(tok, style: str, text: str, tools=None) -> str:
    thinking = None if style in ("v3", "r1") else False
    return render_chat([{"role": "user", "content": text}], style=style, tools=tools, thinking=thinking,
                       tokenizer=tok)


def _tokens(model, tok, prompt, grammar, **kw) -> list[int]:
    return [r.token for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=200, grammar=grammar, **kw)]


def test_every_schema_reply_parses_and_validates(random_v3):
    model, tok = random_v3
    for i, schema in enumerate(SCHEMAS):
        recs = list(mlxseek.stream_generate(model, tok, _prompt(tok, "v3", f"Record {i} as JSON."),
                                            max_tokens=200, grammar=json_grammar(schema)))
        assert recs[-1].finish_reason == "stop", f"schema {i} did not finish: {''.join(r.text for r in recs)!r}"
        jsonschema.validate(json.loads("".join(r.text for r in recs)), schema)


def test_batched_constrained_rows_equal_solo_rows(random_v3):
    model, tok = random_v3
    prompts = [_prompt(tok, "v3", f"Item {i}") for i in range(4)]
    grammars = [json_grammar(s) for s in SCHEMAS[:3]] + [None]  # an unconstrained row beside them
    solo = [_tokens(model, tok, p, g) for p, g in zip(prompts, grammars)]
    dec = BatchDecoder(model, tok)
    rows = {dec.add(p, RowParams(max_tokens=200, grammar=g)): i for i, (p, g) in enumerate(zip(prompts, grammars))}
    got = {i: [] for i in rows.values()}
    while dec.active or dec.pending:
        for rid, rec in dec.step():
            got[rows[rid]].append(rec.token)
    assert [got[i] for i in range(4)] == solo


@pytest.mark.parametrize("style", STYLES)
def test_forced_tool_call_is_valid_in_each_style(random_v3, style):
    model, tok = random_v3
    for tools in (TOOLS, [TIME]):  # "required" over both, then one named tool
        text = "".join(r.text for r in mlxseek.stream_generate(
            model, tok, _prompt(tok, style, "What now?", tools), max_tokens=300, chat_style=style,
            grammar=tool_call_grammar(style, tools)))
        reply = parse_reply(text, style=style, tools=tools)
        assert not reply.malformed and len(reply.tool_calls) == 1, text
        call = reply.tool_calls[0]
        assert call.name in {t["function"]["name"] for t in tools}
        jsonschema.validate(json.loads(call.arguments), SCHEMA_OF[call.name])


def test_reasoning_runs_free_until_it_closes(random_v3):
    _, tok = random_v3
    grammar = tool_call_grammar("r1", [WEATHER])
    prompt = tok.encode(render_chat([{"role": "user", "content": "hi"}], style="r1", tokenizer=tok),
                        add_special_tokens=False)
    c = make_constraint(tok, grammar, vocab_size=129280, prompt_ids=prompt)
    assert c.mask() is None  # inside <think>: free
    c.feed(tok.encode("Let me think.", add_special_tokens=False)[0])
    assert c.mask() is None
    c.feed(tok.convert_tokens_to_ids("</think>"))
    allowed = c.mask().nonzero()[0].tolist()
    assert allowed == [tok.convert_tokens_to_ids("<｜tool▁calls▁begin｜>")]


def test_unsupported_schema_keyword_is_named():
    with pytest.raises(ConstraintError) as e:
        check_grammar(json_grammar({"type": "array", "uniqueItems": True}))
    assert e.value.keyword == "uniqueItems" and "uniqueItems" in str(e.value)


def test_mtp_drafted_constrained_output_equals_undrafted():
    model, tok = mlxseek.load(TRAINED)
    for schema in SCHEMAS[:6]:
        grammar = json_grammar(schema)
        plain = list(mlxseek.stream_generate(model, tok, "def main(", max_tokens=60, grammar=grammar))
        drafted = list(mlxseek.stream_generate(model, tok, "def main(", max_tokens=60, grammar=grammar,
                                               draft="mtp", num_draft=2))
        assert [r.token for r in drafted] == [r.token for r in plain]
        assert drafted[-1].draft_tokens > 0
        jsonschema.validate(json.loads("".join(r.text for r in plain)), schema)
    # a BatchDecoder row that runs alone drafts too
    dec = BatchDecoder(model, tok, draft="mtp", num_draft=2)
    dec.add("def main(", RowParams(max_tokens=60, grammar=json_grammar(SCHEMAS[4])))
    rows = [rec for _ in range(60) for _, rec in dec.step()]
    assert [r.token for r in rows] == _tokens(model, tok, "def main(", json_grammar(SCHEMAS[4]))[: len(rows)]
    assert any(r.drafting for r in rows)


def _openai(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.mark.parametrize("max_batch", [1, 4])
def test_served_json_schema_requests_validate(random_v3, max_batch):
    model, tok = random_v3
    picks = list(range(len(SCHEMAS))) if max_batch == 4 else [0, 6, 12, 19]

    def ask(client, i):
        r = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": f"Record {i}"}], max_tokens=200, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i]}})
        return r.choices[0]

    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3", max_batch=max_batch,
                        prompt_cache_bytes=0) as (srv, _):
        client = _openai(srv)
        with ThreadPoolExecutor(4) as pool:
            choices = list(pool.map(lambda i: ask(client, i), picks))
        obj = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "x"}],
                                             max_tokens=200, response_format={"type": "json_object"})
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "x"}], max_tokens=20,
                response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": {"not": {}}}})
    for i, choice in zip(picks, choices):
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[i])
    # any object: a random model may fill an unbounded key until max_tokens; what it wrote is an object's start
    text = obj.choices[0].message.content
    assert text.startswith("{") and (obj.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))
    assert "'not'" in bad.value.message and bad.value.body["param"] == "response_format.json_schema.schema"


@pytest.mark.parametrize("style", STYLES)
def test_served_tool_choice_forces_a_valid_call(random_v3, style):
    model, tok = random_v3
    named = {"type": "function", "function": {"name": "get_time"}}
    thinking = {} if style == "v3" else {"thinking": {"type": "disabled"}}
    with running_server(model, tok, model_id=MODEL_ID, chat_style=style, max_batch=4, prompt_cache_bytes=0) as (srv, _):
        client = _openai(srv)
        with ThreadPoolExecutor(2) as pool:
            chats = list(pool.map(lambda choice: client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Go"}], tools=TOOLS, tool_choice=choice,
                max_tokens=300, temperature=0, extra_body=thinking).choices[0], ["required", named]))
        ant = anthropic.Anthropic(base_url=srv.url, api_key="unused", timeout=TIMEOUT, max_retries=0)
        tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS]
        msgs = [ant.messages.create(model=MODEL_ID, max_tokens=300, messages=[{"role": "user", "content": "Go"}],
                                    tools=tools, tool_choice=choice,
                                    **({} if style == "v3" else {"thinking": {"type": "disabled"}}))
                for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"})]
    for choice, want in zip(chats, (None, "get_time")):
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) >= 1
        for call in choice.message.tool_calls:
            assert want is None or call.function.name == want
            jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])
    for msg, want in zip(msgs, (None, "get_weather")):
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert msg.stop_reason == "tool_use" and uses
        for use in uses:
            assert want is None or use.name == want
            jsonschema.validate(use.input, SCHEMA_OF[use.name])


def test_request_grammar_reads_every_api_shape_and_names_bad_fields():
    from mlxseek.serve.api_errors import ApiError
    from mlxseek.serve.structured import request_grammar

    schema = SCHEMAS[1]
    chat = request_grammar(style="v3", response_format={"type": "json_schema",
                                                        "json_schema": {"name": "p", "schema": schema}})
    responses = request_grammar(style="v3", response_format={"type": "json_schema", "name": "p", "schema": schema},
                                format_param="text.format")  # the Responses API's text.format
    assert chat == responses == json_grammar(schema)
    named = tool_call_grammar("v3.2", [TIME])
    assert request_grammar(style="v3.2", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}) \
        == request_grammar(style="v3.2", tools=TOOLS, tool_choice={"type": "function", "name": "get_time"}) \
        == request_grammar(style="v3.2", tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"}) == named
    assert request_grammar(style="v4", tools=TOOLS, tool_choice="auto", response_format={"type": "text"}) is None
    for kwargs, param in [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "schema": {"if": {}}}, "format_param": "text.format"},
         "text.format.schema"),
    ]:
        with pytest.raises(ApiError) as e:
            request_grammar(style="v3", **kwargs)
        assert e.value.status == 400 and e.value.param == param, (kwargs, e.value.param)
