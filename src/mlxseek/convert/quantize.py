"""Quantization recipes: which module gets how many bits, decided per path, recorded in config.json.

Everything goes through MLX's own affine group quantization, exactly as `nn.quantize` would do it:
a module is quantizable when it has `to_quantized` (Linear, Embedding, mlx-lm's SwitchLinear and
MultiLinear), and its weight becomes `mx.quantize(weight, group_size, bits, mode="affine")`. Groups
run along the last (input) axis, so quantizing a stack expert by expert, or a matrix block of rows by
block of rows, gives the very bytes `to_quantized` gives for the whole tensor.

The choices are written to config.json's `quantization` as mlx-lm records them (global
group_size/bits/mode, plus one entry per path that differs: a params dict, or `false` for a module
left in float), so `mlx_lm.load` and `mlxseek.load` rebuild the same modules without looking at
shapes. A module whose input dim is not a multiple of the group size stays float (recorded `false`,
listed in the conversion report). The router (`mlp.gate`: weight and e_score_correction_bias) is
never quantized and stays float32. Modules the source already stores in an MLX format (V4's FP4
experts, which are mxfp4 bit for bit) are recorded as they are and never requantized.

Recipes (bits per weight on a DeepSeek-V3-shaped model, MTP included, 16-bit scales and biases,
group 64: a 4-bit group costs 4 + 32/64 = 4.5 bits; computed by `size_summary`; at 4 bits the
683.6B parameters take 385 GB uniform, 394 GB experts, 406 GB mixed):

  uniform  every quantizable module at --q-bits.                       q4: 4.50 bpw   q2: 2.51 bpw
  experts  routed experts at --q-bits; attention, shared experts, dense MLPs, embeddings, lm_head
           and MTP projections at 8 bits (the ds4 approach: the routed experts are ~95% of the
           weights, so the rest is nearly free at 8 bits).                   q4: 4.61 bpw   q2: 2.67 bpw
  mixed    routed experts at --q-bits, but down_proj 2 bits higher in the first and last eighth
           of the MoE layers and in the MTP block (llama.cpp's Q4_K_M observation: down_proj and
           edge layers are the most sensitive); the always-active weights (attention, shared
           experts, dense MLPs, lm_head) at max(6, --q-bits), since decode reads them for every
           token; embeddings at 8 bits (one row per token is read).      q4: 4.75 bpw   q2: 2.80 bpw
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten

# Parameters stored in float32 whatever --dtype says (router, V4 mHC, sinks): the loader's own rule,
# so conversion and loading never disagree.
from ..checkpoint.precision import keep_fp32
from ..config import ModelConfig
from ..errors import ConversionError

MODE = "affine"
# Weight layouts. "transposed": MLX's own (out, in) with groups along `in`, what nn.quantize and mlx-lm
# write and Metal's fast path. "kmajor": (in, out) with groups along `out`, MLX's CPU backend's fast
# path (quantized_matmul/gather_qmm with transpose=False: ~3x faster there, see mlxseek.cpu.kmajor).
# Same bits per weight; kmajor applies to Linear and SwitchLinear modules whose `out` is a whole
# number of groups, and is recorded per module as "layout": "kmajor".
LAYOUTS = ("transposed", "kmajor")
KMAJOR = "kmajor"
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def natural_key(name: str) -> list:
    """Sort key putting model.layers.2 before model.layers.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_router(path: str) -> bool:
    """The MoE router (gate weight and e_score_correction_bias): never quantized, kept in float32."""
    return ".mlp.gate." in path or path.endswith(".mlp.gate")


@dataclass(frozen=True)
class RecipeContext:
    cfg: ModelConfig
    bits: int

    def layer_of(self, path: str) -> int | None:
        if path.startswith("mtp.block."):
            return self.cfg.mtp_layer_index
        m = _LAYER.match(path)
        return int(m[1]) if m else None

    def is_edge_moe_layer(self, idx: int | None) -> bool:
        if idx == self.cfg.mtp_layer_index:
            return True
        moe = [i for i in range(self.cfg.num_hidden_layers) if self.cfg.is_moe_layer(i)]
        k = max(1, math.ceil(len(moe) / 8))
        return idx in moe[:k] or idx in moe[-k:]


def _step_up(bits: int, steps: int) -> int:
    """`bits + steps`, rounded up to the next width MLX packs (2, 3, 4, 5, 6, 8)."""
    return next(b for b in BITS if b >= min(8, bits + steps))


def _uniform(path: str, ctx: RecipeContext) -> int:
    return ctx.bits


def _experts(path: str, ctx: RecipeContext) -> int:
    return ctx.bits if ".switch_mlp." in path else 8


def _mixed(path: str, ctx: RecipeContext) -> int:
    if ".switch_mlp." in path:
        edge = path.endswith(".down_proj") and ctx.is_edge_moe_layer(ctx.layer_of(path))
        return _step_up(ctx.bits, 2) if edge else ctx.bits
    if path.endswith("embed_tokens"):
        return 8
    return max(6, ctx.bits)


RECIPES: dict[str, Callable[[str, RecipeContext], int | None]] = {
    "uniform": _uniform, "experts": _experts, "mixed": _mixed,
}


@dataclass
class QuantPlan:
    """Per-module quantization choices for one model, and their config.json record."""

    recipe: str | None
    defaults: dict  # {"group_size", "bits", "mode"}: config.json's global entry
    params: dict[str, dict] = field(default_factory=dict)  # module path -> params, every quantized module
    skipped: dict[str, str] = field(default_factory=dict)  # module path -> why it stays float
    imported: frozenset = frozenset()  # modules the source already stores packed (V4 FP4 experts)

    def for_tensor(self, name: str) -> dict | None:
        """Params for output tensor `name` if it is the weight of a module this conversion quantizes."""
        if not name.endswith(".weight") or name[: -len(".weight")] in self.imported:
            return None
        return self.params.get(name[: -len(".weight")])

    def config_entry(self) -> dict:
        per_path = {p: v for p, v in self.params.items() if v != self.defaults}
        per_path.update({p: False for p in self.skipped})
        return {**self.defaults, **dict(sorted(per_path.items(), key=lambda kv: natural_key(kv[0])))}


def check_options(recipe: str, bits: int, group_size: int, layout: str = "transposed") -> None:
    if recipe not in RECIPES:
        raise ConversionError(f"--recipe {recipe!r}: unknown recipe; choose one of {', '.join(RECIPES)}")
    if bits not in BITS:
        raise ConversionError(f"--q-bits {bits}: MLX affine quantization packs {', '.join(map(str, BITS))} bits")
    if group_size not in GROUP_SIZES:
        raise ConversionError(f"--q-group-size {group_size}: choose one of {', '.join(map(str, GROUP_SIZES))}")
    if layout not in LAYOUTS:
        raise ConversionError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


def plan_quantization(model: nn.Module, cfg: ModelConfig, *, recipe: str | None, bits: int, group_size: int,
                      imported: dict | None = None, layout: str = "transposed") -> QuantPlan:
    """Walk `model` as nn.quantize would and record the recipe's choice for every quantizable module.

    recipe None quantizes nothing; `imported` ({module path: params}) are modules the source already
    stores packed in an MLX format (the key map's `Plan.quantization`): recorded, never requantized.
    layout "kmajor" records "layout": "kmajor" for the modules that can be stored so (see LAYOUTS)."""
    imported = imported or {}
    if recipe is not None:
        check_options(recipe, bits, group_size, layout)
    defaults = {"group_size": group_size, "bits": bits, "mode": MODE}
    if recipe is None and imported:
        defaults = dict(next(iter(imported.values())))
    plan = QuantPlan(recipe, defaults, dict(imported), imported=frozenset(imported))
    if recipe is None:
        return plan
    ctx, choose = RecipeContext(cfg, bits), RECIPES[recipe]
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or is_router(path) or path in imported:
            continue
        if keep_fp32(f"{path}.weight"):  # DSpark's Markov and confidence heads ship (and run) in float32
            plan.skipped[path] = "kept in float32 by the precision policy"
            continue
        b = choose(path, ctx)
        in_dim = module.weight.shape[-1]
        if b is None:
            plan.skipped[path] = "kept in float by the recipe"
        elif in_dim % group_size:
            plan.skipped[path] = f"input dim {in_dim} is not a multiple of group size {group_size}"
        else:
            plan.params[path] = {"group_size": group_size, "bits": b, "mode": MODE}
            if layout == KMAJOR and _kmajor_eligible(module, group_size):
                plan.params[path]["layout"] = KMAJOR
    return plan


def _kmajor_eligible(module: nn.Module, group_size: int) -> bool:
    # Embeddings are looked up by row and MultiLinear (absorbed MLA) is used both ways: keep those as is.
    from mlx_lm.models.switch_layers import SwitchLinear

    return type(module) in (nn.Linear, SwitchLinear) and module.weight.shape[-2] % group_size == 0


def quantize(w: mx.array, params: dict) -> tuple[mx.array, mx.array, mx.array]:
    """(packed uint32 weight, scales, biases), exactly what `to_quantized` stores for `w` (..., out, in);
    for a kmajor module, what mx.quantize stores for its transpose (..., in, out)."""
    if params.get("layout") == KMAJOR:
        w = mx.contiguous(w.swapaxes(-1, -2))
    return tuple(mx.quantize(w, group_size=params["group_size"], bits=params["bits"], mode=params["mode"]))


def dequantize(packed: tuple, params: dict) -> mx.array:
    """Inverse of `quantize`: the (..., out, in) float weight the packed bytes stand for."""
    w = mx.dequantize(*packed, group_size=params["group_size"], bits=params["bits"], mode=params["mode"])
    return w.swapaxes(-1, -2) if params.get("layout") == KMAJOR else w


def size_summary(model: nn.Module, plan: QuantPlan | None, dtype: mx.Dtype) -> dict:
    """Parameters and bits per weight of `model`'s parameters as converted (no weight is evaluated)."""
    float_bits = 8 * dtype.size
    total_params = total_bits = 0
    for name, p in tree_flatten(model.parameters()):
        module, leaf = name.rsplit(".", 1)
        n = math.prod(p.shape)
        params = plan.params.get(module) if plan and leaf == "weight" else None
        if params:
            # Affine groups carry one scale and one bias in the float dtype per `group_size` weights;
            # the microscaling modes (mxfp4, ...) one 8-bit shared exponent.
            group_bits = 2 * float_bits if params["mode"] == MODE else 8
            bits = n * (params["bits"] + group_bits / params["group_size"])
        else:
            bits = n * (32 if keep_fp32(name) else float_bits)
        total_params += n
        total_bits += bits
    return {"parameters": total_params, "bits": total_bits, "bits_per_weight": total_bits / max(1, total_params)}
