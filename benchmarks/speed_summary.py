"""Markdown tables from speed_table.py's JSON lines (what the README's Speed section shows).

    python benchmarks/speed_summary.py /tmp/speed.jsonl [more.jsonl ...]

speed_table.py prints the same tables after its JSON lines.
"""

from __future__ import annotations

import json
import sys


def _f(x, nd=2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def speed(rows: list[dict]) -> list[str]:
    out = ["| engine | store read | activations | prompt / generated | prefill tok/s | decode tok/s | achieved GB/s "
           "| % roofline | peak GB | mlxseek decode x | prefill x |", "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['engine']} | {r['model']} | — | — | error: {r['error'][:80]} |||||||")
            continue
        out.append(f"| {r['engine']} | {r['model']} | {r['activation_dtype']} | {r['prompt_tokens']} / {r['gen_tokens']} "
                   f"| {_f(r['prefill_tps'])} | {_f(r['decode_tps'])} | {_f(r['achieved_gbps'])} "
                   f"| {_f(r['pct_roofline'], 1)}% | {_f(r['peak_memory_gb'], 3)} | {_f(r.get('decode_speedup'))} "
                   f"| {_f(r.get('prefill_speedup'))} |")
    return out


def floor(rows: list[dict]) -> list[str]:
    cats = ["lm_head", "experts", "mla_projections", "shared_expert", "dense_mlp", "router", "everything_else"]
    out = ["| engine | step ms | matmul floor ms | step / floor | " + " | ".join(cats) + " |", "|" + "---|" * (4 + len(cats))]
    for r in rows:
        b = r["breakdown_ms"]
        out.append(f"| {r['engine']} | {_f(r['step_ms'], 1)} | {_f(r['kernel_floor_ms'], 1)} | {_f(r['floor_ratio'])} | "
                   + " | ".join(_f(b.get(c), 1) for c in cats) + " |")
    return out


def long_context(rows: list[dict]) -> list[str]:
    out = ["| engine | latent cache | bytes/token (all layers) | decode tok/s @256 | @8192 | 8192 / 256 |",
           "|" + "---|" * 6]
    for r in rows:
        cache = "float" if r.get("kv_bits") is None else f"{r['kv_bits']}-bit"
        if "error" in r:
            out.append(f"| {r['engine']} | {cache} | — | — | fails: {r['error'][:90]} | — |")
            continue
        out.append(f"| {r['engine']} | {cache} | {r['cache_bytes_per_token']:.0f} | {_f(r['decode_tps_256'])} "
                   f"| {_f(r['decode_tps_8192'])} | {_f(r['ratio_8192_vs_256'])} |")
    return out


def long_prompt(peaks: list[dict], drift: list[dict]) -> list[str]:
    out = []
    for p in peaks:
        out.append(f"{p['prompt_tokens']}-token prompt: {_f(p['prefill_tps'], 1)} tok/s, peak {_f(p['peak_memory_gb'], 3)} GB "
                   f"= weights {_f(p['weights_gb'], 3)} + {_f(p['prefill_overhead_gb'], 3)} GB; chunks {p.get('chunks', '')}")
    out += ["", "| latent cache | decode tok/s at that context | max abs logit drift | mean abs drift | mean abs logit "
            "| KL(full ‖ quantized) | same top-1 |", "|" + "---|" * 7]
    for r in drift:
        cache = "float" if r["kv_bits"] is None else f"{r['kv_bits']}-bit"
        if r["kv_bits"] is None:
            out.append(f"| {cache} | {_f(r['decode_tps'])} | — | — | — | — | — |")
        else:
            out.append(f"| {cache} | {_f(r['decode_tps'])} | {r['max_abs_drift']:.3g} | {r['mean_abs_drift']:.3g} "
                       f"| {r['mean_abs_logit']:.3g} | {max(r['kl'], 0.0):.2g} | {r['top1_agree']:.0%} |")
    return out


def render(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r.get("measure"), []).append(r)
    parts = []
    for env in by.get("environment", []):
        parts.append(f"MLX {env['mlx']} on {env['device']}, BLAS {env['blas']}")
    if by.get("speed"):
        parts += ["", *speed(by["speed"])]
    if by.get("kernel_floor"):
        parts += ["", *floor(by["kernel_floor"])]
    if by.get("long_context"):
        parts += ["", *long_context(by["long_context"])]
    if by.get("prefill_peak") or by.get("kv_drift"):
        parts += ["", *long_prompt(by.get("prefill_peak", []), by.get("kv_drift", []))]
    return "\n".join(parts)


def main() -> None:
    rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
    print(render(rows))


if __name__ == "__main__":
    main()
