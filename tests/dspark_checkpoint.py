"""Write a tiny DeepSeek-V4-Flash-0731-shaped checkpoint in DeepSeek's official key layout: the V4 backbone
of tests/fixtures/v4_flash (4 layers, window 32, compress ratios 0/4/128/4) with its MTP head removed and
a random DSpark drafter added under `mtp.{0..S-1}.`, as the 0731 / 0813 / -DSpark releases store it:

  mtp.{s}.<V4 block: attn_norm, attn.*, ffn.*, hc_attn_*, hc_ffn_*>       every stage
  mtp.0.main_proj.weight [D, T*D], mtp.0.main_norm.weight [D]              the context projection
  mtp.{S-1}.hc_head_{fn,base,scale}, mtp.{S-1}.norm.weight                 the head
  mtp.{S-1}.markov_head.markov_w{1,2}.weight [V, r] (float32), mtp.{S-1}.confidence_head.proj.weight [1, D+r] (float32)

config.json gains dspark_block_size, dspark_markov_rank, dspark_target_layer_ids (the last three layers),
dspark_noise_token_id (V - 1) and S zero entries in compress_ratios; num_nextn_predict_layers stays 1, as
in the releases. Every new tensor is random, drawn with its V4 counterpart's mean and spread, so a
missing or misplaced one changes the drafts.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

FIXTURES = Path(__file__).parent / "fixtures"
MTP_ONLY = ("e_proj.", "h_proj.", "enorm.", "hnorm.", "norm.", "hc_head_")  # V4's MTP head, not a block part
MARKOV_RANK = 16


def _like(v: mx.array, key) -> mx.array:
    """Random values with v's mean, spread, shape and dtype (a constant tensor gets a 10% spread)."""
    x = v.astype(mx.float32)
    mean, std = x.mean(), mx.sqrt(((x - x.mean()) ** 2).mean())
    std = mx.where(std > 0, std, 0.1 * mx.abs(mean) + 1e-3)
    return (mean + std * mx.random.normal(v.shape, key=key)).astype(v.dtype)


def dspark_tensors(backbone: dict, cfg: dict, stages: int, seed: int) -> dict:
    """The backbone without its MTP head, plus a random DSpark drafter of `stages` stages."""
    keys = iter(mx.random.split(mx.random.key(seed), 4096))
    out = {k: v for k, v in backbone.items() if not k.startswith("mtp.")}
    block = {k[len("mtp.0."):]: v for k, v in backbone.items()
             if k.startswith("mtp.0.") and not k[len("mtp.0."):].startswith(MTP_ONLY)}
    D, V, T = cfg["hidden_size"], cfg["vocab_size"], len(cfg["dspark_target_layer_ids"])
    for s in range(stages):
        out.update({f"mtp.{s}.{name}": _like(v, next(keys)) for name, v in sorted(block.items())})
    last = f"mtp.{stages - 1}."
    out["mtp.0.main_proj.weight"] = (mx.random.normal((D, T * D), key=next(keys)) / (T * D) ** 0.5).astype(mx.bfloat16)
    out["mtp.0.main_norm.weight"] = _like(backbone["mtp.0.enorm.weight"], next(keys))
    for name in ("hc_head_fn", "hc_head_base", "hc_head_scale", "norm.weight"):
        out[last + name] = _like(backbone["mtp.0." + name], next(keys))
    r = cfg["dspark_markov_rank"]
    out[last + "markov_head.markov_w1.weight"] = 0.5 * mx.random.normal((V, r), key=next(keys))
    out[last + "markov_head.markov_w2.weight"] = 0.5 * mx.random.normal((V, r), key=next(keys))
    out[last + "confidence_head.proj.weight"] = mx.random.normal((1, D + r), key=next(keys)) / (D + r) ** 0.5
    return out


def dspark_config(base: dict, stages: int) -> dict:
    L = base["num_hidden_layers"]
    return dict(base, compress_ratios=base["compress_ratios"][:L] + [0] * stages, dspark_block_size=5,
                dspark_markov_rank=MARKOV_RANK, dspark_target_layer_ids=list(range(max(0, L - 3), L)),
                dspark_noise_token_id=base["vocab_size"] - 1)


def write_dspark_checkpoint(out: Path, *, stages: int = 3, seed: int = 0, drop: tuple[str, ...] = (),
                            src: Path = FIXTURES / "v4_flash") -> Path:
    """Write the checkpoint to `out` (created) on the backbone of `src` (an April-layout V4 folder with its
    MTP head); `drop` leaves those official keys out (partial drafters)."""
    base = json.loads((src / "config.json").read_text())
    backbone = {}
    for f in sorted(src.glob("*.safetensors")):
        backbone.update(mx.load(str(f)))
    cfg = dspark_config(base, stages)
    tensors = {k: v for k, v in dspark_tensors(backbone, cfg, stages, seed).items() if k not in drop}
    out.mkdir(parents=True, exist_ok=True)
    half = sorted(tensors)[len(tensors) // 2]  # two shards, split mid-alphabet, as a release spreads keys
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in tensors.items() if k < half},
              "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if k >= half}}
    weight_map = {}
    for name, part in shards.items():
        mx.save_safetensors(str(out / name), part, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
