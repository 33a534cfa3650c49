"""Independent references for parity tests: mlx-lm's own DeepSeek models on the same weights.

Nothing here goes through mlxseek's key map or loader: weights are read with safetensors, FP8 blocks
are dequantized with NumPy in float32, and mlx-lm's own `sanitize` stacks experts and splits kv_b.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from st_io import read_float32, read_raw


def read_checkpoint(folder: Path) -> tuple[dict, dict, dict]:
    """(config, {key: float32 array}, {key: safetensors dtype})."""
    cfg = json.loads((folder / "config.json").read_text())
    tensors, dtypes = {}, {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(read_float32(f))
        dtypes.update({k: v["dtype"] for k, v in read_raw(f)[0].items()})
    return cfg, tensors, dtypes


def numpy_weights(cfg: dict, tensors: dict, dtypes: dict) -> dict[str, np.ndarray]:
    """Float32 NumPy weights, FP8 128x128 blocks dequantized, MTP layer stripped (mlx-lm lacks MTP)."""
    mtp_prefix = f"model.layers.{cfg['num_hidden_layers']}."
    bm, bn = (cfg.get("quantization_config") or {}).get("weight_block_size", (128, 128))
    out = {}
    for k, w in tensors.items():
        if k.startswith(mtp_prefix) or k.endswith("_scale_inv"):
            continue
        if dtypes[k] == "F8_E4M3":
            s = tensors[k + "_scale_inv"]
            w = w * np.repeat(np.repeat(s, bm, 0), bn, 1)[: w.shape[0], : w.shape[1]]
        out[k] = w
    return out


def mlx_lm_model(folder: Path):
    """mlx-lm's DeepseekV2/V3/V32 Model with the checkpoint's weights, all float32."""
    from mlx_lm.models import deepseek_v2, deepseek_v3, deepseek_v32

    cfg, tensors, dtypes = read_checkpoint(folder)
    mod = {"deepseek_v2": deepseek_v2, "deepseek_v3": deepseek_v3, "deepseek_v32": deepseek_v32}[cfg["model_type"]]
    model = mod.Model(mod.ModelArgs.from_dict(cfg))
    weights = {k: mx.array(v) for k, v in numpy_weights(cfg, tensors, dtypes).items()}
    weights = model.sanitize(weights)
    model.load_weights(list(weights.items()), strict=True)
    model.update(tree_map(lambda a: a.astype(mx.float32), model.parameters()))
    mx.eval(model.parameters())
    return model


def greedy(model, prompt: mx.array, n: int, cache) -> list[int]:
    """Prefill then n argmax decode steps, through the model's cache."""
    logits = model(prompt[None], cache=cache)
    out = []
    for _ in range(n):
        tok = int(mx.argmax(logits[0, -1]))
        out.append(tok)
        logits = model(mx.array([[tok]]), cache=cache)
    return out
