"""Memory (and the forward's CPU time) of one decoder layer held for calibration (`convert/resident.py`).

    python benchmarks/make_synthetic_fp8.py --out /tmp/fp8-2l --layers 2
    python benchmarks/calibration_layer_read.py --input /tmp/fp8-2l --layer 1
    PYTHONPATH=/path/to/older/src python benchmarks/calibration_layer_read.py --input /tmp/fp8-2l --layer 1

    python benchmarks/calibration_layer_read.py --input /tmp/fp8-2l --layer 1 --forward-tokens 256

Prints one JSON line: the bytes the layer holds in MLX's CPU compute dtype (float32), MLX's peak active
memory above them while it was read (raw source bytes, dequantization temporaries, expert stack parts),
and the process's peak RSS. Counted by MLX's allocator, so it does not depend on the machine's load.
With --forward-tokens N, also the CPU seconds of the layer's calibration forward (recorders attached) over
N random hidden states in one chunk.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import mlxseek  # noqa: F401  first: it binds OpenBLAS to MLX's float32 matmuls before mlx.core loads (cpu/blas.py)
import mlx.core as mx
from mlx.utils import tree_flatten

from mlxseek.checkpoint.keymap import build_plan
from mlxseek.config import ModelConfig
from mlxseek.convert import calibrate, resident
from mlxseek.convert.reader import SourceReader
from mlxseek.convert.stream import Source
from mlxseek.layers.masks import causal_mask
from mlxseek.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--forward-tokens", type=int, default=0)
    args = ap.parse_args()
    cfg = ModelConfig.from_file(args.input)
    reader = SourceReader(args.input)
    source = Source(reader, cfg, build_plan(reader.keys(), cfg), mx.float32)
    layer = build_model(cfg, with_mtp=False).model.layers[args.layer]  # lazy: nothing allocated yet
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    resident.load_resident(layer, source, f"model.layers.{args.layer}.")
    held = sum(v.nbytes for _, v in tree_flatten(layer.parameters()))
    extra = {}
    if args.forward_tokens:
        calibrate.attach(layer, f"model.layers.{args.layer}.", calibrate.Statistics())
        h = mx.random.normal((1, args.forward_tokens, cfg.hidden_size), key=mx.random.key(0))
        mx.eval(h)
        t0 = time.process_time()
        mx.eval(layer(h, causal_mask(args.forward_tokens, 0), None))
        extra = {"forward_tokens": args.forward_tokens, "forward_cpu_s": round(time.process_time() - t0, 2)}
    print(json.dumps({"input": str(args.input), "layer": args.layer, "mlxseek": calibrate.__file__,
                      "layer_fp32_gb": round(held / 1e9, 3),
                      "peak_above_layer_gb": round((mx.get_peak_memory() - base - held) / 1e9, 3),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3), **extra}))


if __name__ == "__main__":
    main()
