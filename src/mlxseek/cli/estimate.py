"""`mlxseek estimate`: will this DeepSeek model fit my Mac, and how fast can it decode? From config.json alone."""

from __future__ import annotations

import json

import click

from ..tools import estimate as estimate_mod
from ..tools import fit as fit_mod
from ..tools.machines import MACHINES
from .group import library_errors, main


def gb(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def params(n: float) -> str:
    return f"{n / 1e12:.3f}T" if n >= 1e12 else f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _fit_line(f: dict) -> str:
    verdict = "fits" if f["fits"] else "does NOT fit"
    if not f["fits"] and f["fits_raised_limit"]:
        verdict = "fits after raising the wired limit"
    return (f"{f['machine']} ({f['chip']}, {f['ram_bytes'] >> 30} GB, {f['bandwidth_gbs']:g} GB/s): {verdict}; "
            f"roofline {f['roofline_tps']:.1f} tok/s")


def report(e: dict) -> str:
    """The human-readable estimate."""
    fmt = e["recipe"] if e["recipe"] in ("bf16", "native") else f"{e['recipe']} {e['q_bits']}-bit g{e['q_group_size']}"
    if e["q_bits"] == "auto":
        fmt = "auto (calibrated mix sized to the machine)"
    lines = [
        f"{e['config']} ({e['model_type']})",
        f"parameters   {params(e['total_params'])} total, {params(e['active_params'])} active per token"
        + (f"; {e.get('drafter', 'MTP')} {params(e['mtp_params'])} ({params(e['hf_params'])} as stored on Hugging Face)"
           if e["mtp_params"] else ""),
        f"format       {fmt}: {e['bits_per_weight']:.2f} bits/weight, {gb(e['size_bytes'])} on disk "
        f"({e['size_bytes'] / 2**30:,.1f} GiB){'' if e['with_mtp'] else ', ' + e.get('drafter', 'MTP') + ' dropped'}",
        f"KV cache     {gb(e['kv_bytes_per_token'])}/token (uncompressed: {gb(e['kv_full_bytes_per_token'])}/token), "
        f"{gb(e['kv_bytes_at_context'])} at {e['context']:,} tokens",
        f"resident     {gb(e['resident_bytes'])} at {e['context']:,} tokens of context",
        f"per token    {gb(e['bytes_per_token'])} read ({gb(e['weight_bytes_per_token'])} of weights)",
    ]
    if e["mtp_params"] and e["with_mtp"]:
        lines.append(f"drafter      {e.get('drafter', 'MTP')}: {gb(e['drafter_bytes'])} of the size above "
                     "(--drop-drafter leaves it out)")
    if e.get("engram"):  # V4.1: tables on SSD, read by position; not part of the sizes above
        g = e["engram"]
        fits = ", ".join(g["fits_with_tables_on_ssd"]) or "none of the machines below"
        lines += [f"Engram       {gb(g['on_disk_bytes'])} in {g['tables']} tables on disk (layers {g['layers']}, "
                  f"{g['rows']:,} rows), never resident; {g['rows_per_token']} rows ({gb(g['bytes_per_token'])}) "
                  "read per token (--engram-memory-gb sets the hot-row cache)",
                  f"shipped      {gb(e['shipped_bytes'])}: the size above + the Engram tables",
                  f"fits         with the Engram tables on SSD: {fits}"]
    if e.get("not_counted"):
        lines.append(f"not counted  {', '.join(e['not_counted'])}: mlxseek runs text only")
    lines += [
        "",
        f"{'component':<18}{'params':>10}{'active':>10}{'size':>14}{'per token':>14}",
    ]
    for comp, d in sorted(e["by_component"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"{comp:<18}{params(d['params']):>10}{params(d['active_params']):>10}"
                     f"{gb(d['bytes']):>14}{gb(d['bytes_per_token']):>14}")
    lines.append("")
    if e["parallel"]:
        p = e["parallel"]
        lines.append(f"{p['machines']} machines, {p['kind']} parallel:")
        for k, r in enumerate(p["ranks"]):
            lines.append(f"  rank {k}: layers {r['layers'][0]}-{r['layers'][1] - 1}, weights {gb(r['weight_bytes'])}, "
                         f"resident {gb(r['resident_bytes'])}, reads {gb(r['bytes_per_token'])}/token")
    for f in [e["machine"]] if e["machine"] else e["machines_table"]:
        lines.append(_fit_line(f))
    lines.append("macOS lets the GPU wire ~75% of RAM (2/3 at 36 GB and below); raise it until reboot with "
                 "`sudo sysctl iogpu.wired_limit_mb=<MB>`.")
    return "\n".join(lines)


@main.command()
@click.option("--config", "config", required=True, metavar="PATH",
              help="config.json of the model (or a folder holding one); no weights are needed")
@click.option("--q-bits", default="4", show_default=True,
              help="bits of the quantized components, or auto: the bits per weight that fill --machine after the "
                   "cache at --context (what `convert --calibration --fit MACHINE` targets)")
@click.option("--q-group-size", type=int, default=64, show_default=True, help="affine quantization group size")
@click.option("--recipe", default="uniform", show_default=True,
              help=f"{' | '.join(estimate_mod.FORMATS)}: a recipe of `mlxseek convert`, bf16 (unquantized) or "
              "native (as DeepSeek ships it: FP8 blocks, V4's FP4 experts)")
@click.option("--machine", default=None, metavar="NAME", help=f"one of {', '.join(MACHINES)} (default: all)")
@click.option("--machines", type=int, default=1, show_default=True, help="number of identical machines")
@click.option("--parallel", default="pipeline", show_default=True, help="pipeline | expert (with --machines > 1)")
@click.option("--context", type=int, default=4096, show_default=True, help="tokens of context for cache and memory")
@click.option("--drop-mtp", "--drop-drafter", "drop_mtp", is_flag=True,
              help="size the model without its drafter (MTP module or DSpark)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@library_errors
def estimate(config, q_bits, q_group_size, recipe, machine, machines, parallel, context, drop_mtp, as_json):
    """Parameters, size, KV cache, memory fit and roofline decode speed of a DeepSeek config."""
    if q_bits == "auto":
        e = fit_mod.estimate_auto(config, machine=machine, context=context, drop_mtp=drop_mtp,
                                  q_group_size=q_group_size)
    else:
        if not q_bits.isdigit():
            raise click.BadParameter(f"{q_bits!r}: an integer or auto", param_hint="--q-bits")
        e = estimate_mod.estimate(config, q_bits=int(q_bits), q_group_size=q_group_size, recipe=recipe,
                                  machine=machine, machines=machines, parallel=parallel, context=context,
                                  drop_mtp=drop_mtp)
    click.echo(json.dumps(e, indent=2) if as_json else report(e))
