"""`mlxseek info DIR`: layers, parameters, bytes on disk and per decoded token, and quantization of a checkpoint."""

from __future__ import annotations

import json

import click

from ..tools import info as info_mod
from .estimate import gb, params
from .group import library_errors, main


def report(i: dict) -> str:
    q = i["quantization"]
    if q["format"] == "mlx":
        extra = ", ".join(f"{n} paths {label}" for label, n in q["overrides"].items())
        quant = f"{q['mode']} {q['bits']}-bit, group {q['group_size']}"
        quant += (f", recipe {q['recipe']}" if q["recipe"] else "") + (f" ({extra})" if extra else "")
        if q.get("calibrated"):
            quant += ", calibrated" + (f" to {q['target_bpw']:g} bits/weight" if q.get("target_bpw") else "")
        quant += f", layout {q['layout']}"
    elif q["format"] == "fp8":
        quant = f"FP8 {q['fmt']} blocks {q['weight_block_size']}"
        quant += f", {q['scale_fmt']} scales" if q["scale_fmt"] else ""
    else:
        quant = f"none ({q['dtype']})"
    lay, rt = i["layers"], i["runtime"]
    where = " ".join(filter(None, (rt.get("source"), rt.get("path") or rt.get("reason"))))  # source: the pip wheel
    mtp = ""
    if lay["mtp"]:
        mtp = f", MTP {lay['mtp']}" + ("" if lay["mtp_in_checkpoint"] else " (not in this checkpoint)")
    return "\n".join([
        f"{i['path']}: {i['architecture']} ({i['model_type']})",
        f"layers         {lay['total']} ({lay['dense']} dense, {lay['moe']} MoE){mtp}",
        f"parameters     {params(i['total_params'])} total, {params(i['active_params'])} active per token"
        + (f"; MTP {params(i['mtp_params'])}" if i["mtp_params"] and not _is_dspark(i) else ""),
        *([_dspark_line(i["drafter"])] if _is_dspark(i) else []),
        *(_engram_lines(i) if i.get("engram") else []),
        f"on disk        {gb(i['bytes_on_disk'])} ({i['bits_per_weight']:.2f} bits/weight)",
        f"per token      {gb(i['bytes_per_token'])} of weights read per decoded token",
        f"quantization   {quant}",
        f"runtime        MLX {rt['mlx']} on {rt['device']}, BLAS {rt['blas']}" + (f" ({where})" if where else ""),
    ])


def _engram_lines(i: dict) -> list[str]:
    g = i["engram"]
    return [f"Engram         {g['tables']} tables at layers {g['layers']}: {g['rows']:,} rows, {params(g['params'])} "
            f"parameters, {gb(g['bytes'])} on disk, never resident; {g['rows_per_token']} rows "
            f"({gb(g['bytes_per_token'])}) read per token (not in the figures above)",
            f"backbone       {gb(i['backbone_bytes'])} without the Engram tables and the drafter"] + (
        [f"not run        {gb(i['unused_bytes'])} the text model never loads (vision tower, image-token routing)"]
        if i["unused_bytes"] else [])


def _is_dspark(i: dict) -> bool:
    return (i.get("drafter") or {}).get("kind") == "dspark"


def _dspark_line(d: dict) -> str:
    return (f"drafter        DSpark, {d['stages']} stages, block {d['block_size']}, reads layers "
            f"{d['target_layer_ids']}: {params(d['params'])} parameters, {gb(d['bytes'])} (not in the figures above)")


@main.command()
@click.argument("path", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@library_errors
def info(path, as_json):
    """What a checkpoint folder holds, from config.json and the safetensors headers (no weights are read)."""
    i = info_mod.info(path)
    click.echo(json.dumps(i, indent=2) if as_json else report(i))
