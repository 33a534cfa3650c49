"""Codex CLI (npm @openai/codex, pinned) runs a full agent turn against mlxseek's /v1/responses: the scripted
model calls Codex's own shell tool to write a file, Codex runs it and sends the result back, and the model's
final answer reaches Codex's output."""

import pytest
from agents import FILE_NAME, FILE_TEXT, FINAL, MODEL_ID, Unavailable, agent_server, binary, run


@pytest.fixture(scope="module")
def codex():
    try:
        return binary("codex")
    except Unavailable as e:
        pytest.skip(f"Codex CLI not available: {e}")


def write_config(home, url: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{MODEL_ID}"\nmodel_provider = "local"\n\n[model_providers.local]\nname = "local"\n'
        f'base_url = "{url}/v1"\nwire_api = "responses"\nenv_key = "LOCAL_API_KEY"\n')


def test_codex_turn_with_a_tool_call(codex, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    command = {"cmd": f"printf '{FILE_TEXT}' > {FILE_NAME}"}
    with agent_server("exec_command", command) as (srv, recorder):
        write_config(tmp_path / "codex", srv.url)
        # no sandbox: the container may lack what Codex's sandbox needs, and the turn runs in a temp folder
        done = run([codex, "exec", "--skip-git-repo-check", "--ephemeral",
                    "--dangerously-bypass-approvals-and-sandbox", "Write hello.txt"], cwd=work,
                   env={"CODEX_HOME": str(tmp_path / "codex"), "LOCAL_API_KEY": "unused"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / FILE_NAME).read_text() == FILE_TEXT
    assert FINAL in done.stdout
    turns = [ex for ex in recorder.exchanges if ex.path == "/v1/responses"]
    assert len(turns) >= 2 and all(ex.status == 200 for ex in turns)
