"""Bad input against a live server (trained tiny V3 behind the real engine): every case gets the right 4xx
with an error object in its API's shape naming the field, and the server still answers /health after.

BAD_INPUTS is also the table of inputs tried (see the closing note of issue 15)."""

import json

import httpx
import pytest
from serve_helpers import deadline, running_server

from mlxseek.serve import Limits

MODEL_ID = "trained_v3"
KEY = "s3cret-key"
TIMEOUT = 30
MAX_BODY = 64 << 10
OK_CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
OK_COMPLETION = {"model": MODEL_ID, "prompt": "import os", "max_tokens": 2}
OK_MESSAGES = {"model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def chat(**change):
    return json.dumps({**OK_CHAT, **change})


def completion(**change):
    return json.dumps({**OK_COMPLETION, **change})


def messages(**change):
    return json.dumps({**OK_MESSAGES, **change})


def without(body: dict, key: str) -> str:
    return json.dumps({k: v for k, v in body.items() if k != key})


CHAT, COMP, MSG = "/v1/chat/completions", "/v1/completions", "/v1/messages"
# (name, path, raw body, status, field the error must name; None: a body-level error)
BAD_INPUTS = [
    ("bad JSON", CHAT, "{bad", 400, "body"),
    ("truncated JSON", CHAT, '{"model": "trained_v3", "messages": [', 400, "body"),
    ("empty body", CHAT, "", 400, "body"),
    ("JSON array body", CHAT, "[1, 2]", 400, "body"),
    ("JSON string body", COMP, '"hello"', 400, "body"),
    ("invalid UTF-8 bytes", COMP, b'{"model": "trained_v3", "prompt": "\xff\xfe"}', 400, "body"),
    ("deeply nested JSON", COMP, "[" * 50_000, 400, "body"),
    ("unpaired surrogate", COMP, completion(prompt="\ud800 text"), 400, "prompt"),
    ("surrogate in a chat message", CHAT, chat(messages=[{"role": "user", "content": "a\udfffb"}]), 400,
     "messages.0.content"),
    ("messages missing", CHAT, without(OK_CHAT, "messages"), 400, "messages"),
    ("messages not a list", CHAT, chat(messages="hi"), 400, "messages"),
    ("messages empty", CHAT, chat(messages=[]), 400, "messages"),
    ("unknown role", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    ("content a number", CHAT, chat(messages=[{"role": "user", "content": 42}]), 400, "messages.0.content"),
    ("image content part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
     "messages.0.content.0"),
    ("model missing", CHAT, without(OK_CHAT, "model"), 400, "model"),
    ("model a number", CHAT, chat(model=7), 400, "model"),
    ("unknown model", CHAT, chat(model="gpt-9"), 404, "model"),
    ("unknown model (completions)", COMP, completion(model="gpt-9"), 404, "model"),
    ("max_tokens a string", CHAT, chat(max_tokens="5"), 400, "max_tokens"),
    ("max_tokens negative", CHAT, chat(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens zero", COMP, completion(max_tokens=0), 400, "max_tokens"),
    ("max_tokens a float", COMP, completion(max_tokens=5.5), 400, "max_tokens"),
    ("max_tokens 1e400 (inf)", COMP, '{"model": "trained_v3", "prompt": "x", "max_tokens": 1e400}', 400,
     "max_tokens"),
    ("temperature negative", CHAT, chat(temperature=-0.5), 400, "temperature"),
    ("temperature a string", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("temperature NaN", COMP, '{"model": "trained_v3", "prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("temperature true", COMP, completion(temperature=True), 400, "temperature"),
    ("top_p zero", CHAT, chat(top_p=0), 400, "top_p"),
    ("top_p above 1", COMP, completion(top_p=1.5), 400, "top_p"),
    ("n = 2", CHAT, chat(n=2), 400, "n"),
    ("n a string", CHAT, chat(n="two"), 400, "n"),
    ("n = 3 (completions)", COMP, completion(n=3), 400, "n"),
    ("top_logprobs 100", CHAT, chat(logprobs=True, top_logprobs=100), 400, "top_logprobs"),
    ("logprobs 99 (completions)", COMP, completion(logprobs=99), 400, "logprobs"),
    ("seed negative", CHAT, chat(seed=-1), 400, "seed"),
    ("seed a string", COMP, completion(seed="x"), 400, "seed"),
    ("stop a number", CHAT, chat(stop=5), 400, "stop"),
    ("stop empty string", COMP, completion(stop=[""]), 400, "stop"),
    ("stop 17 strings", COMP, completion(stop=[str(i) for i in range(17)]), 400, "stop"),
    ("stream a string", CHAT, chat(stream="yes"), 400, "stream"),
    ("tools not a list", CHAT, chat(tools={"a": 1}), 400, "tools"),
    ("tool without function", CHAT, chat(tools=[{"type": "function"}]), 400, "tools.0.function"),
    ("tool_choice unknown word", CHAT, chat(tool_choice="sometimes"), 400, "tool_choice"),
    ("tool_choice names a missing tool", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "a"}}],
          tool_choice={"type": "function", "function": {"name": "b"}}), 400, "tool_choice"),
    ("tool_choice required without tools", CHAT, chat(tool_choice="required"), 400, "tool_choice"),
    ("thinking type unknown", CHAT, chat(thinking={"type": "maybe"}), 400, "thinking.type"),
    ("chat_template_kwargs.thinking a string", CHAT, chat(chat_template_kwargs={"thinking": "yes"}), 400,
     "chat_template_kwargs.thinking"),
    ("thinking on a format without reasoning", CHAT, chat(thinking={"type": "enabled"}), 400, "thinking"),
    ("reasoning_effort on the v3 format", CHAT, chat(reasoning_effort="max"), 400, "reasoning_effort"),
    ("chat longer than the context", CHAT, chat(messages=[{"role": "user", "content": "x = 1\n" * 1500}]), 400,
     "messages"),
    ("tool message without tool_call_id", CHAT, chat(messages=[{"role": "user", "content": "hi"},
                                                               {"role": "tool", "content": "r"}]), 400, None),
    ("prompt a number", COMP, completion(prompt=5), 400, "prompt"),
    ("prompt token id past the vocab", COMP, completion(prompt=[1, 99999]), 400, "prompt.1"),
    ("prompt token id negative", COMP, completion(prompt=[-1]), 400, "prompt.0"),
    ("prompt empty list", COMP, completion(prompt=[]), 400, "prompt"),
    ("two prompts", COMP, completion(prompt=["a", "b"]), 400, "prompt"),
    ("prompt longer than the context", COMP, completion(prompt=[5] * 1100), 400, "prompt"),
    ("messages: max_tokens missing", MSG, without(OK_MESSAGES, "max_tokens"), 400, None),
    ("messages: unknown block type", MSG,
     messages(messages=[{"role": "user", "content": [{"type": "video"}]}]), 400, None),
    ("messages: tool_result in an assistant turn", MSG,
     messages(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]), 400,
     None),
    ("messages: temperature above 1", MSG, messages(temperature=1.5), 400, None),
    ("messages: unknown model", MSG, messages(model="claude-9"), 404, None),
    ("messages: bad JSON", MSG, "{", 400, None),
    ("messages: surrogate in text", MSG, messages(messages=[{"role": "user", "content": "\udc00"}]), 400, None),
    ("messages: empty stop sequence", MSG, messages(stop_sequences=[""]), 400, None),
    ("count_tokens: bad block", MSG + "/count_tokens",
     json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "nope"}]}]}), 400, None),
    ("unknown route", "/v1/engines", "{}", 404, None),
]


@pytest.fixture(scope="module")
def server(trained):
    model, tok = trained
    with deadline(600), running_server(model, tok, model_id=MODEL_ID, chat_style="v3",
                                       limits=Limits(max_body_bytes=MAX_BODY, max_tokens=512)) as (srv, _):
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


@pytest.mark.parametrize("name,path,body,status,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_field(http, name, path, body, status, field):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    if path.startswith(MSG):
        assert err["type"] == "error" and err["error"]["type"] in ("invalid_request_error", "not_found_error")
        assert err["error"]["message"]
    else:
        assert set(err["error"]) == {"message", "type", "param", "code"}
        if field is not None:
            assert err["error"]["param"] == field
            assert field in err["error"]["message"]
    assert "Traceback" not in r.text
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("path,body", [
    (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                       {"type": "image_url", "image_url": {"url": "data:,"}}]}])),
    (MSG, messages(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}])),
], ids=["openai image_url", "anthropic image"])
def test_vision_content_is_refused_by_name(http, path, body):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    kind = "image_url" if path == CHAT else "image"
    assert f"'{kind}'" in err["message"] and "text-only" in err["message"], err
    if path == CHAT:
        assert err["param"] == "messages.0.content.1" and err["code"] == "unsupported_content"


def test_oversized_body_is_413_and_chunked_uploads_are_counted(http):
    big = json.dumps({**OK_COMPLETION, "prompt": "x" * (MAX_BODY + 1)})
    r = http.post(COMP, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    r = http.post(MSG, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: the guard counts the bytes as they arrive
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    r = http.post(COMP, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert http.get("/health").status_code == 200


def test_unicode_garbage_that_is_valid_text_is_served(http):
    weird = "\u0000\u202e\U0001f600\ufffd\u0301" + "ß" * 10 + "\U000e0041"
    r = http.post(COMP, json={**OK_COMPLETION, "prompt": weird})
    assert r.status_code == 200, r.text
    r = http.post(CHAT, json={**OK_CHAT, "messages": [{"role": "user", "content": weird}]})
    assert r.status_code == 200, r.text
    assert http.get("/health").status_code == 200


@pytest.fixture(scope="module")
def locked_server(trained):
    model, tok = trained
    with deadline(600), running_server(model, tok, model_id=MODEL_ID, chat_style="v3", api_key=KEY) as (srv, _):
        yield srv


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"authorization": "Bearer wrong"}, 401),
    ({"authorization": f"Bearer {KEY}x"}, 401),
    ({"authorization": KEY}, 401),
    ({"x-api-key": "wrong"}, 401),
    ({"authorization": f"Bearer {KEY}"}, 200),
    ({"authorization": f"bearer {KEY}"}, 200),
    ({"x-api-key": KEY}, 200),
], ids=["missing", "wrong bearer", "key plus a char", "no Bearer prefix", "wrong x-api-key", "bearer",
        "lowercase bearer", "x-api-key"])
def test_api_key(locked_server, headers, status):
    with httpx.Client(base_url=locked_server.url, timeout=TIMEOUT) as c:
        r = c.post(COMP, json=OK_COMPLETION, headers=headers)
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"]["type"] == "authentication_error"
            assert c.post(MSG, json=OK_MESSAGES, headers=headers).json()["error"]["type"] == "authentication_error"
            assert c.get("/v1/models", headers=headers).status_code == 401
            # auth comes before parsing: bad JSON without a key is still a 401
            assert c.post(CHAT, content="{", headers=headers).status_code == 401
        assert c.get("/health").status_code == 200
