"""The bits per weight that fill one Mac: `estimate --q-bits auto` and `convert --fit MACHINE`.

Budget = the machine's default GPU wired limit (machines.py) minus the latent cache at `context` tokens;
bits per weight = 8 x budget / parameters (MTP included unless dropped), capped at what the converter's
largest option packs (8 bits in groups of 32: 8 + 32/32 bits with 16-bit scales and biases). `convert
--fit` hands this to the allocator as its --target-bpw, which lands at or just under it, so the
converted folder plus its cache fit wherever `estimate --q-bits auto` says they do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..config import ModelConfig
from ..convert.quantize import BITS, GROUP_SIZES
from ..errors import ConfigError
from . import machines as machines_mod
from .estimate import estimate

MAX_BPW = BITS[-1] + 32 / min(GROUP_SIZES)


def fit_bits_per_weight(config: Union[str, Path, dict, ModelConfig], *, machine: str, context: int = 4096,
                        drop_mtp: bool = False) -> float:
    """Bits per weight that fill `machine`'s wired limit with `context` tokens of cache beside the weights."""
    e = estimate(config, q_bits=4, machine=machine, context=context, drop_mtp=drop_mtp)
    m = machines_mod.machine(machine)
    params = 8 * e["size_bytes"] / e["bits_per_weight"]
    budget = m.wired_limit_bytes - e["kv_bytes_at_context"]
    if budget <= 0:
        raise ConfigError(f"--context {context}: the latent cache alone ({e['kv_bytes_at_context'] / 1e9:.1f} GB) "
                          f"exceeds {machine}'s GPU wired limit ({m.wired_limit_bytes / 1e9:.1f} GB); "
                          "choose a shorter context or a larger machine")
    return min(MAX_BPW, 8 * budget / params)


def estimate_auto(config: Union[str, Path, dict, ModelConfig], *, machine: str | None, context: int = 4096,
                  drop_mtp: bool = False, q_group_size: int = 64) -> dict:
    """`estimate` at the bits per weight `convert --fit machine --context N` targets. Per-token bytes scale
    the 4-bit figures by the size ratio (the allocator's mix is only known once calibrated)."""
    if machine is None:
        raise ConfigError("--q-bits auto: sizes the model to a machine; add --machine NAME")
    bpw = fit_bits_per_weight(config, machine=machine, context=context, drop_mtp=drop_mtp)
    e = estimate(config, q_bits=4, q_group_size=q_group_size, machine=machine, context=context, drop_mtp=drop_mtp)
    scale = bpw / e["bits_per_weight"]
    weights_per_token = round(e["weight_bytes_per_token"] * scale)
    e["bytes_per_token"] += weights_per_token - e["weight_bytes_per_token"]
    e.update(q_bits="auto", bits_per_weight=bpw, size_bytes=round(e["size_bytes"] * scale),
             weight_bytes_per_token=weights_per_token)
    e["resident_bytes"] = e["size_bytes"] + e["kv_bytes_at_context"]
    for d in e["by_component"].values():
        d["bytes"], d["bytes_per_token"] = round(d["bytes"] * scale), round(d["bytes_per_token"] * scale)
    fit = e["machine"]
    fit.update(fits=e["resident_bytes"] <= fit["wired_limit_bytes"],
               fits_raised_limit=e["resident_bytes"] <= fit["raised_limit_bytes"],
               roofline_tps=fit["bandwidth_gbs"] * 1e9 / e["bytes_per_token"])
    e.update(fits=fit["fits"], roofline_tps=fit["roofline_tps"])
    return e
