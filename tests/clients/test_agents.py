"""The real agent programs (Codex CLI, Claude Code, opencode; npm, pinned) each run a full turn against a live
mlxseek serve: the scripted model calls the program's own file-writing tool, the program runs it and sends
the result back, and the model's final answer reaches the program's output. Codex speaks the Responses API,
Claude Code the Messages API, opencode Chat Completions; Codex also against a reasoning (v3.1) format."""

import pytest
from agents import FILE_NAME, FILE_TEXT, FINAL, PINS, THOUGHT, Unavailable, agent_turn, binary
from programs import PROGRAMS


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agent_turn_with_a_tool_call(name, tmp_path):
    program = PROGRAMS[name]
    try:
        exe = binary(program.name)
    except Unavailable as e:
        pytest.skip(f"{PINS[program.name][0]} not available: {e}")
    turn = agent_turn(program, exe, tmp_path)
    assert turn.done.returncode == 0, (turn.done.stdout[-2000:], turn.done.stderr[-2000:])
    assert (turn.work / FILE_NAME).read_text() == FILE_TEXT
    assert FINAL in program.answer(turn.done.stdout), turn.done.stdout[-2000:]
    if program.style == "v3.1":  # the model reasoned first, and the program showed it
        assert THOUGHT in turn.done.stdout + turn.done.stderr
    turns = [ex for ex in turn.exchanges if ex.path == program.endpoint]
    assert len(turns) >= 2, turn.exchanges  # the tool call, then the answer after its result
    assert all(ex.status == 200 for ex in turn.exchanges), turn.exchanges
