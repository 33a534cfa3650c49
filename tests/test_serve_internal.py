"""Internal errors and logs: an engine that fails (before the first token, or mid-stream) gives a 500 error
object (or an error event) without its message or a traceback, on the same keep-alive connection the next
request still works; logs carry prompt text only with log_prompts."""

import json
import logging

import httpx
import pytest
from serve_helpers import deadline, running_server

MODEL_ID = "trained_v3"
TIMEOUT = 30
SECRET = "internal detail the client must not see"
FAIL_AT_ONCE, FAIL_MID_STREAM = 7, 9  # max_tokens values that make the wrapped engine fail


class FailingEngine:
    """The real engine, except that some max_tokens values make generate() raise."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, tokens, params):
        if params.max_tokens == FAIL_AT_ONCE:
            raise RuntimeError(SECRET)
        n = 0
        async for ev in self.inner.generate(tokens, params):
            yield ev
            n += 1
            if params.max_tokens == FAIL_MID_STREAM and n == 2:
                raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def http(trained):
    model, tok = trained
    server = running_server(model, tok, model_id=MODEL_ID, chat_style="v3", wrap=FailingEngine)
    with deadline(300), server as (srv, _), httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
        yield client


BODIES = {
    "/v1/completions": {"prompt": "import os\n"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize("path", list(BODIES))
def test_failure_before_the_first_token_is_a_500_object(http, path):
    r = http.post(path, json={"model": MODEL_ID, "max_tokens": FAIL_AT_ONCE, **BODIES[path]})
    assert r.status_code == 500
    err = r.json()
    if path == "/v1/messages":
        assert err == {"type": "error", "error": {"type": "api_error", "message": err["error"]["message"]}}
    else:
        assert err["error"]["type"] == "server_error"
    assert SECRET not in r.text and "Traceback" not in r.text
    # same client, same keep-alive connection: the server still answers
    assert http.get("/health").status_code == 200
    ok = http.post(path, json={"model": MODEL_ID, "max_tokens": 3, **BODIES[path]})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", list(BODIES))
def test_failure_mid_stream_ends_with_an_error_event(http, path):
    body = {"model": MODEL_ID, "max_tokens": FAIL_MID_STREAM, "stream": True, **BODIES[path]}
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    last = data[-1]
    assert last["error"]["type"] == ("api_error" if path == "/v1/messages" else "server_error")
    assert all(SECRET not in json.dumps(d) for d in data)
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("log_prompts", [False, True])
def test_prompt_text_is_logged_only_when_asked(trained, caplog, log_prompts):
    model, tok = trained
    marker = "okapi_marker_in_the_prompt"
    caplog.set_level(logging.INFO, logger="mlxseek.serve")
    with deadline(300), running_server(model, tok, model_id=MODEL_ID, chat_style="v3",
                                       log_prompts=log_prompts) as (srv, _):
        r = httpx.post(srv.url + "/v1/completions", timeout=TIMEOUT,
                       json={"model": MODEL_ID, "prompt": f"# {marker}\n", "max_tokens": 2})
        assert r.status_code == 200
    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.name == "mlxseek.serve")
    assert "completions done: prompt" in logged
    assert (marker in logged) == log_prompts
