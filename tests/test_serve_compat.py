"""What agent clients need besides the APIs' core: --max-tokens clamps instead of refusing (and a request past
the context is clamped to what is left), Anthropic requests full of fields and betas this server ignores
(Claude Code's), HEAD /, the OpenAPI schema, CORS on request only."""

import httpx
import pytest
from scripted_model import ScriptedModel, servable
from serve_helpers import deadline, running_server

from mlxseek.serve import Limits

MODEL_ID = "scripted"
TIMEOUT = 60
CAP = 8
CONTEXT = 96
ORIGIN = "http://localhost:3000"
LONG_REPLY = " ".join(["word"] * 200)


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(300):
        yield


def server(tokenizer, *, context=4096, **kw):
    ids = tokenizer.encode(LONG_REPLY, add_special_tokens=False)
    model = servable(ScriptedModel(ids, len(tokenizer.get_vocab())), tokenizer, context=context)
    return running_server(model, tokenizer, model_id=MODEL_ID, chat_style="v3", prompt_cache_bytes=0, **kw)


def chat(**kw):
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_max_tokens_over_the_cap_is_clamped(tokenizer):
    with server(tokenizer, limits=Limits(max_tokens=CAP)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        c = http.post("/v1/chat/completions", json=chat(max_tokens=32000)).json()
        m = http.post("/v1/messages", json=chat(max_tokens=32000)).json()
        r = http.post("/v1/responses", json={"model": MODEL_ID, "input": "hi", "max_output_tokens": 10**6}).json()
        p = http.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 2**70}).json()
        default = http.post("/v1/chat/completions", json=chat()).json()
    assert c["choices"][0]["finish_reason"] == "length" and c["usage"]["completion_tokens"] == CAP
    assert m["stop_reason"] == "max_tokens" and m["usage"]["output_tokens"] == CAP
    assert r["status"] == "incomplete" and r["usage"]["output_tokens"] == CAP
    assert p["choices"][0]["finish_reason"] == "length" and p["usage"]["completion_tokens"] == CAP
    assert default["usage"]["completion_tokens"] == CAP


def test_a_request_past_the_context_gets_what_is_left(tokenizer):
    with server(tokenizer, context=CONTEXT) as (srv, _), httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        ok = http.post("/v1/chat/completions", json=chat(max_tokens=CONTEXT * 10)).json()
        too_long = http.post("/v1/chat/completions",
                             json=chat(messages=[{"role": "user", "content": "hi " * CONTEXT}]))
        msg = http.post("/v1/messages", json={**chat(max_tokens=5), "messages": [
            {"role": "user", "content": "hi " * CONTEXT}]})
        resp = http.post("/v1/responses", json={"model": MODEL_ID, "input": "hi " * CONTEXT})
    assert ok["choices"][0]["finish_reason"] == "length"
    assert ok["usage"]["total_tokens"] == CONTEXT
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "messages"
    assert msg.status_code == 400 and "context" in msg.json()["error"]["message"]
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"


# what Claude Code sends besides the basics (as of 2.1.3xx): betas in the query, fields this server ignores
CLAUDE_CODE_BODY = {
    "model": MODEL_ID, "max_tokens": 32000, "stream": False,
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
    "metadata": {"user_id": "u"},
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
                 {"role": "system", "content": [{"type": "text", "text": "# Environment\n - Platform: linux"}]}],
    "tools": [
        {"name": "Write", "description": "Write a file", "strict": True, "defer_loading": False,
         "input_examples": [{"file_path": "/a", "content": "x"}], "cache_control": {"type": "ephemeral"},
         "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                          "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
}


def test_claude_code_request_with_unknown_fields_and_betas(tokenizer):
    with server(tokenizer, limits=Limits(max_tokens=CAP)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        r = http.post("/v1/messages?beta=true", json=CLAUDE_CODE_BODY,
                      headers={"anthropic-beta": "context-management-2025-06-27,interleaved-thinking-2025-05-14"})
        count = http.post("/v1/messages/count_tokens?beta=true",
                          json={k: v for k, v in CLAUDE_CODE_BODY.items() if k not in ("max_tokens", "stream")})
        with http.stream("POST", "/v1/messages?beta=true", json={**CLAUDE_CODE_BODY, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == CAP
    assert count.status_code == 200 and count.json()["input_tokens"] > 0
    assert '"input_tokens"' in lines[0] and '"input_tokens"' in [x for x in lines if "message_delta" in x][0]


def test_head_root_openapi_and_no_docs(tokenizer):
    with server(tokenizer, api_key="k") as (srv, _), httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        head = http.head("/")
        schema = http.get("/openapi.json", headers={"x-api-key": "k"})
        docs = http.get("/docs", headers={"x-api-key": "k"})
    assert head.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions"} <= set(paths)
    assert docs.status_code == 404


def preflight(http, origin=ORIGIN):
    return http.options("/v1/chat/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization"})


def test_cors_only_when_asked(tokenizer):
    with server(tokenizer, api_key="k", cors_origins=(ORIGIN,)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        pre = preflight(http)
        r = http.post("/v1/chat/completions", json=chat(max_tokens=2), headers={"Origin": ORIGIN,
                                                                                "Authorization": "Bearer k"})
        other = preflight(http, "http://elsewhere.test")
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in other.headers
    with server(tokenizer) as (srv, _), httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        off = preflight(http)
        r = http.post("/v1/chat/completions", json=chat(max_tokens=2), headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in off.headers and "access-control-allow-origin" not in r.headers


class SlowFirstToken:
    """The real engine, with its first event held back as if a long prompt were being prefilled; with
    `fail`, the wait ends in an error instead."""

    def __init__(self, inner, *, fail=False):
        self.inner, self.fail = inner, fail

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, tokens, params):
        import asyncio

        await asyncio.sleep(1.0)
        if self.fail:
            raise RuntimeError("failed during prefill")
        async for ev in self.inner.generate(tokens, params):
            yield ev


def streamed_events(srv, body) -> list[str]:
    with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http, \
            http.stream("POST", "/v1/messages", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        return [line[7:] for line in r.iter_lines() if line.startswith("event: ")]


@pytest.mark.parametrize("fail", [False, True])
def test_pings_while_the_first_token_is_late(tokenizer, monkeypatch, fail):
    from mlxseek.serve import dispatch

    monkeypatch.setattr(dispatch, "KEEPALIVE_AFTER_S", 0.1)
    monkeypatch.setattr(dispatch, "KEEPALIVE_EVERY_S", 0.2)
    with server(tokenizer, wrap=lambda e: SlowFirstToken(e, fail=fail)) as (srv, _):
        names = streamed_events(srv, chat(max_tokens=4))
    assert names[0] == "message_start"
    before_content = names[:names.index("error" if fail else "content_block_start")]
    assert before_content.count("ping") >= 3  # the opening ping and at least two while waiting
    assert names[-1] == ("error" if fail else "message_stop")
