"""`mlxseek convert`: thin wrapper over `mlxseek.convert`."""

from __future__ import annotations

import click

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
@click.option("--force", is_flag=True, help="Replace an existing --mlx-path.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@library_errors
def convert_command(hf_path, mlx_path, quantize, q_bits, q_group_size, dtype, recipe, layout, drop_mtp, force,
                    quiet):
    """Convert an official DeepSeek checkpoint to an MLX folder, streaming: memory stays at about one
    tensor (one expert matrix), whatever the model size.

    \b
    Example:
      mlxseek convert --hf-path DeepSeek-V3 --mlx-path DeepSeek-V3-4bit -q --recipe experts
    """
    from ..convert.convert import convert

    convert(hf_path=hf_path, mlx_path=mlx_path, quantize=quantize, q_bits=int(q_bits),
            q_group_size=int(q_group_size), dtype=dtype, recipe=recipe, layout=layout, drop_mtp=drop_mtp,
            force=force, quiet=quiet)
