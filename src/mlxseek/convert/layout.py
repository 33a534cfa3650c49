"""The output layout of a conversion, fixed before any weight is read.

The key map runs once over shape-only stand-ins of the source tensors (lazy `mx.zeros`, never
evaluated), so the shape and dtype of every output tensor, quantized ones included, come from the same
code that will produce the values. That gives the shard layout and the exact output size up front, and
lets the converter check every name and shape against the model built from config.json before it
writes a byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from ..checkpoint.keymap import SCALE_SUFFIX, Materializer, Plan, Target
from ..config import ModelConfig
from ..errors import CheckpointError, WeightMismatchError
from .quantize import QuantPlan, keep_fp32, natural_key, quantize
from .reader import ShapeOnly, SourceReader


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: mx.Dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.size


@dataclass(frozen=True)
class Job:
    """One key-map Target: the output tensors it writes, and how much source it reads."""

    target: Target
    outputs: tuple[TensorSpec, ...]
    quant: dict  # float output name -> quantization params (its .weight/.scales/.biases are outputs)
    float_shapes: dict  # float output name -> shape before quantization
    source_bytes: int

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.outputs)


def _source_bytes(reader: SourceReader, plan: Plan, keys: tuple[str, ...]) -> int:
    keys = tuple(plan.source_of[k] for k in keys)  # Target sources are renamed keys
    keys = keys + tuple(k + SCALE_SUFFIX for k in keys if k + SCALE_SUFFIX in reader)
    return sum(reader.nbytes_of(k) for k in keys)


def plan_jobs(reader: SourceReader, cfg: ModelConfig, plan: Plan, quant: QuantPlan | None, dtype: mx.Dtype):
    """Jobs in layer order, plus each key-map output's shape (before our quantization) for checking."""
    mat = Materializer(ShapeOnly(reader), cfg, plan, dtype=dtype, keep_fp32=keep_fp32)
    jobs, float_shapes = [], {}
    for t in sorted(plan.targets, key=lambda t: natural_key(t.outputs[0])):
        try:
            lazy = mat.materialize(t)
        except (ValueError, OverflowError, RuntimeError) as e:  # mx.stack / reshape on shapes that disagree
            raise CheckpointError(f"{reader.folder}: cannot build {', '.join(t.outputs)} from "
                                  f"{t.sources[0]} and {len(t.sources) - 1} more ({e})") from None
        specs, qmap, shapes = [], {}, {}
        for name, a in lazy.items():
            shapes[name] = float_shapes[name] = tuple(a.shape)
            params = quant.for_tensor(name) if quant else None
            if params is None:
                specs.append(TensorSpec(name, a.dtype, tuple(a.shape)))
                continue
            qmap[name] = params
            base = name[: -len("weight")]
            for suffix, q in zip(("weight", "scales", "biases"), quantize(a, params)):
                specs.append(TensorSpec(base + suffix, q.dtype, tuple(q.shape)))
        jobs.append(Job(t, tuple(specs), qmap, shapes, _source_bytes(reader, plan, t.sources)))
    dropped = {plan.source_of[k] for k in plan.dropped}  # e.g. the MTP layer under --drop-mtp
    unused = sorted(k for k in reader.keys() if k.endswith(SCALE_SUFFIX) and k not in mat.used_scales
                    and k[: -len(SCALE_SUFFIX)] not in dropped)
    if unused:
        raise WeightMismatchError(f"{reader.folder}: scale tensors with no float8 weight: {', '.join(unused[:10])}")
    return jobs, float_shapes


def assign_shards(jobs: list[Job], max_bytes: int) -> list[list[Job]]:
    """Greedy, in order, like mlx-lm's make_shards; a job never straddles two shards."""
    shards: list[list[Job]] = []
    size = 0
    for job in jobs:
        if not shards or (size + job.nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(job)
        size += job.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
