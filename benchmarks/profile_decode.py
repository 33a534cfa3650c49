"""Per-op breakdown of one decode step, and the kernel floor, for mlxseek and mlx-lm on the same weights.

Works on MLX's CPU backend and on Metal. Each leaf op is timed by evaluating its output right after it
runs (so the breakdown adds sync overhead; the un-instrumented step time is reported separately).
The kernel floor is the sum of the step's quantized/dense matmuls, each re-run in isolation at the same
shapes on the same weights. Prints JSON lines.

    python benchmarks/profile_decode.py --model DIR [--context 256] [--steps 10] [--vs-mlx-lm]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import mlx.core as mx
import mlx.nn as nn

# mlxseek before mlx.core, so that MLX binds a system OpenBLAS when there is one (mlxseek/cpu/blas.py).
import mlxseek  # noqa: F401, I001

CATEGORIES = [  # (substring of the module path, category); first match wins
    ("lm_head", "lm_head"),
    ("embed_tokens", "embedding"),
    ("mlp.gate", "router"),
    ("switch_mlp", "experts"),
    ("shared_experts", "shared_expert"),
    ("self_attn", "mla_projections"),
    ("mlp.", "dense_mlp"),
]
MATMUL_TYPES = ("Linear", "QuantizedLinear", "SwitchLinear", "QuantizedSwitchLinear", "MultiLinear",
                "QuantizedMultiLinear", "MoEGate", "KMajorQuantizedLinear", "KMajorQuantizedSwitchLinear")


def category(path: str) -> str:
    return next((c for s, c in CATEGORIES if s in path), "other")


class Recorder:
    """Wraps leaf modules' __call__ to time them (eval-synchronised) and to log their input shapes."""

    def __init__(self, model: nn.Module):
        self.times: dict[str, float] = defaultdict(float)
        self.calls: list[tuple] = []  # (module, args, kwargs, unwrapped __call__)
        self.active = False
        for path, mod in model.named_modules():
            if type(mod).__name__ in MATMUL_TYPES:
                self._wrap(path, mod)

    def _wrap(self, path: str, mod: nn.Module) -> None:
        cls = type(mod)
        orig = cls.__call__
        rec = self

        # A per-instance subclass so only this module is instrumented.
        def timed(self_, *args, **kwargs):
            if not rec.active:
                return orig(self_, *args, **kwargs)
            mx.eval(args)
            t = time.perf_counter()
            out = orig(self_, *args, **kwargs)
            mx.eval(out)
            rec.times[category(path)] += time.perf_counter() - t
            rec.calls.append((self_, args, kwargs, orig))
            return out

        mod.__class__ = type(cls.__name__, (cls,), {"__call__": timed})


def measure(model, prompt_len: int, steps: int) -> dict:
    cache = model.make_cache() if hasattr(model, "make_cache") else None
    if cache is None:
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(model)
    mx.eval(model(mx.random.randint(0, 1000, (1, prompt_len)), cache=cache))
    tok = mx.array([[7]])
    for _ in range(2):
        mx.eval(model(tok, cache=cache))
    step = []
    for _ in range(steps):
        t = time.perf_counter()
        mx.eval(model(tok, cache=cache))
        step.append(time.perf_counter() - t)
    rec = Recorder(model)
    rec.active = True
    t = time.perf_counter()
    mx.eval(model(tok, cache=cache))
    instrumented = time.perf_counter() - t
    rec.active = False
    # The floor counts matmul modules only; the router (a tiny gate matmul plus top-k selection) is
    # timed in the breakdown but is overhead the fast path must hide, not a matmul it must do.
    floor = kernel_floor([c for c in rec.calls if type(c[0]).__name__ != "MoEGate"])
    total = statistics.median(step)
    breakdown = {k: round(v * 1e3, 3) for k, v in sorted(rec.times.items())}
    breakdown["everything_else"] = round((instrumented - sum(rec.times.values())) * 1e3, 3)
    return {
        "step_ms": round(total * 1e3, 3),
        "kernel_floor_ms": round(floor * 1e3, 3),
        "floor_ratio": round(total / floor, 3),
        "breakdown_ms": breakdown,
    }


def kernel_floor(calls, reps: int = 5) -> float:
    """Sum over the step's matmul modules of their isolated median time at the recorded shapes."""
    total = 0.0
    for mod, args, kwargs, orig in calls:
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            mx.eval(orig(mod, *args, **kwargs))
            ts.append(time.perf_counter() - t)
        total += statistics.median(ts)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (mlxseek- and mlx-lm-loadable)")
    ap.add_argument("--context", type=int, default=256, help="tokens in the cache before the timed step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--vs-mlx-lm", action="store_true", help="also profile mlx-lm on the same folder")
    args = ap.parse_args()

    import mlxseek

    model, _ = mlxseek.load(args.model, with_mtp=False, tokenizer=False)
    print(json.dumps({"engine": "mlxseek", "context": args.context, **measure(model, args.context, args.steps)}))
    if args.vs_mlx_lm:
        from mlx.utils import tree_map
        from mlx_lm import load as mlx_lm_load

        for name, cast in (("mlx-lm", False), ("mlx-lm-float32", True)):
            ref, _ = mlx_lm_load(args.model)
            if cast:
                ref.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                                    ref.parameters()))
            print(json.dumps({"engine": name, "context": args.context, **measure(ref, args.context, args.steps)}))


if __name__ == "__main__":
    main()
