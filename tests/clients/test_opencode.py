"""opencode (npm opencode-ai, pinned) runs a full agent turn against mlxseek's /v1/chat/completions through
its @ai-sdk/openai-compatible provider: the scripted model calls opencode's own write tool, opencode writes
the file and sends the result back, and the model's final answer reaches opencode's output."""

import json

import pytest
from agents import CONTEXT, FILE_NAME, FILE_TEXT, FINAL, MODEL_ID, Unavailable, agent_server, binary, run


@pytest.fixture(scope="module")
def opencode():
    try:
        return binary("opencode")
    except Unavailable as e:
        pytest.skip(f"opencode not available: {e}")


def write_config(work, url: str) -> None:
    provider = {"npm": "@ai-sdk/openai-compatible", "name": "mlxseek",
                "options": {"baseURL": f"{url}/v1", "apiKey": "unused"},
                "models": {MODEL_ID: {"name": MODEL_ID, "limit": {"context": CONTEXT, "output": 4096}}}}
    config = {"$schema": "https://opencode.ai/config.json", "provider": {"local": provider},
              "model": f"local/{MODEL_ID}", "small_model": f"local/{MODEL_ID}", "autoupdate": False,
              "share": "disabled", "permission": {"edit": "allow", "bash": "allow"}}
    (work / "opencode.json").write_text(json.dumps(config))


ENV = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
       "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"}


def test_opencode_turn_with_a_tool_call(opencode, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with agent_server("write", {"filePath": str(work / FILE_NAME), "content": FILE_TEXT}) as (srv, recorder):
        write_config(work, srv.url)
        done = run([opencode, "run", "-m", f"local/{MODEL_ID}", "--format", "json", "Write hello.txt"], cwd=work,
                   env={**ENV, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
                        "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert (work / FILE_NAME).read_text() == FILE_TEXT
    texts = [e["part"].get("text", "") for e in map(json.loads, done.stdout.splitlines())
             if e.get("type") == "text" and "part" in e]
    assert FINAL in "".join(texts), done.stdout[-2000:]
    turns = [ex for ex in recorder.exchanges if ex.path == "/v1/chat/completions"]
    assert len(turns) >= 2 and all(ex.status == 200 for ex in turns)
