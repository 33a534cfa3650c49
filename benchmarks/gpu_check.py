#!/usr/bin/env python
"""The GPU check: one run, at most ~6 minutes on a GPU, JSON lines on stdout (one object per measurement).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py > gpu_check.jsonl        # on a GPU (Metal or CUDA)
    python benchmarks/gpu_check.py --allow-cpu                                 # anywhere: GPU decisions forced

Sections (each line has "section"; a section that cannot run says why in one line and the rest go on):
  env        MLX version, device, the backend policy in use
  parity     the GPU path (bf16, checkpoint layout) vs the float32 goldens of every committed fixture
             (transformers' runs): logit error, positions within bf16 tolerance, greedy agreement; the
             trained fixture against the float32 CPU path, float and 4-bit
  speed      prefill / decode tok/s of mlxseek vs mlx-lm on the same weights (a random 4-bit V3-shaped
             ~1 GB model written to --work; a tiny one on the CPU), peak memory
  mtp        MTP drafting at k = 1, 2, 3 and auto on the trained fixture (acceptance, tokens per verify
             step, wall speedup, identical outputs); V4 (random weights) at k = 1, 2
  dspark     DSpark (tests/fixtures/trained_dspark) vs MTP (tests/fixtures/trained_v4) on one trained V4
             backbone, DSpark at block 5, 2 and auto, MTP at 1 and 2: acceptance per block position, tokens per verify, wall speedup, identical
             outputs; and one verify / one draft block against one plain step (`measure_draft_costs`)
  batch      aggregate tok/s at B = 1, 2, 4, 8 when `mlxseek.batch_generate` exists (skipped otherwise)
  kv_cache   the quantized latent cache at 8 and 4 bits, packed vs dequantized read: decode tok/s and
             the first step's logit difference from a float cache, at a long context
On MLX's CPU backend (--allow-cpu) the GPU decisions are forced (`backend="gpu"`), sizes shrink and
timings mean nothing: that mode proves the script runs. On a CUDA machine MLX needs its CUDA wheels
(`pip install "mlxseek[cuda]"`, i.e. mlx[cuda13]; REFERENCES.md "MLX's CUDA backend").
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "src"))
BF16_TOL = 2.0 ** -5  # of the largest |logit|: a few bf16 steps (8 significant bits)


class Check:
    def __init__(self, args):
        import mlx.core as mx

        from mlxseek import backend as be

        self.mx, self.be, self.args = mx, be, args
        self.on_gpu = be.device_kind() == "gpu"
        self.backend = None if self.on_gpu else "gpu"  # on the CPU: force the GPU decisions
        self.quick = not self.on_gpu
        self.deadline = time.perf_counter() + args.budget_s

    def emit(self, section: str, **row) -> None:
        print(json.dumps({"section": section, **row}, default=str), flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def peak_gb(self) -> float:
        return round(self.mx.get_peak_memory() / 1e9, 3)

    def section(self, name: str, fn) -> None:
        if self.left() <= 0:
            return self.emit(name, skipped=f"out of the {self.args.budget_s:.0f} s budget")
        gc.collect()
        self.mx.clear_cache()
        self.mx.reset_peak_memory()
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failing section must not hide the others
            self.emit(name, error=f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
        self.emit(name, done=True, seconds=round(time.perf_counter() - t0, 1), peak_memory_gb=self.peak_gb())

    # --- sections -------------------------------------------------------------------------------------
    def env(self) -> None:
        mx, be = self.mx, self.be
        policy = be.backend_policy(self.backend)
        self.emit("env", mlx=mx.__version__, device=str(mx.default_device()), kind=be.device_kind(),
                  gpu_backend=be.gpu_backend_name(), forced_gpu_decisions=not self.on_gpu, policy=policy.as_dict())

    def _load(self, path, **kw):
        import mlxseek

        return mlxseek.load(path, backend=self.backend, tokenizer=False, **kw)[0]

    def parity(self) -> None:
        mx = self.mx
        from mlxseek.generation.steps import generate_step

        for folder in sorted(p.parent for p in FIX.glob("*/golden.npz")):
            g = np.load(folder / "golden.npz")
            model = self._load(folder)
            prompt = mx.array(g["prompt"].astype(np.uint32))
            logits = np.array(model(prompt[None])[0].astype(mx.float32))
            err = np.abs(logits - g["logits"]).max(axis=-1)
            scale = float(np.abs(g["logits"]).max())
            want = g["greedy"].tolist()
            got = [t for t, _ in generate_step(prompt, model, max_tokens=len(want))]
            agree = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
            self.emit("parity", fixture=folder.name, dtype=model.backend.compute_dtype, layout=str(model.kernel_layout),
                      max_abs_err=round(float(err.max()), 5), rel_err=round(float(err.max()) / scale, 5),
                      positions_within_bf16_tol=round(float((err <= BF16_TOL * scale).mean()), 4),
                      greedy_agree_prefix=agree, greedy_tokens=len(want))
            del model
        self._parity_trained()

    def _trained_prompts(self, tok, n: int, length: int):
        from mlxseek.tools.draft_bench import text_prompts

        return text_prompts(tok, FIX / "trained_v3_heldout.txt", n, length)

    def _parity_trained(self) -> None:
        import mlxseek
        from mlxseek.generation.steps import generate_step

        mx = self.mx
        tok = mlxseek.load_tokenizer(FIX / "trained_v3")
        prompts = self._trained_prompts(tok, 4, 32)
        q4 = Path(self.args.work) / "trained_v3-q4g64"
        mlxseek.convert(hf_path=FIX / "trained_v3", mlx_path=q4, quantize=True, q_bits=4, q_group_size=64,
                        force=True, quiet=True)
        for label, folder in (("float", FIX / "trained_v3"), ("4-bit g64", q4)):
            with mx.stream(mx.cpu):  # the float32 CPU path: the reference
                ref = mlxseek.load(folder, dtype="float32", cpu_layout=False, tokenizer=False)[0]
                want = [[t for t, _ in generate_step(p, ref, max_tokens=32)] for p in prompts]
                ref_logits = [np.array(ref(p[None])[0]) for p in prompts]
            model = self._load(folder)
            got = [[t for t, _ in generate_step(p, model, max_tokens=32)] for p in prompts]
            errs = [float(np.abs(np.array(model(p[None])[0].astype(mx.float32)) - r).max() / np.abs(r).max())
                    for p, r in zip(prompts, ref_logits)]
            self.emit("parity", fixture=f"trained_v3 ({label})", reference="float32 CPU path",
                      dtype=model.backend.compute_dtype, layout=str(model.kernel_layout), rel_err=round(max(errs), 5),
                      identical_greedy=sum(a == b for a, b in zip(got, want)), prompts=len(prompts), tokens=32)
            del model, ref

    def _bench_model(self) -> Path:
        """The random 4-bit V3-shaped bench model: ~1 GB on a GPU; the tiny preset on the CPU, where bf16
        quantized matmuls run at ~0.2 tok/s on the big one (the CPU run only proves the script works)."""
        preset = "tiny" if self.quick else "v3-1gb"
        folder = Path(self.args.work) / f"ds-{preset}"
        if not (folder / "config.json").exists():
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from make_random_v3 import DEFAULT_QUANT, PRESETS, write_random_checkpoint

            bits, group = DEFAULT_QUANT[preset]
            write_random_checkpoint(folder, PRESETS[preset], bits=bits, group_size=group)
        return folder

    def speed(self) -> None:
        from mlxseek.tools.bench import bench

        p, g, r = (32, 8, 1) if self.quick else (512, 128, 3)
        load = None if self.on_gpu else {"backend": "gpu"}
        for row in bench(self._bench_model(), prompt_tokens=p, gen_tokens=g, runs=r, vs=("mlx-lm",),
                         load_options=None):
            self.emit("speed", **{k: v for k, v in row.items() if k != "model"})
        if load:  # on the CPU the default run above used the cpu policy; add the forced-GPU decisions
            row = bench(self._bench_model(), prompt_tokens=p, gen_tokens=g, runs=r, load_options=load)[0]
            self.emit("speed", forced_gpu_decisions=True, **{k: v for k, v in row.items() if k != "model"})

    def mtp(self) -> None:
        import mlxseek
        from mlxseek.tools.draft_bench import bench_draft

        n, gen = (2, 16) if self.quick else (8, 64)
        model = self._load(FIX / "trained_v3")
        prompts = self._trained_prompts(mlxseek.load_tokenizer(FIX / "trained_v3"), n, 32)
        for draft, k in (("mtp", 1), ("mtp", 2), ("mtp", 3), ("auto", 1)):
            self.emit("mtp", fixture="trained_v3", **bench_draft(model, prompts, gen_tokens=gen, num_draft=k, draft=draft))
        del model
        v4 = self._load(FIX / "v4_flash")
        ids = np.load(FIX / "v4_flash" / "golden.npz")["prompt"].astype(np.uint32)
        v4_prompts = [self.mx.array(ids[i * 40: i * 40 + 48]) for i in range(n)]
        for k in (1, 2):
            self.emit("mtp", fixture="v4_flash (random weights)", **bench_draft(v4, v4_prompts, gen_tokens=gen, num_draft=k))

    def dspark(self) -> None:
        import mlxseek
        from mlxseek.speculative.costs import measure_draft_costs
        from mlxseek.tools.draft_bench import bench_draft

        n, gen = (2, 16) if self.quick else (8, 64)
        # One trained V4 backbone, two drafters: DSpark (trained_dspark, 0731 layout) and MTP (trained_v4).
        prompts = self._trained_prompts(mlxseek.load_tokenizer(FIX / "trained_v4"), n, 24)
        for fixture, runs in (("trained_dspark", (("dspark", 5), ("dspark", 2), ("auto", 5))),
                              ("trained_v4", (("mtp", 1), ("mtp", 2)))):
            model = self._load(FIX / fixture)
            for draft, k in runs:
                self.emit("dspark", fixture=fixture, **bench_draft(model, prompts, gen_tokens=gen, num_draft=k,
                                                                   draft=draft))
            kind = runs[0][0]
            for k in sorted({k for _, k in runs}, reverse=True):
                c = measure_draft_costs(model, k, kind=kind)
                self.emit("dspark", fixture=fixture, draft=kind, block=k, step_ms=1e3 * c.step_s,
                          verify_ms=1e3 * c.verify_s, draft_ms=1e3 * c.mtp_s, verify_over_step=c.verify_ratio,
                          draft_over_step=c.mtp_s / c.step_s)
            del model

    def batch(self) -> None:
        import mlxseek

        if not hasattr(mlxseek, "batch_generate"):
            return self.emit("batch", skipped="mlxseek.batch_generate does not exist in this checkout")
        mx = self.mx
        model = self._load(self._bench_model())
        V, gen = model.config.vocab_size, (8 if self.quick else 64)
        rng = np.random.default_rng(0)
        prompts = [rng.integers(3, V, 64).tolist() for _ in range(8)]
        solo = None
        for B in (1, 2, 4, 8):
            mlxseek.batch_generate(model, None, prompts[:B], max_tokens=4)  # warm-up
            mx.synchronize()
            t0 = time.perf_counter()
            out = mlxseek.batch_generate(model, None, prompts[:B], max_tokens=gen)
            mx.synchronize()
            wall = time.perf_counter() - t0
            solo = out[0].tokens if B == 1 else solo
            self.emit("batch", batch=B, aggregate_tps=round(sum(r.generation_tokens for r in out) / wall, 2),
                      wall_s=round(wall, 3), row0_identical_to_solo=out[0].tokens == solo, peak_memory_gb=self.peak_gb())

    def kv_cache(self) -> None:
        mx = self.mx
        from mlxseek.generation.steps import generate_step
        from mlxseek.layers.mla import MultiHeadLatentAttention

        model = self._load(self._bench_model())
        ctx, gen = (128, 8) if self.quick else (4096, 64)
        prompt = mx.array(np.random.default_rng(1).integers(3, model.config.vocab_size, ctx), dtype=mx.uint32)
        attn = [m for _, m in model.named_modules() if isinstance(m, MultiHeadLatentAttention)]
        base = None
        for bits, read in ((None, "-"), (8, "packed"), (8, "dequantize"), (4, "packed"), (4, "dequantize")):
            for m in attn:
                m.quantized_cache_read = read if bits else "auto"
            cache = model.make_cache(kv_bits=bits)
            steps = generate_step(prompt, model, max_tokens=gen, prompt_cache=cache)
            first_tok, first_lp = next(steps)
            mx.synchronize()
            t0 = time.perf_counter()
            toks = [first_tok] + [t for t, _ in steps]
            mx.synchronize()
            tps = (len(toks) - 1) / (time.perf_counter() - t0)
            row = {"kv_bits": bits, "read": read, "context": ctx, "decode_tps": round(tps, 2),
                   "cache_gb": round(sum(c.nbytes for c in cache) / 1e9, 4)}
            if base is None:
                base = (np.array(first_lp.astype(mx.float32)), toks)
            else:
                row.update(first_step_max_abs_logprob_diff=round(float(np.abs(np.array(first_lp.astype(mx.float32))
                                                                              - base[0]).max()), 5),
                           greedy_agree_prefix=next((i for i, (a, b) in enumerate(zip(toks, base[1])) if a != b),
                                                    len(toks)))
            self.emit("kv_cache", **row)
            del cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on MLX's CPU backend, GPU decisions forced")
    ap.add_argument("--work", default="/tmp/mlxseek-gpu-check", help="scratch folder (bench model, conversions)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="sections past this many seconds are skipped")
    ap.add_argument("--only", nargs="+", choices=["parity", "speed", "mtp", "dspark", "batch", "kv_cache"])
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    check = Check(args)
    check.env()
    if not check.on_gpu and not args.allow_cpu:
        check.emit("env", error="no GPU: MLX's default device is the CPU; pass --allow-cpu to run anyway")
        raise SystemExit(2)
    for name in args.only or ["parity", "speed", "mtp", "dspark", "batch", "kv_cache"]:
        check.section(name, getattr(check, name))


if __name__ == "__main__":
    main()
