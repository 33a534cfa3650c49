"""Pipeline and expert parallelism on MLX's own distributed engine (`mx.distributed`: the ring backend
over TCP/Thunderbolt, MPI where present), with each rank reading only its own weights.

- pipeline: rank r runs a contiguous range of decoder layers, balanced by stored bytes. Hidden states
  go to the next rank with `send`/`recv_like` (neighbours only: all the ring backend allows), and the
  last stage's output reaches every rank through `all_gather`, so all ranks sample the same token.
  The embedding, final norm and LM head are replicated (under 1% of a V3's bytes); MTP is dropped.
- expert: rank r holds a contiguous slice of every MoE layer's routed experts (the MTP block's too);
  attention, dense MLPs, shared experts and the router are replicated. Each rank applies only its
  experts (tokens routed elsewhere contribute zero) and `all_sum` combines the partial outputs.

Shapes: B batch, L tokens, D hidden, K experts per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ..checkpoint.keymap import SCALE_SUFFIX, Plan, Target
from ..checkpoint.slices import SlicedStore, tensor_nbytes
from ..config import ModelConfig
from ..errors import ConfigError
from ..layers.masks import causal_mask
from ..layers.moe import DeepSeekMoE
from ..models.deepseek_v3 import Model
from ..models.families import has, supported

PARALLEL_MODES = ("pipeline", "expert")
SUPPORTED_TYPES = supported("distributes")  # the model_types whose family supports it
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Shard:
    """What one rank holds: decoder layers [start, end) and routed experts [start, end) of each MoE."""

    parallel: str
    rank: int
    size: int
    layers: tuple[int, int]
    experts: tuple[int, int]


def layer_of(name: str) -> Optional[int]:
    m = _LAYER.match(name)
    return int(m[1]) if m else None


def split_layers(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges, one per rank, each non-empty, cut where the running byte count is
    closest to k/n of the total (DeepSeek's first dense layers are smaller than MoE layers)."""
    total, cum = sum(sizes), [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    cuts = [0]
    for k in range(1, n):
        lo, hi = cuts[-1] + 1, len(sizes) - (n - k)  # leave at least one layer for every later rank
        cuts.append(min(range(lo, hi + 1), key=lambda i: abs(cum[i] - total * k / n)))
    cuts.append(len(sizes))
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def split_experts(n_experts: int, n: int) -> list[tuple[int, int]]:
    base, extra = divmod(n_experts, n)
    bounds = [0]
    for r in range(n):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return [(bounds[r], bounds[r + 1]) for r in range(n)]


def _target_bytes(store, plan: Plan, t: Target) -> int:
    keys = [plan.source_of[s] for s in t.sources]
    keys += [plan.source_of[s + SCALE_SUFFIX] for s in t.sources if s + SCALE_SUFFIX in plan.source_of]
    return sum(tensor_nbytes(store, k) for k in keys)


def plan_shard(cfg: ModelConfig, store, plan: Plan, *, rank: int, size: int, parallel: str) -> Shard:
    """The Shard of `rank` among `size` ranks; layer ranges are balanced by the store's bytes."""
    if parallel not in PARALLEL_MODES:
        raise ConfigError(f"parallel={parallel!r}: choose one of {', '.join(PARALLEL_MODES)}")
    if not has(cfg, "distributes"):
        raise ConfigError(f"{cfg.model_type}: distributed loading supports {', '.join(SUPPORTED_TYPES)}; "
                          "load this model on one machine")
    L, E = cfg.num_hidden_layers, cfg.n_routed_experts or 0
    layers, experts = (0, L), (0, E)
    if parallel == "pipeline":
        if size > L:
            raise ConfigError(f"--distributed pipeline: {size} ranks but the model has {L} layers "
                              "(config.json num_hidden_layers); use at most that many ranks")
        sizes = [0] * L
        for t in plan.targets:
            i = layer_of(t.outputs[0])
            if i is not None and i < L:
                sizes[i] += _target_bytes(store, plan, t)
        layers = split_layers(sizes, size)[rank]
    else:
        if size > E:
            raise ConfigError(f"--distributed expert: {size} ranks but the model has {E} routed experts "
                              "(config.json n_routed_experts); use at most that many ranks, or pipeline")
        experts = split_experts(E, size)[rank]
    return Shard(parallel, rank, size, layers, experts)


def restrict_plan(plan: Plan, shard: Shard, store) -> tuple[Plan, dict[str, tuple[int, int]]]:
    """The part of `plan` this rank loads, and the stacked tensors to read only some rows of
    ({checkpoint key: (start, stop)}, for `SlicedStore`). Other ranks' keys leave the plan entirely, so
    the loader's strictness checks (every key used once) apply to this rank's share."""
    targets, rows = [], {}
    e0, e1 = shard.experts
    start, end = shard.layers
    for t in plan.targets:
        i = layer_of(t.outputs[0])
        others = t.outputs[0].startswith("mtp.") or (i is not None and not start <= i < end)
        if shard.parallel == "pipeline" and others:
            continue
        if shard.parallel == "expert" and ".switch_mlp." in t.outputs[0]:
            if t.op == "copy":  # a stacked (E, ...) tensor: read rows e0:e1 only
                rows[plan.source_of[t.sources[0]]] = (e0, e1)
            else:  # per-expert tensors (HF layout): stack only ours
                t = replace(t, sources=t.sources[e0:e1])
        targets.append(t)
    keep = {s for t in targets for s in t.sources}
    keep |= {s + SCALE_SUFFIX for s in keep if s + SCALE_SUFFIX in plan.source_of}
    source_of = {k: v for k, v in plan.source_of.items() if k in keep}
    has_mtp = plan.has_mtp and shard.parallel != "pipeline"
    return Plan(targets, [], source_of, has_mtp, plan.quantization), rows


class PipelineStage(nn.Module):
    """Replaces `Model.model` on one pipeline rank. Other ranks' layers are None, so parameter paths
    stay `model.layers.{i}` (the checkpoint's) and nothing is allocated for them."""

    def __init__(self, inner: nn.Module, shard: Shard, group):
        super().__init__()
        self.embed_tokens, self.norm = inner.embed_tokens, inner.norm
        start, end = shard.layers
        self.layers = [layer if start <= i < end else None for i, layer in enumerate(inner.layers)]
        self.shard, self.group = shard, group

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings  # (B, L, D)
        rank, size = self.shard.rank, self.shard.size
        local = self.layers[self.shard.layers[0]:self.shard.layers[1]]
        cache = cache if cache is not None else [None] * len(local)
        mask = causal_mask(h.shape[1], cache[0].offset if cache[0] is not None else 0)
        if rank > 0:
            h = mx.distributed.recv_like(h, rank - 1, group=self.group)
        for layer, c in zip(local, cache):
            h = layer(h, mask, c)
        if rank < size - 1:
            h = mx.distributed.send(h, rank + 1, group=self.group)
            if cache[-1] is not None:
                # Chunked prefill evaluates only the caches: make ours carry the send, or the next
                # rank would wait for hidden states this rank never sends. (The quantized latent
                # cache keeps its rotary keys in an inner KVCache.)
                holder = getattr(cache[-1], "rope", cache[-1])
                holder.keys = mx.depends(holder.keys, h)
        B = h.shape[0]
        return self.norm(mx.distributed.all_gather(h, group=self.group)[-B:])  # the last stage's output


class PipelineModel(Model):
    """A `Model` whose decoder runs as one pipeline stage; caches cover the local layers only."""

    def __init__(self, cfg: ModelConfig, shard: Shard, group):
        super().__init__(cfg, with_mtp=False)
        self.model = PipelineStage(self.model, shard, group)

    def make_cache(self, **kwargs) -> list:
        start, end = self.model.shard.layers
        return self.layer_caches(end - start, **kwargs)


def build_sharded(cfg: ModelConfig, shard: Shard, group, *, with_mtp: bool) -> Model:
    """The model skeleton of one rank (lazy: nothing is allocated until weights are loaded)."""
    if shard.parallel == "pipeline":
        return PipelineModel(cfg, shard, group)
    model = Model(cfg, with_mtp=with_mtp)
    swaps = [(p, DeepSeekMoE(cfg, experts=shard.experts, group=group))
             for p, m in model.named_modules() if isinstance(m, DeepSeekMoE)]
    model.update_modules(tree_unflatten(swaps))
    return model


class ShardPlacement:
    """Loader placement for one rank (see `mlxseek.loading.placement`)."""

    def __init__(self, cfg: ModelConfig, store, plan: Plan, group, parallel: str):
        self.group = group
        self.shard = plan_shard(cfg, store, plan, rank=group.rank(), size=group.size(), parallel=parallel)

    def restrict(self, store, plan: Plan):
        plan, rows = restrict_plan(plan, self.shard, store)
        return (SlicedStore(store, rows) if rows else store), plan

    def build(self, cfg: ModelConfig, *, with_mtp: bool) -> Model:
        return build_sharded(cfg, self.shard, self.group, with_mtp=with_mtp)

    def finish(self, model) -> None:
        model.shard = self.shard
