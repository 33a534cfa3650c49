"""Each real agent program's turn against mlxseek serve: wall time and the request/response sizes it sent.

    python benchmarks/clients.py                 # codex, claude, opencode; 3 turns each
    python benchmarks/clients.py --programs codex --turns 5

The server's model is the scripted test double of tests/clients (it calls the program's file-writing tool,
then answers), so the time is the program's own overhead plus HTTP, not model compute. One JSON line per
program: median and min turn seconds, requests per turn, and per request the bytes sent and received
(largest and total), which shows how much prompt (system prompt, tool schemas) each program ships.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "clients"))
from agents import FILE_NAME, FILE_TEXT, PINS, agent_turn, binary  # noqa: E402
from programs import PROGRAMS  # noqa: E402


def bench(name: str, turns: int) -> dict:
    program = PROGRAMS[name]
    exe = binary(program.name)
    seconds, per_turn = [], []
    for _ in range(turns):
        with tempfile.TemporaryDirectory() as tmp:
            turn = agent_turn(program, exe, Path(tmp))
            if turn.done.returncode != 0 or (turn.work / FILE_NAME).read_text() != FILE_TEXT:
                raise SystemExit(f"{name}: the turn failed: {turn.done.stderr[-1000:]}")
            seconds.append(turn.seconds)
            per_turn.append([ex for ex in turn.exchanges if ex.path == program.endpoint])
    last = per_turn[-1]
    return {"bench": "clients", "program": name, "package": PINS[program.name][0], "version": PINS[program.name][1],
            "endpoint": program.endpoint, "turns": turns, "turn_s_median": round(statistics.median(seconds), 2),
            "turn_s_min": round(min(seconds), 2), "requests_per_turn": len(last),
            "request_bytes_max": max(ex.request_bytes for ex in last),
            "request_bytes_total": sum(ex.request_bytes for ex in last),
            "response_bytes_max": max(ex.response_bytes for ex in last),
            "response_bytes_total": sum(ex.response_bytes for ex in last)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    for name in args.programs:
        print(json.dumps(bench(name, args.turns)), flush=True)


if __name__ == "__main__":
    main()
