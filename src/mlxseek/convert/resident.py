"""Reading part of a model from the source to keep it resident (calibration holds one decoder layer at a time).

The converter's own pieces do the reading (`stream.row_pieces`: ~4 MiB row blocks, FP8-block aligned), written
into preallocated arrays, so a resident layer costs its own bytes plus one piece, whatever its largest tensor.
"""

from __future__ import annotations

import mlx.core as mx
from mlx import nn

from ..checkpoint.keymap import Target
from .reader import ShapeOnly
from .stream import Source, row_pieces


def load_resident(root: nn.Module, source: Source, prefix: str, *, relative: bool = True) -> None:
    """Materialize every target under `prefix` into `root` (named relative to `prefix`, or in full), one
    target at a time: the peak is what `root` holds plus one piece in flight (see `_filled`)."""
    mat = source.materializer(source.reader)
    cut = len(prefix) if relative else 0
    for t in source.plan.targets:
        if not t.outputs[0].startswith(prefix):
            continue
        if t.op in ("copy", "stack_experts"):
            arrays = {t.outputs[0]: _filled(source, t)}
        else:  # the split kv_b (small) and packed FP4 stacks: whole
            arrays = mat.materialize(t)
            mx.eval(arrays)
        root.load_weights([(k[cut:], v) for k, v in arrays.items()], strict=False)


def _filled(source: Source, t: Target) -> mx.array:
    """`materialize(t)[out]` of a copy or stack_experts target, written piece by piece (the converter's row
    blocks: FP8-block aligned, so the values are the same) into one preallocated array; MLX donates its
    buffer to each slice update. Never a whole dequantized matrix beside its raw bytes and float32
    temporaries, nor a stack beside its parts."""
    out, stack = t.outputs[0], t.op == "stack_experts"
    shape = source.materializer(ShapeOnly(source.reader)).materialize(t)[out].shape  # lazy: nothing is read
    buf = None
    for e, key in enumerate(t.sources):
        for row, piece in row_pieces(source, out, key):
            a = piece[out]
            buf = mx.zeros(shape, a.dtype) if buf is None else buf
            buf[(e, slice(row, row + a.shape[0])) if stack else slice(row, row + a.shape[0])] = a
            mx.eval(buf)
    return buf
