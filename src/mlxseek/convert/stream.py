"""Streaming one shard: read a piece of the source, run it through the key map, quantize, write, forget.

A piece is what keeps memory bounded: one expert of a `stack_experts` target (written at its slot
of the preallocated (E, out, in) stack), one block of rows of a large matrix (FP8-block aligned, so
dequantization is unchanged), or a whole small target (`split_kv_b`, norms). Every piece goes through
`Materializer.materialize`, the same code the loader uses, and is then quantized with the recorded
parameters. Since groups run along rows' last axis, the bytes equal quantizing the whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from ..checkpoint.keymap import SCALE_SUFFIX, Materializer, Plan, Target
from ..config import ModelConfig
from .layout import Job, TensorSpec
from .quantize import GROUP_SIZES, KMAJOR, keep_fp32, quantize
from .reader import RowWindow, SourceReader
from .report import TensorError, error_terms
from .weighted import quantize_weighted
from .writer import ShardWriter

# Largest float32 piece of one matrix processed at once: 128 rows of a DeepSeek-V3 expert matrix
# (2048 x 7168). Small pieces stay in the CPU caches through the ~20 passes of dequantize, cast,
# quantize and error measurement: on this project's Linux box 4 MiB pieces cut the peak RSS from
# 0.86 to 0.30 GB and ran no slower than whole 56 MiB experts.
PIECE_BYTES = 4 << 20
# Quantization error is measured on this many evenly spaced experts of each stack (all of them for
# up to this many): measuring doubles the CPU cost of a piece, and routed experts are ~95% of V3.
MEASURED_EXPERTS = 16
# ... and on every MEASURED_ROW_STRIDE-th row of each measured matrix: the error statistics cost ~3x the
# quantization itself on MLX's CPU backend, and a piece starts on a multiple of 128 rows of its matrix,
# so the sampled rows are the same however a tensor is split. The report says so ("measured_rows").
MEASURED_ROW_STRIDE = 8


@dataclass(frozen=True)
class Source:
    reader: SourceReader
    cfg: ModelConfig
    plan: Plan
    dtype: mx.Dtype
    stats: object = None  # calibrate.Statistics: quantize by importance-weighted error (weighted.py)

    def materializer(self, store) -> Materializer:
        return Materializer(store, self.cfg, self.plan, dtype=self.dtype, keep_fp32=keep_fp32)


class Piece(NamedTuple):
    row: int  # first flat row of the outputs it fills (see ShardWriter.write)
    arrays: dict  # {float output name: lazy array}
    done: int = 0  # source tensors finished once this piece is written (for progress)
    measure: bool = True  # compute its quantization error for the report


def row_pieces(src: Source, out: str, key: str) -> Iterator[tuple[int, dict[str, mx.array]]]:
    """(first row, {out: lazy array}) for renamed source `key` copied into output `out`, block by block."""
    orig = src.plan.source_of[key]
    shape = src.reader.shape(orig)
    target = Target("copy", (out,), (key,))
    if len(shape) != 2 or shape[0] * shape[1] * 4 <= PIECE_BYTES:
        yield 0, src.materializer(src.reader).materialize(target)
        return
    block = src.cfg.fp8_block_size if src.reader.dtype(orig) == "F8_E4M3" else None
    bm = block[0] if block else 1
    # Pieces also start on multiples of the largest group size, so that a kmajor module (groups along
    # the rows here) gets whole groups per piece; for the transposed layout this changes nothing.
    align = math.lcm(bm, max(GROUP_SIZES))
    step = max(align, PIECE_BYTES // (4 * shape[1]) // align * align)
    scale = src.plan.source_of.get(key + SCALE_SUFFIX)
    for r in range(0, shape[0], step):
        window = RowWindow(src.reader, orig, r, r + step, bm, scale)
        yield r, src.materializer(window).materialize(target)


def _stack_pieces(src: Source, out: str, key: str) -> Iterator[tuple[int, int, dict[str, mx.array]]]:
    """(expert, first flat row, {out: lazy array}) for an already stacked (E, rows, cols) float source (mlx-lm's
    `switch_mlp` layout) larger than a piece: read one expert at a time and cut into row blocks, as the
    per-expert keys of an official release are, instead of quantizing the whole stack in one piece."""
    orig = src.plan.source_of[key]
    E, rows, cols = src.reader.shape(orig)
    target = Target("copy", (out,), (key,))
    step = max(max(GROUP_SIZES), PIECE_BYTES // (4 * cols) // max(GROUP_SIZES) * max(GROUP_SIZES))
    for e in range(E):
        a = src.materializer(RowWindow(src.reader, orig, e, e + 1)).materialize(target)[out]  # (1, rows, cols)
        for r in range(0, rows, step):
            yield e, e * rows + r, {out: a[0, r:r + step]}


def _is_float_stack(src: Source, key: str) -> bool:
    orig = src.plan.source_of[key]
    shape = src.reader.shape(orig)
    return (len(shape) == 3 and src.reader.dtype(orig) in ("BF16", "F16", "F32")
            and 4 * math.prod(shape) > PIECE_BYTES)


def measured_experts(n: int) -> range:
    """The experts of an n-expert stack whose quantization error is measured: evenly spaced."""
    return range(0, n, max(1, n // MEASURED_EXPERTS))


def pieces(job: Job, src: Source) -> Iterator[Piece]:
    t = job.target
    if t.op == "copy" and _is_float_stack(src, t.sources[0]):
        measured = set(measured_experts(src.reader.shape(src.plan.source_of[t.sources[0]])[0]))
        for e, row, arrays in _stack_pieces(src, t.outputs[0], t.sources[0]):
            yield Piece(row, arrays, measure=e in measured)
        yield Piece(0, {}, done=1)
    elif t.op == "copy":
        for row, arrays in row_pieces(src, t.outputs[0], t.sources[0]):
            yield Piece(row, arrays)
        yield Piece(0, {}, done=1)
    elif t.op == "stack_experts":
        out = t.outputs[0]
        rows = job.float_shapes[out][1]  # (E, rows, cols): expert e's row r is flat row e * rows + r
        measured = set(measured_experts(len(t.sources)))
        for e, key in enumerate(t.sources):
            for row, arrays in row_pieces(src, out, key):
                yield Piece(e * rows + row, arrays, measure=e in measured)
            yield Piece(0, {}, done=1)
    elif t.op == "stack_experts_mxfp4":  # already packed: one expert's bytes at a time, kept as they are
        rows = job.float_shapes[t.outputs[0]][1]
        for e, key in enumerate(t.sources):
            yield Piece(e * rows, src.materializer(src.reader).materialize(Target(t.op, t.outputs, (key,))), done=1)
    else:
        yield Piece(0, src.materializer(src.reader).materialize(t), done=len(t.sources))


class _Out(NamedTuple):
    """One output of a piece, launched (evaluating asynchronously) and waiting to be written."""

    job: Job
    name: str
    row: int
    shape: tuple  # the float piece's shape
    arrays: tuple  # (float array,) or (packed weight, scales, biases)
    terms: object  # lazy error terms (None: not measured) and the elements they cover
    measured: int


def write_shard(path, jobs: list[Job], src: Source, on_piece: Callable[[int, int], None]) -> dict[str, dict]:
    """Write `jobs` into a new shard at `path`; returns the quantization error entries of its tensors.

    Pipelined one piece deep: a piece's outputs are launched with `mx.async_eval` (MLX computes them on
    its own stream), then the previous piece's outputs are written while they compute, and the next
    piece is read while they compute in turn. Memory stays at two pieces."""
    specs: list[TensorSpec] = [s for j in jobs for s in j.outputs]
    errors: dict[str, TensorError] = {}
    with ShardWriter(path, specs) as writer:
        pending: list[_Out] = []
        for job in jobs:
            done_bytes = 0
            for piece in pieces(job, src):
                launched = [_launch(job, name, a, piece, src.stats) for name, a in piece.arrays.items()]
                mx.async_eval([x for o in launched for x in (*o.arrays, o.terms) if x is not None])
                for o in pending:
                    _store(writer, o, errors)
                pending = launched
                if piece.done:
                    share = job.source_bytes * piece.done // len(job.target.sources)
                    on_piece(share, piece.done)
                    done_bytes += share
            if done_bytes < job.source_bytes:
                on_piece(job.source_bytes - done_bytes, 0)
            mx.clear_cache()  # only buffers no array holds: the launched piece keeps its own
        for o in pending:
            _store(writer, o, errors)
    return {k: v.to_dict() for k, v in errors.items()}


def _launch(job: Job, name: str, a: mx.array, piece: Piece, stats=None) -> _Out:
    params = job.quant.get(name)
    if params is None:
        return _Out(job, name, piece.row, tuple(a.shape), (a,), None, 0)
    imp = None
    if stats is not None and a.ndim >= 2 and params.get("layout") != KMAJOR:
        module = name[: -len(".weight")]
        expert = piece.row // job.float_shapes[name][1] if job.target.op == "stack_experts" else 0
        found = stats.importance(module, expert) if a.ndim == 2 else None
        imp = mx.array(found) if found is not None else mx.ones((a.shape[-1],))  # weight-only: plain error
        # Groups run along rows, so a (H, out, in) MultiLinear is quantized as its (H * out, in) rows.
        packed = quantize_weighted(a.reshape(-1, a.shape[-1]), imp, group_size=params["group_size"],
                                   bits=params["bits"], dtype=a.dtype)
        packed = tuple(p.reshape(*a.shape[:-1], p.shape[-1]) for p in packed)
        imp = imp if found is not None else None
    else:
        packed = quantize(a, params)
    terms, measured = error_terms(a, packed, params, MEASURED_ROW_STRIDE, imp) if piece.measure else (None, 0)
    return _Out(job, name, piece.row, tuple(a.shape), tuple(packed), terms, measured)


def _store(writer: ShardWriter, o: _Out, errors: dict) -> None:
    job, name = o.job, o.name
    params = job.quant.get(name)
    if params is None:
        writer.write(name, o.arrays[0], o.row)
        return
    base = name[: -len("weight")]
    shape = job.float_shapes[name]
    if params.get("layout") == KMAJOR and o.shape != shape:
        # A block of rows of W (..., out, in) is a block of columns of the stored (..., in, out).
        slab, r = divmod(o.row, shape[-2])
        for suffix, q in zip(("weight", "scales", "biases"), o.arrays):
            writer.write_cols(base + suffix, q, slab, r * q.shape[-1] // o.shape[-2])
    else:
        for suffix, q in zip(("weight", "scales", "biases"), o.arrays):
            writer.write(base + suffix, q, o.row)
    if o.terms is not None:
        stats = errors.get(name)
        if stats is None:
            stacked = job.target.op == "stack_experts" or (len(shape) == 3 and o.shape != tuple(shape))
            sampled = len(measured_experts(shape[0])) if stacked else None
            stats = errors[name] = TensorError(shape, params["bits"], params["group_size"], sampled,
                                               row_stride=MEASURED_ROW_STRIDE)
        stats.add(np.array(o.terms), o.measured)
