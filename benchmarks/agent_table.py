"""Markdown tables from agent_bench.py's JSON lines: one per family (engine sessions), one per family over
HTTP (mlxseek serve beside mlx_lm.server).

    python benchmarks/agent_table.py benchmarks/results/issue23_agent_16k.jsonl
    python benchmarks/agent_table.py --combined benchmarks/results/issue23_agent_16k.jsonl   # the README's
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _mb(n) -> str:
    return f"{n / 1e6:.2f}"


def session_table(rows: list[dict]) -> list[str]:
    out = ["| turn | prompt | cached | warm TTFT s | restore s | snapshots s | cold TTFT s | warm/cold | "
           "same reply | RAM MB (entries) | disk MB (files) |", "|" + "---|" * 11]
    for r in rows:
        cold = r.get("ttft_cold_s")
        out.append(f"| {r['turn']} | {r['prompt_tokens']} | {r['cached_tokens']} | {r['ttft_warm_s']:.2f} | "
                   f"{r['warm_restore_s']:.3f} | {r['warm_snapshot_s']:.3f} | "
                   f"{'—' if cold is None else f'{cold:.2f}'} | "
                   f"{'—' if cold is None else r['warm_over_cold']} | {r.get('same_reply_as_cold', '—')} | "
                   f"{_mb(r['ram_bytes'])} ({r['ram_entries']}) | {_mb(r['disk_bytes'])} ({r['disk_files']}) |")
    return out


def http_table(rows: list[dict]) -> list[str]:
    by_turn: dict[int, dict] = defaultdict(dict)
    for r in rows:
        by_turn[r["turn"]][r["server"]] = r
    servers = sorted({r["server"] for r in rows})
    head = " | ".join(f"{s} cached | {s} TTFT s" for s in servers)
    out = [f"| turn | prompt | {head} |", "|" + "---|" * (2 + 2 * len(servers))]
    for turn, got in sorted(by_turn.items()):
        cells = " | ".join(f"{got[s]['cached_tokens']} | {got[s]['ttft_s']:.2f}" if s in got else "— | —"
                           for s in servers)
        out.append(f"| {turn} | {next(iter(got.values()))['prompt_words']} | {cells} |")
    return out


def combined_table(rows: list[dict]) -> list[str]:
    """One row per turn, one column per family: cached tokens / warm TTFT / cold TTFT (warm/cold)."""
    by_turn: dict[int, dict] = defaultdict(dict)
    for r in rows:
        by_turn[r["turn"]][r["family"]] = r
    fams = list(dict.fromkeys(r["family"] for r in rows))
    out = ["| turn | prompt | " + " | ".join(f"{f}: cached / warm / cold s (warm/cold)" for f in fams) + " |",
           "|---|---|" + "---|" * len(fams)]
    for turn, got in sorted(by_turn.items()):
        cells = []
        for f in fams:
            r = got.get(f)
            cold = f" / {r['ttft_cold_s']:.0f} (**{r['warm_over_cold']:.2f}**)" if r and "ttft_cold_s" in r else ""
            cells.append("—" if r is None else f"{r['cached_tokens']} / {r['ttft_warm_s']:.0f}{cold}")
        out.append(f"| {turn} | {next(iter(got.values()))['prompt_tokens']} | " + " | ".join(cells) + " |")
    return out


def main(paths: list[str]) -> None:
    if paths[:1] == ["--combined"]:
        rows = [json.loads(s) for path in paths[1:] for s in open(path)]
        print("\n".join(combined_table([r for r in rows if r["bench"] == "agent_session"])))
        return
    groups: dict[tuple, list] = defaultdict(list)
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r["bench"] in ("agent_session", "agent_http"):
                groups[r["bench"], r["family"]].append(r)
    for (bench, family), rows in groups.items():
        print(f"\n{family} ({'engine' if bench == 'agent_session' else 'HTTP'})\n")
        print("\n".join(session_table(rows) if bench == "agent_session" else http_table(rows)))


if __name__ == "__main__":
    main(sys.argv[1:])
