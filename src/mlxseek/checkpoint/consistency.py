"""Does config.json describe the checkpoint it sits beside? Checked from the key map's renamed keys and the
shard headers alone, before anything is built or allocated.

A config is only a claim: `num_hidden_layers: 1000000000` would otherwise make the loader build a
billion layers, and `n_routed_experts: 10**12` a trillion-expert router. Every count the model's size
depends on (layers, MTP layers, routed experts, vocabulary) is compared with what the shards store, so
what gets built is bounded by the checkpoint, never by the config. Shapes are then checked in full by
the loader against the model (`check_against_model`), still before a single weight is read.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import ModelConfig
from ..errors import WeightMismatchError
from .keymap import Plan
from .quant_record import quant_layout

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
# Tensors whose leading axis is the routed-expert count: the router and the stacked experts.
_EXPERT_AXIS = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate\.weight|switch_mlp\.\w+\.(weight|scales|biases))$")
_VOCAB_AXIS = ("model.embed_tokens.weight", "lm_head.weight")


def check_counts(cfg: ModelConfig, plan: Plan, store, folder: Path) -> None:
    """WeightMismatchError naming the config.json key and the stored evidence when the layer, MTP-layer,
    expert or vocabulary count that config.json claims is not the one the checkpoint holds."""
    where = f"{folder}: config.json does not match the checkpoint:"
    L, n_mtp = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    layers = {int(m[1]) for k in plan.source_of if (m := _LAYER.match(k))}
    if not layers:
        raise WeightMismatchError(f"{where} no model.layers.* tensors are stored (num_hidden_layers = {L})")
    missing = next((i for i in range(min(L, max(layers) + 2)) if i not in layers), None)
    if missing is not None and missing < L:
        stored = f"layers 0..{missing - 1}" if missing else "no layer 0"
        raise WeightMismatchError(
            f"{where} num_hidden_layers = {L} but the checkpoint stores {stored} and no tensor of layer "
            f"{missing} (model.layers.{missing}.*); fix num_hidden_layers or the shards")
    # Main layers 0..L-1 are there; the MTP layer at index L was renamed to mtp.*; more follow for n_mtp > 1.
    extra = sorted(i for i in layers if i >= L)
    # A DSpark drafter (plan.dspark_stages) is no MTP layer: num_nextn_predict_layers does not count it.
    stored_mtp = int(plan.has_mtp and not plan.dspark_stages) + sum(1 for i in extra if i < L + n_mtp)
    beyond = [i for i in extra if i >= L + max(n_mtp, 1)]
    if beyond:
        raise WeightMismatchError(
            f"{where} num_hidden_layers = {L} (+ num_nextn_predict_layers = {n_mtp}) but layer {beyond[0]} is "
            f"stored ({plan.source_of[_any_key(plan, beyond[0])]}); fix num_hidden_layers")
    if stored_mtp and stored_mtp != n_mtp:
        raise WeightMismatchError(
            f"{where} num_nextn_predict_layers = {n_mtp} but the checkpoint stores {stored_mtp} MTP layer(s) "
            f"(model.layers.{L}.* onwards); set num_nextn_predict_layers to {stored_mtp}")
    _check_leading_axes(cfg, plan, store, where)
    _check_half_floats(plan, store, folder)


def _check_half_floats(plan: Plan, store, folder: Path) -> None:
    """No release or converter mixes the two 16-bit floats (they are the same width, so a header whose
    BF16 was edited to F16 would read its bytes as other numbers): a mix is a corrupt header."""
    first: dict[str, str] = {}
    for src in plan.source_of.values():
        kind = store.dtype(src)
        if kind in ("F16", "BF16"):
            first.setdefault(kind, src)
    if len(first) == 2:
        raise WeightMismatchError(f"{folder}: the checkpoint mixes F16 ({first['F16']}) and BF16 ({first['BF16']}) "
                                  "tensors; one shard header's dtype is wrong: re-download or re-convert it")


def _any_key(plan: Plan, layer: int) -> str | None:
    return next((k for k in plan.source_of if k.startswith(f"model.layers.{layer}.")), None)


def _check_leading_axes(cfg: ModelConfig, plan: Plan, store, where: str) -> None:
    E, V = cfg.n_routed_experts, cfg.vocab_size
    for key, src in plan.source_of.items():
        shape = store.shape(src)
        if quant_layout(cfg, key.rpartition(".")[0]) == "kmajor":
            continue  # stored K-major: the leading axis is the input's, checked against the model later
        m = _EXPERT_AXIS.match(key)
        if m and int(m[1]) < cfg.num_hidden_layers and shape and shape[0] != E:
            raise WeightMismatchError(
                f"{where} {src} {tuple(shape)} holds {shape[0]} experts but config.json n_routed_experts is "
                f"{E}; fix n_routed_experts")
        if key in _VOCAB_AXIS and shape and shape[0] != V:
            raise WeightMismatchError(
                f"{where} {src} {tuple(shape)} holds {shape[0]} token rows but config.json vocab_size is {V}; "
                "fix vocab_size")
