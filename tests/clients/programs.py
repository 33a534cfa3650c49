"""How each agent program is set up and run headless against a server at `url`, which of its own tools the
scripted model calls to write FILE_NAME, and where its final answer shows in its output.

Set-ups follow each program's documented configuration for a local OpenAI/Anthropic-compatible server
(README, "Agents"): Codex through a `[model_providers]` entry with `wire_api = "responses"`, Claude Code
through ANTHROPIC_BASE_URL, opencode through an `@ai-sdk/openai-compatible` provider in opencode.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agents import CONTEXT, FILE_NAME, FILE_TEXT, MODEL_ID

PROMPT = "Write hello.txt"


@dataclass(frozen=True)
class Program:
    name: str                                  # the npm bin (agents.PINS key)
    endpoint: str                              # the route its turns go to
    tool: str                                  # its own tool that writes a file
    arguments: Callable[[Path], dict]          # that tool's arguments for the work folder
    command: Callable[..., tuple[list, dict]]  # (exe, url, tmp, work) -> (argv, env)
    answer: Callable[[str], str]               # its stdout -> the final answer text
    style: str = "v3"                          # the chat format served (v3.1: the model reasons first)


def _codex(exe, url: str, tmp: Path, work: Path, effort: str = ""):
    home = tmp / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{MODEL_ID}"\nmodel_provider = "local"\n'
        + (f'model_reasoning_effort = "{effort}"\nshow_raw_agent_reasoning = true\n' if effort else "")
        + f'\n[model_providers.local]\nname = "local"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
        'env_key = "LOCAL_API_KEY"\n')
    # no sandbox: a container may lack what Codex's sandbox needs, and the turn runs in a temp folder
    argv = [exe, "exec", "--skip-git-repo-check", "--ephemeral", "--dangerously-bypass-approvals-and-sandbox", PROMPT]
    return argv, {"CODEX_HOME": str(home), "LOCAL_API_KEY": "unused"}


def _claude(exe, url: str, tmp: Path, work: Path):
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "unused", "ANTHROPIC_MODEL": MODEL_ID,
           "CLAUDE_CODE_SUBAGENT_MODEL": MODEL_ID, "CLAUDE_CONFIG_DIR": str(tmp / "claude"),
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
           "DISABLE_AUTOUPDATER": "1"}
    env.update({f"ANTHROPIC_DEFAULT_{tier}_MODEL": MODEL_ID for tier in ("SONNET", "OPUS", "HAIKU")})
    argv = [exe, "-p", PROMPT, "--output-format", "json", "--permission-mode", "acceptEdits", "--allowedTools", "Write"]
    return argv, env


def _opencode(exe, url: str, tmp: Path, work: Path):
    provider = {"npm": "@ai-sdk/openai-compatible", "name": "mlxseek",
                "options": {"baseURL": f"{url}/v1", "apiKey": "unused"},
                "models": {MODEL_ID: {"name": MODEL_ID, "limit": {"context": CONTEXT, "output": 4096}}}}
    config = {"$schema": "https://opencode.ai/config.json", "provider": {"local": provider},
              "model": f"local/{MODEL_ID}", "small_model": f"local/{MODEL_ID}", "autoupdate": False,
              "share": "disabled", "permission": {"edit": "allow", "bash": "allow"}}
    (work / "opencode.json").write_text(json.dumps(config))
    env = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
           "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"}
    env.update({f"XDG_{kind}_HOME": str(tmp / kind.lower()) for kind in ("CONFIG", "DATA", "CACHE", "STATE")})
    return [exe, "run", "-m", f"local/{MODEL_ID}", "--format", "json", PROMPT], env


def _opencode_answer(stdout: str) -> str:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return "".join(e["part"].get("text", "") for e in events if e.get("type") == "text" and "part" in e)


PROGRAMS = {
    "codex": Program("codex", "/v1/responses", "exec_command",
                     lambda work: {"cmd": f"printf '{FILE_TEXT}' > {FILE_NAME}"}, _codex, lambda out: out),
    # a reasoning model: Codex asks for effort, gets reasoning items and sends them back with the tool result
    "codex-reasoning": Program("codex", "/v1/responses", "exec_command",
                               lambda work: {"cmd": f"printf '{FILE_TEXT}' > {FILE_NAME}"},
                               lambda *a: _codex(*a, effort="high"), lambda out: out, style="v3.1"),
    "claude": Program("claude", "/v1/messages", "Write",
                      lambda work: {"file_path": str(work / FILE_NAME), "content": FILE_TEXT}, _claude,
                      lambda out: json.loads(out)["result"]),
    "opencode": Program("opencode", "/v1/chat/completions", "write",
                        lambda work: {"filePath": str(work / FILE_NAME), "content": FILE_TEXT}, _opencode,
                        _opencode_answer),
}
