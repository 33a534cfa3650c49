"""Claude Code (npm @anthropic-ai/claude-code, pinned) runs a full agent turn against mlxseek's /v1/messages:
the scripted model calls Claude Code's own Write tool, Claude Code writes the file and sends the result back,
and the model's final answer is Claude Code's result."""

import json

import pytest
from agents import FILE_NAME, FILE_TEXT, FINAL, MODEL_ID, Unavailable, agent_server, binary, run


@pytest.fixture(scope="module")
def claude():
    try:
        return binary("claude")
    except Unavailable as e:
        pytest.skip(f"Claude Code not available: {e}")


def environment(url: str, config_dir) -> dict:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "unused", "ANTHROPIC_MODEL": MODEL_ID,
           "CLAUDE_CODE_SUBAGENT_MODEL": MODEL_ID, "CLAUDE_CONFIG_DIR": str(config_dir),
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
           "DISABLE_AUTOUPDATER": "1"}
    for tier in ("SONNET", "OPUS", "HAIKU"):
        env[f"ANTHROPIC_DEFAULT_{tier}_MODEL"] = MODEL_ID
    return env


def test_claude_code_turn_with_a_tool_call(claude, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with agent_server("Write", {"file_path": str(work / FILE_NAME), "content": FILE_TEXT}) as (srv, recorder):
        done = run([claude, "-p", "Write hello.txt", "--output-format", "json", "--permission-mode", "acceptEdits",
                    "--allowedTools", "Write"], cwd=work, env=environment(srv.url, tmp_path / "claude"))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert (work / FILE_NAME).read_text() == FILE_TEXT
    result = json.loads(done.stdout)
    assert result["result"].strip() == FINAL and not result.get("is_error")
    turns = [ex for ex in recorder.exchanges if ex.path == "/v1/messages"]
    assert len(turns) >= 2 and all(ex.status == 200 for ex in turns)
