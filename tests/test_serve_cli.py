"""`mlxseek serve`: options through CliRunner, and once as a real subprocess on a free loopback port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serve_helpers import TRAINED

import mlxseek.serve
from mlxseek.cli import main

OPTIONS = ("--model", "--host", "--port", "--api-key", "--prompt-cache-gb", "--prompt-cache-dir", "--draft",
           "--max-queue", "--max-batch", "--model-id", "--model-alias", "--deepseek-names", "--chat-style",
           "--max-body-mb", "--max-tokens", "--cors-origin", "--log-prompts", "--log-level")


def test_help_explains_every_option():
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    for opt in OPTIONS:
        assert opt in out
    assert "127.0.0.1" in out and "/v1/messages" in out


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(mlxseek.serve, "serve", lambda **kw: seen.append(kw))
    return seen


def test_public_host_without_key_warns(calls):
    r = CliRunner().invoke(main, ["serve", "--model", str(TRAINED), "--host", "0.0.0.0"])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "--api-key" in r.output
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["api_key"] is None


def test_loopback_or_key_does_not_warn(calls):
    for args in (["--host", "127.0.0.1"], ["--host", "0.0.0.0", "--api-key", "k"], []):
        r = CliRunner().invoke(main, ["serve", "--model", str(TRAINED), *args])
        assert r.exit_code == 0 and "warning" not in r.output
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8080


def test_cors_origins_reach_the_server(calls):
    r = CliRunner().invoke(main, ["serve", "--model", str(TRAINED), "--cors-origin", "http://a.test",
                                  "--cors-origin", "http://b.test"])
    assert r.exit_code == 0, r.output
    assert calls[0]["cors_origins"] == ("http://a.test", "http://b.test")
    CliRunner().invoke(main, ["serve", "--model", str(TRAINED)])
    assert calls[1]["cors_origins"] == ()


def test_bad_options_are_refused(calls):
    for args, word in ((["--draft", "fast"], "--draft"), (["--port", "70000"], "--port"),
                       (["--max-queue", "0"], "--max-queue"), (["--prompt-cache-gb", "-1"], "--prompt-cache-gb")):
        r = CliRunner().invoke(main, ["serve", "--model", str(TRAINED), *args])
        assert r.exit_code == 2 and word in r.output
    r = CliRunner().invoke(main, ["serve", "--model", "/no/such/folder"])
    assert r.exit_code == 2 and "--model" in r.output
    assert calls == []


def test_model_names_and_aliases_reach_the_library(calls):
    r = CliRunner().invoke(main, ["serve", "--model", str(TRAINED), "--model-id", "a", "--model-id", "b",
                                  "--model-alias", "think=thinking", "--no-deepseek-names"])
    assert r.exit_code == 0, r.output
    assert calls[0]["model_id"] == ["a", "b"] and calls[0]["model_aliases"] == ["think=thinking"]
    assert calls[0]["deepseek_names"] is False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_as_a_subprocess_answers_and_logs_no_prompt_text():
    script = Path(sys.executable).with_name("mlxseek")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from mlxseek.cli import main; main()"]
    port = free_port()
    proc = subprocess.Popen(cmd + ["serve", "--model", str(TRAINED), "--port", str(port), "--model-id", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url, marker = f"http://127.0.0.1:{port}", "zebra_unicorn_marker"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", timeout=60,
                       json={"model": "tiny", "prompt": f"# {marker}\n", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        # no --chat-style: the format is detected from the checkpoint (V3 family, no template: "v3")
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
        # DeepSeek's layout: no /v1, DeepSeek's model names served beside the folder's
        ids = [m["id"] for m in httpx.get(url + "/models", timeout=10).json()["data"]]
        assert ids[0] == "tiny" and "deepseek-reasoner" in ids
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert "POST /v1/completions" in out and "completions done: prompt" in out  # the logs are there...
    assert "with the v3 chat format" in out
    assert marker not in out             # ...but no prompt text
