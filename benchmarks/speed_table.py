"""Issue 5's table in one command: mlxseek vs mlx-lm (bf16 default) vs mlx-lm (float32 forced) on the same
converted weights — decode and prefill tok/s, peak memory, % roofline — plus the kernel-floor ratio with a
per-op breakdown, and long-context figures (decode at 8192 tokens of context, latent-cache bytes per token
for full/8-bit/4-bit vs mlx-lm's cache, logits drift of the quantized cache, peak memory of an 8K prompt).

    python benchmarks/speed_table.py [--model DIR] [--runs 3] [--skip-long] [--jsonl out.jsonl]

Prints JSON lines (one per measurement), then the markdown tables (benchmarks/speed_summary.py, which also
renders saved JSON lines). The default model is the ~1 GB random
V3-shaped 4-bit checkpoint from benchmarks/make_random_v3.py (written on first use).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

# mlxseek before mlx.core, so that MLX binds a system OpenBLAS when there is one (mlxseek/cpu/blas.py).
import mlxseek  # noqa: I001

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_mlx_lm import DEFAULT_MODEL, ensure_model  # noqa: E402
from profile_decode import measure as profile  # noqa: E402

from mlxseek.tools.bench import bench  # noqa: E402

ROWS: list[dict] = []  # everything emitted, for the markdown summary at the end


def emit(row: dict, out) -> dict:
    ROWS.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return row


OURS = None  # --ours: the folder mlxseek reads (same source as --model, mlxseek's kmajor layout)


def load_engine(engine: str, folder: Path):
    from mlx.utils import tree_map

    if engine == "mlxseek":
        return mlxseek.load(OURS or folder, with_mtp=False, tokenizer=False)[0]
    from mlx_lm import load as mlx_lm_load

    model = mlx_lm_load(str(folder))[0]
    if engine == "mlx-lm-fp32":
        model.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                              model.parameters()))
    return model


def fill_cache(model, context: int, *, kv_bits=None):
    """A cache holding `context` tokens of (random) latent + rope key per layer: decode cost depends on
    the cache's length, not its contents, and an 8K prefill per engine would take minutes on a CPU."""
    cfg = model.args
    if hasattr(model, "config"):
        cache = model.make_cache(kv_bits=kv_bits) if kv_bits else model.make_cache()
    else:
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(model)
    dt = model.model.norm.weight.dtype  # the compute dtype: what the model itself writes into its cache
    for c in cache:
        for start in range(0, context, 1024):
            n = min(1024, context - start)
            lat = mx.random.normal((1, 1, n, cfg.kv_lora_rank)).astype(dt)
            pe = mx.random.normal((1, 1, n, cfg.qk_rope_head_dim)).astype(dt)
            c.update_and_fetch(lat, pe)
        mx.eval([a for _, a in tree_flatten(c.state) if isinstance(a, mx.array)])
    return cache


def decode_tps(model, cache, steps: int = 8, repeats: int = 3) -> float:
    """Median over `repeats` timings of `steps` decode steps (the cache grows by steps * repeats + 1)."""
    tok = mx.array([[11]])
    mx.eval(model(tok, cache=cache))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            mx.eval(model(tok, cache=cache))
        rates.append(steps / (time.perf_counter() - t))
    return statistics.median(rates)


def long_context(folder: Path, engines, out) -> None:
    for engine in engines:
        model = load_engine(engine, folder)
        for kv_bits in ((None, 8, 4) if engine == "mlxseek" else (None,)):
            row = {"measure": "long_context", "engine": engine, "kv_bits": kv_bits}
            try:
                short = decode_tps(model, fill_cache(model, 256, kv_bits=kv_bits))
                cache = fill_cache(model, 8192, kv_bits=kv_bits)
                row.update(decode_tps_256=short, decode_tps_8192=decode_tps(model, cache),
                           cache_bytes_per_token=cache_bytes_per_token(cache))
                row["ratio_8192_vs_256"] = row["decode_tps_8192"] / short
            except Exception as e:  # mlx-lm's quantized DeepSeek cache is known to fail here
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            emit(row, out)
        if engine != "mlxseek":
            emit(mlx_lm_quantized_cache(model, folder), out)
        del model
        gc.collect()


def cache_bytes_per_token(cache) -> float:
    c = cache[0]
    per_layer = c.bytes_per_token() if hasattr(c, "bytes_per_token") else (
        sum(a.nbytes for a in c.keys_and_values()) / c.offset)
    return per_layer * len(cache)


def mlx_lm_quantized_cache(model, folder: Path) -> dict:
    """What mlx-lm's own --kv-bits 8 does to this model past its quantized_kv_start."""
    from mlx_lm.generate import maybe_quantize_kv_cache

    row = {"measure": "long_context", "engine": "mlx-lm --kv-bits 8", "kv_bits": 8}
    try:
        cache = fill_cache(model, 8192)
        maybe_quantize_kv_cache(cache, quantized_kv_start=0, kv_group_size=64, kv_bits=8)
        row["decode_tps_8192"] = decode_tps(model, cache)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def long_prompt(folder: Path, tokens: int, out, steps: int = 8) -> None:
    """A real `tokens`-token prefill (chunked, as generate does): its time and peak memory over the resident
    weights; then the logits drift of 8-bit and 4-bit copies of that cache vs the full-precision one over
    `steps` teacher-forced decode steps, with each cache's decode speed at that context."""
    from mlxseek.generation.prefill import DEFAULT_PREFILL_STEP, prefill_chunk

    model = load_engine("mlxseek", folder)
    gc.collect()
    mx.clear_cache()
    resident = mx.get_active_memory()
    mx.reset_peak_memory()
    prompt = mx.random.randint(3, model.args.vocab_size, (tokens,), key=mx.random.key(0)).astype(mx.uint32)
    cache, t, done, chunks = model.make_cache(), time.perf_counter(), 0, []
    while done < tokens - 1:  # every token but the last, in generate's chunks (they shrink as S grows)
        n = min(prefill_chunk(model, done, DEFAULT_PREFILL_STEP), tokens - 1 - done)
        model(prompt[done : done + n][None], cache=cache)
        mx.eval([c.state for c in cache])
        done, chunks = done + n, chunks + [n]
    seconds = time.perf_counter() - t
    emit({"measure": "prefill_peak", "engine": "mlxseek", "prompt_tokens": tokens, "seconds": seconds,
          "prefill_tps": (tokens - 1) / seconds, "chunks": f"{chunks[0]}..{chunks[-1]} ({len(chunks)})",
          "weights_gb": resident / 1e9,
          "peak_memory_gb": mx.get_peak_memory() / 1e9, "prefill_overhead_gb": (mx.get_peak_memory() - resident) / 1e9,
          "attention": "naive (MHA-style) for prefill chunks, absorbed for decode"}, out)
    caches = {None: cache, **{b: [c.to_quantized(group_size=64, bits=b) for c in cache] for b in (8, 4)}}
    feed, logits = [int(prompt[-1])], {}
    for bits, c in caches.items():  # full first: its greedy tokens are fed to every cache
        rows, t = [], time.perf_counter()
        for i in range(steps):
            y = model(mx.array([[feed[i]]]), cache=c)[0, -1].astype(mx.float32)
            mx.eval(y)
            rows.append(y)
            if bits is None and i + 1 == len(feed):
                feed.append(int(mx.argmax(y)))
        tps = steps / (time.perf_counter() - t)
        logits[bits] = mx.stack(rows)
        row = {"measure": "kv_drift", "engine": "mlxseek", "context": tokens, "kv_bits": bits, "decode_tps": tps,
               "cache_bytes_per_token": cache_bytes_per_token(c)}
        if bits is not None:
            ref, q = logits[None], logits[bits]
            lp, lq = ref - mx.logsumexp(ref, -1, keepdims=True), q - mx.logsumexp(q, -1, keepdims=True)
            row.update(max_abs_drift=float(mx.abs(q - ref).max()), mean_abs_drift=float(mx.abs(q - ref).mean()),
                       mean_abs_logit=float(mx.abs(ref).mean()), kl=float((mx.exp(lp) * (lp - lq)).sum(-1).mean()),
                       top1_agree=float((mx.argmax(q, -1) == mx.argmax(ref, -1)).mean()))
        emit(row, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--bf16-prompt-tokens", type=int, default=128,
                    help="prompt length of the run against mlx-lm's bf16 default (~0.5 tok/s on CPU)")
    ap.add_argument("--bf16-gen-tokens", type=int, default=32)
    ap.add_argument("--skip-long", action="store_true", help="skip the long-context measurements")
    ap.add_argument("--long-prompt", type=int, default=8192,
                    help="prompt length of the real prefill (peak memory) and the quantized-cache drift")
    ap.add_argument("--engines", nargs="+", default=["mlxseek", "mlx-lm", "mlx-lm-fp32"],
                    choices=["mlxseek", "mlx-lm", "mlx-lm-fp32"], help="mlxseek is always measured first")
    ap.add_argument("--skip-speed", action="store_true", help="only the kernel floor and long-context parts")
    ap.add_argument("--ours", type=Path, help="folder mlxseek reads instead of --model: `mlxseek convert "
                    "--layout kmajor` of the source --model was converted from (mlx-lm cannot read that layout)")
    ap.add_argument("--jsonl", type=Path)
    args = ap.parse_args()
    global OURS
    OURS = args.ours
    folder = ensure_model(args.model)
    emit({"measure": "environment", "mlx": mx.__version__, "device": str(mx.default_device()),
          **mlxseek.cpu.blas.status()}, args.jsonl)
    engines = ("mlxseek", *[e for e in args.engines if e != "mlxseek"])

    if not args.skip_speed:
        fast = [e for e in engines[1:] if e != "mlx-lm"]
        for row in bench(folder, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, runs=args.runs,
                         vs=fast, ours=args.ours):
            emit({"measure": "speed", **row}, args.jsonl)
        if "mlx-lm" in engines:  # its bf16 default runs ~25x slower on CPU: a shorter run, mlxseek alongside
            for row in bench(folder, prompt_tokens=args.bf16_prompt_tokens, gen_tokens=args.bf16_gen_tokens,
                             runs=args.runs, vs=["mlx-lm"], ours=args.ours):
                emit({"measure": "speed", **row}, args.jsonl)
    for engine in engines:
        model = load_engine(engine, folder)
        emit({"measure": "kernel_floor", "engine": engine, **profile(model, 256, 5)}, args.jsonl)
        del model
        gc.collect()
    if not args.skip_long:
        long_context(folder, [e for e in engines if e != "mlx-lm"], args.jsonl)
        long_prompt(folder, args.long_prompt, args.jsonl)
    from speed_summary import render

    print("\n" + render(ROWS))


if __name__ == "__main__":
    main()
