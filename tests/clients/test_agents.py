"""The real agent programs (Codex CLI, Claude Code, opencode; npm, pinned) each run a full turn against a live
mlxseek serve: the scripted model calls the program's own file-writing tool, the program runs it and sends
the result back, and the model's final answer reaches the program's output. Codex speaks the Responses API,
Claude Code the Messages API, opencode Chat Completions."""

import pytest
from agents import FILE_NAME, FILE_TEXT, FINAL, PINS, Unavailable, agent_turn, binary
from programs import PROGRAMS


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agent_turn_with_a_tool_call(name, tmp_path):
    try:
        exe = binary(name)
    except Unavailable as e:
        pytest.skip(f"{PINS[name][0]} not available: {e}")
    program = PROGRAMS[name]
    turn = agent_turn(program, exe, tmp_path)
    assert turn.done.returncode == 0, (turn.done.stdout[-2000:], turn.done.stderr[-2000:])
    assert (turn.work / FILE_NAME).read_text() == FILE_TEXT
    assert FINAL in program.answer(turn.done.stdout), turn.done.stdout[-2000:]
    turns = [ex for ex in turn.exchanges if ex.path == program.endpoint]
    assert len(turns) >= 2, turn.exchanges  # the tool call, then the answer after its result
    assert all(ex.status == 200 for ex in turn.exchanges), turn.exchanges
