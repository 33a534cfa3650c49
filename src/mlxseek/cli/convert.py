"""`mlxseek convert`: thin wrapper over `mlxseek.convert`."""

from __future__ import annotations

import click

from ..convert.calibrated import DEFAULT_CALIBRATION_TOKENS
from ..convert.quantize import BITS, GROUP_SIZES, LAYOUTS, RECIPES
from .group import library_errors, main


@main.command("convert")
@click.option("--hf-path", required=True, type=click.Path(file_okay=False),
              help="Hugging Face DeepSeek checkpoint folder (bf16, or the official FP8 release). Read only.")
@click.option("--mlx-path", required=True, type=click.Path(),
              help="Output folder. Written as MLX_PATH.partial/ and renamed when complete; "
                   "re-running an interrupted conversion resumes it.")
@click.option("-q", "--quantize", is_flag=True, help="Quantize to affine groups (MLX's quantized layers).")
@click.option("--q-bits", type=click.Choice([str(b) for b in BITS]), default="4", show_default=True,
              help="Bits per weight of the quantized modules (the recipe may raise some).")
@click.option("--q-group-size", type=click.Choice([str(g) for g in GROUP_SIZES]), default="64", show_default=True,
              help="Weights per scale/bias group. Modules whose input dim it does not divide stay float.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Dtype of unquantized weights, scales and biases [default: config.json's torch_dtype].")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="uniform", show_default=True,
              help="uniform: everything at --q-bits (4-bit: 4.50 bits/weight on V3). experts: routed experts at "
                   "--q-bits, the rest at 8 bits (4.61). mixed: experts at --q-bits with down_proj +2 bits in edge "
                   "layers, always-active weights at 6, embeddings at 8 (4.75). The router is never quantized.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="transposed", show_default=True,
              help="Quantized weight layout. transposed: MLX's own (mlx-lm loads it; Metal's fast path). "
                   "kmajor: (in, out) with groups along out, MLX's CPU backend's fast path at the same size; "
                   "only mlxseek loads it.")
@click.option("--drop-mtp", "--drop-drafter", "drop_mtp", is_flag=True,
              help="Leave out the drafter: the multi-token-prediction layer (as mlx_lm.convert does) or DSpark.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Text run through the model (one layer resident at a time) to weight each group's rounding "
                   "error by its columns' mean squared input: same bits and bytes, lower error where it matters. "
                   "Use text the model will see, not your evaluation text.")
@click.option("--calibration-tokens", type=int, default=DEFAULT_CALIBRATION_TOKENS, show_default=True,
              help="At most this many calibration tokens.")
@click.option("--target-bpw", type=float, default=None,
              help="With --calibration: choose bits and group size per module by measured sensitivity x "
                   "importance so the output lands just under this many bits per weight (as `info` counts them).")
@click.option("--fit", "fit", default=None, metavar="MACHINE",
              help="With --calibration: the --target-bpw that fills MACHINE's GPU wired limit (as `estimate` "
                   "counts it) after the latent cache at --context tokens.")
@click.option("--context", type=int, default=4096, show_default=True, help="Tokens of context --fit leaves room for.")
@click.option("--force", is_flag=True, help="Replace an existing --mlx-path.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@library_errors
def convert_command(hf_path, mlx_path, quantize, q_bits, q_group_size, dtype, recipe, layout, drop_mtp, calibration,
                    calibration_tokens, target_bpw, fit, context, force, quiet):
    """Convert an official DeepSeek checkpoint to an MLX folder, streaming: memory stays at about one
    tensor (one expert matrix), whatever the model size.

    \b
    Example:
      mlxseek convert --hf-path DeepSeek-V3 --mlx-path DeepSeek-V3-4bit -q --recipe experts
    """
    from ..convert.convert import convert

    if fit is not None:
        from ..tools.fit import fit_bits_per_weight

        if target_bpw is not None:
            raise click.UsageError("--fit and --target-bpw both set the size; pass one")
        target_bpw = fit_bits_per_weight(hf_path, machine=fit, context=context, drop_mtp=drop_mtp)
        if not quiet:
            click.echo(f"--fit {fit} --context {context}: target {target_bpw:.3f} bits/weight")
    convert(hf_path=hf_path, mlx_path=mlx_path, quantize=quantize, q_bits=int(q_bits),
            q_group_size=int(q_group_size), dtype=dtype, recipe=recipe, layout=layout, drop_mtp=drop_mtp,
            calibration=calibration, calibration_tokens=calibration_tokens, target_bpw=target_bpw,
            force=force, quiet=quiet)
