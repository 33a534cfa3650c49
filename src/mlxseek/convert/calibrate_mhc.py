"""Calibration statistics for DeepSeek-V4 (mHC): calibrate.py's streaming pass, with what V4 carries between
layers: the hc_mult residual streams (B, L, n, D) in place of one hidden state, and the token ids, which the
hash-routed layers read. Each layer (attention with its compressors and indexer, the hash- or score-routed
MoE, both mHC sites) runs over whole chunks from position 0 with no cache, as prefill does, and is dropped.

FP4 experts: below 4 bits the converter hands them to the key map as `stack_experts` (dequantized from FP4,
see requantize.py), so they run, and are recorded, as float experts; otherwise they run as the mxfp4
modules the loader builds and carry no recorder (they are stored as they are, never requantized).
Shapes: B chunks per batch, L tokens per chunk, n = hc_mult streams, D hidden.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn

from ..backend import backend_policy
from ..checkpoint.keymap import DRAFTER_PREFIXES
from ..layers.v4.mhc import expand_streams
from ..models import build_model
from .calibrate import RAM_BYTES, Activations, Statistics, _Holder, _LinearRecorder, attach, check_runner
from .quantize import is_router
from .resident import load_resident
from .stream import Source


def build_stored(source: Source) -> nn.Module:
    """The model, lazy, with the modules the source stores packed (V4 FP4 experts) as MLX quantized modules."""
    model = build_model(source.cfg, with_mtp=source.plan.has_mtp)
    if source.plan.quantization:
        nn.quantize(model, class_predicate=lambda path, m: source.plan.quantization.get(path, False))
    return model


def collect_mhc(source: Source, batches: list[np.ndarray], *, ram_bytes: int = RAM_BYTES,
                on_layer=None) -> Statistics:
    """calibrate.collect for a V4 source: the same statistics, the same on_layer(prefix, module, stats) hook."""
    cfg = source.cfg
    check_runner(cfg, "mhc")
    source = dataclasses.replace(source, dtype=backend_policy().dtype)
    model = build_stored(source)
    backbone, measuring, on_layer = model.model, on_layer is not None, on_layer or (lambda *_: None)
    stats = Statistics.of(batches)
    width = 4 * cfg.hc_mult * cfg.hidden_size * stats.tokens  # float32 streams of every token
    with tempfile.TemporaryDirectory(prefix="mlxseek-calibration-") as tmp:
        acts = Activations(Path(tmp) if width > ram_bytes else None)
        load_resident(backbone.embed_tokens, source, "model.embed_tokens.")
        for k, b in enumerate(batches):
            acts.put(k, expand_streams(backbone.embed_tokens(mx.array(b)), cfg.hc_mult))
        on_layer("model.", _Holder(embed_tokens=backbone.embed_tokens), stats)
        backbone.embed_tokens = nn.Identity()
        for i in range(len(backbone.layers)):
            layer, prefix = backbone.layers[i], f"model.layers.{i}."
            load_resident(layer, source, prefix)
            attach(layer, prefix, stats)
            for k, b in enumerate(batches):
                acts.put(k, layer(acts.get(k, source.dtype), mx.array(b), None))
            on_layer(prefix, layer, stats)
            backbone.layers[i] = nn.Identity()  # drop its weights before the next layer is read
            del layer  # this frame's reference too, or clear_cache frees nothing (as calibrate._through_layer)
            mx.clear_cache()
        load_resident(backbone.hc_head, source, "model.hc_head.")
        load_resident(backbone.norm, source, "model.norm.")
        head = stats.get("lm_head", 1, cfg.hidden_size)
        for k in range(len(batches)):  # lm_head's input only: its (T, vocab) output is not needed
            _LinearRecorder(nn.Identity(), head)(backbone.norm(backbone.hc_head(acts.get(k, source.dtype))))
    load_resident(model.lm_head, source, "lm_head.")
    on_layer("", _Holder(lm_head=model.lm_head), stats)
    model.lm_head = nn.Identity()
    stats.weight_only.append("model.embed_tokens")
    _drafter(model, source, stats, on_layer if measuring else None)
    return stats


def _drafter(model: nn.Module, source: Source, stats: Statistics, on_layer) -> None:
    """The MTP or DSpark drafter sees no recorded input (weight-only statistics); measured when allocating."""
    for prefix in DRAFTER_PREFIXES:
        drafter = getattr(model, prefix[:-1], None)
        if drafter is None:
            continue
        stats.weight_only += [prefix + rel for rel, m in drafter.named_modules()
                              if rel and hasattr(m, "to_quantized") and not is_router(prefix + rel)]
        if on_layer is not None:
            load_resident(drafter, source, prefix)
            on_layer(prefix, drafter, stats)
