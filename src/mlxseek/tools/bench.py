"""`mlxseek bench`: prefill and decode speed, achieved bandwidth and % of the memory roofline, optionally
side by side with mlx-lm on the same checkpoint folder in the same process.

Decode at batch 1 is memory-bound, so the honest decode metric is achieved GB/s = tok/s x active bytes
per token (gpt-fast's), where active bytes = everything a token reads: attention, dense and shared MLPs,
the top-k routed experts (K/E of each expert stack), the LM head, one embedding row, norms and router, at
the loaded model's actual packed sizes. The KV cache read is left out (a few % at these lengths).
Every engine runs the same random prompt through its own token loop (mlxseek's `generate_step`,
mlx-lm's `generate_step`), timed the same way, greedy, with no EOS stop.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..config import ModelConfig
from ..errors import CheckpointError, GenerationError
from .roofline import chip_name, memory_bandwidth

ENGINES = ("mlxseek", "mlx-lm", "mlx-lm-fp32")
WARMUP_PROMPT, WARMUP_TOKENS = 16, 4


def active_bytes_per_token(model, cfg: ModelConfig) -> int:
    """Bytes of weights read to decode one token (see the module docstring); works on mlx-lm's DeepSeek
    models too, whose parameter paths are the same."""
    total = 0.0
    share = cfg.routed_expert_fraction
    for name, p in tree_flatten(model.parameters()):
        if name.startswith("mtp."):
            continue  # plain decoding never runs the MTP module
        if ".switch_mlp." in name:
            total += p.nbytes * share  # (E, ...) stacks: K of E experts per token
        elif name.startswith("model.embed_tokens."):
            total += p.nbytes / cfg.vocab_size  # one row
        else:
            total += p.nbytes
    return int(total)


def _activation_dtype(model) -> str:
    # Activations take the dtype of the first floating parameters the embedding output meets (its
    # scales when quantized, else its weight).
    emb = model.model.embed_tokens
    return str(getattr(emb, "scales", emb.weight).dtype).replace("mlx.core.", "")


def _time_run(step_fn: Callable, model, prompt: mx.array, gen_tokens: int) -> tuple[float, float]:
    """One run from an empty cache: (prefill tok/s, decode tok/s) over the same wall clock."""
    mx.synchronize()
    t0 = time.perf_counter()
    t1 = None
    for n, _ in enumerate(step_fn(prompt, model, gen_tokens)):
        if n == 0:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    mx.synchronize()  # mlx-lm queues one step past the last token: let it finish outside the timers
    return prompt.size / (t1 - t0), (gen_tokens - 1) / max(t2 - t1, 1e-9)


def _ours_steps(prompt, model, n):
    from ..generation.steps import generate_step

    return generate_step(prompt, model, max_tokens=n)


def _mlx_lm_steps(prompt, model, n):
    from mlx_lm.generate import generate_step

    return generate_step(prompt, model, max_tokens=n)


def _load(engine: str, folder: Path, load_options: Optional[dict] = None):
    if engine == "mlxseek":
        from ..loading.loader import load_model

        return load_model(folder, **(load_options or {}))
    from mlx_lm.utils import load_model as mlx_lm_load_model

    model = mlx_lm_load_model(folder)[0]
    if engine == "mlx-lm-fp32":
        # The float32-forced variant: every floating parameter (norms, quantization scales/biases,
        # router) cast, so activations run in float32 as mlxseek's do on the CPU backend.
        model.set_dtype(mx.float32)
        mx.eval(model.parameters())
    return model


def _one_line(msg: str, limit: int = 240) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def measure(engine: str, folder: Path, cfg: ModelConfig, prompt: mx.array, *, gen_tokens: int, runs: int,
            bandwidth: float, load_options: Optional[dict] = None) -> dict:
    """Load `folder` with `engine`, warm up, time `runs` runs; one flat JSON-able dict."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    row = {"engine": engine, "model": str(folder), "prompt_tokens": int(prompt.size), "gen_tokens": gen_tokens,
           "runs": runs}
    try:
        if load_options and engine != "mlxseek":  # mlx-lm would load the whole model on every rank
            raise ValueError("--distributed / --expert-memory-gb apply to mlxseek only; drop --vs")
        model = _load(engine, folder, load_options)
    except Exception as e:  # mlx-lm may reject a folder mlxseek reads (MTP layer, bf16 gather_mm on CPU)
        return {**row, "error": _one_line(f"{engine} could not load {folder}: {type(e).__name__}: {e}")}
    step_fn = _ours_steps if engine == "mlxseek" else _mlx_lm_steps
    try:
        _time_run(step_fn, model, prompt[:WARMUP_PROMPT], WARMUP_TOKENS)
        timings = [_time_run(step_fn, model, prompt, gen_tokens) for _ in range(runs)]
    except Exception as e:
        return {**row, "error": _one_line(f"{engine} failed to run: {type(e).__name__}: {e}")}
    nbytes = active_bytes_per_token(model, cfg)
    decode = statistics.median(t[1] for t in timings)
    roofline = bandwidth * 1e9 / nbytes
    row.update(
        activation_dtype=_activation_dtype(model),
        prefill_tps=statistics.median(t[0] for t in timings), decode_tps=decode,
        active_bytes_per_token=nbytes, achieved_gbps=decode * nbytes / 1e9,
        roofline_tps=roofline, pct_roofline=100.0 * decode / roofline,
        peak_memory_gb=mx.get_peak_memory() / 1e9,
    )
    del model
    return row


def bench(model: str | Path, *, prompt_tokens: int = 512, gen_tokens: int = 128, runs: int = 3,
          vs: Sequence[str] = (), bandwidth: Optional[float] = None, seed: int = 0,
          on_row: Optional[Callable[[dict], None]] = None, load_options: Optional[dict] = None,
          ours: str | Path | None = None) -> list[dict]:
    """Measure mlxseek (and each engine in `vs`: "mlx-lm", "mlx-lm-fp32") on the checkpoint `model`.

    ours: a folder mlxseek reads instead of `model`, e.g. `mlxseek convert --layout kmajor` of the same
    source as `model` (mlx-lm cannot read that layout); the engines in `vs` still read `model`.

    Returns one dict per engine; rows after the first carry `decode_speedup`/`prefill_speedup`
    (mlxseek / that engine). `on_row` is called as each row is ready.
    """
    folder = Path(model)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass --model a checkpoint folder")
    cfg = ModelConfig.from_file(folder)
    for name, value in (("--prompt-tokens", prompt_tokens), ("--gen-tokens", gen_tokens), ("--runs", runs)):
        if value < 1 or (name == "--gen-tokens" and value < 2):
            raise GenerationError(f"{name} must be at least {2 if name == '--gen-tokens' else 1}, got {value}")
    if prompt_tokens + gen_tokens > cfg.max_position_embeddings:
        raise GenerationError(
            f"--prompt-tokens + --gen-tokens = {prompt_tokens + gen_tokens} exceeds the model's context "
            f"({cfg.max_position_embeddings}, config.json max_position_embeddings)"
        )
    gbps, source = memory_bandwidth(bandwidth)
    # Ordinary token ids: skip the few specials at the start of the DeepSeek vocabulary.
    ids = np.random.default_rng(seed).integers(min(3, cfg.vocab_size - 1), cfg.vocab_size, prompt_tokens)
    prompt = mx.array(ids, dtype=mx.uint32)
    common = {"device": f"{mx.default_device()} ({chip_name()})", "bandwidth_gbps": gbps, "bandwidth_source": source}
    rows = []
    for engine in ("mlxseek", *[e for e in vs if e != "mlxseek"]):
        where = Path(ours) if ours and engine == "mlxseek" else folder
        row = {**measure(engine, where, cfg, prompt, gen_tokens=gen_tokens, runs=runs, bandwidth=gbps,
                         load_options=load_options), **common}
        if rows and "error" not in row and "error" not in rows[0]:
            row["decode_speedup"] = rows[0]["decode_tps"] / row["decode_tps"]
            row["prefill_speedup"] = rows[0]["prefill_tps"] / row["prefill_tps"]
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of bench rows, plus the device and bandwidth line."""
    head = ("| engine | activations | prefill tok/s | decode tok/s | GB/s | % roofline | peak GB "
            "| mlxseek decode x | mlxseek prefill x |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['error']} |" + " |" * 7)
            continue
        dx = f"{r['decode_speedup']:.2f}" if "decode_speedup" in r else "-"
        px = f"{r['prefill_speedup']:.2f}" if "prefill_speedup" in r else "-"
        lines.append(
            f"| {r['engine']} | {r['activation_dtype']} | {r['prefill_tps']:.1f} | {r['decode_tps']:.2f} "
            f"| {r['achieved_gbps']:.2f} | {r['pct_roofline']:.1f}% | {r['peak_memory_gb']:.2f} | {dx} | {px} |"
        )
    r0 = rows[0]
    ok = next((r for r in rows if "error" not in r), None)
    lines.append("")
    lines.append(f"device: {r0['device']}; memory bandwidth {r0['bandwidth_gbps']:.1f} GB/s ({r0['bandwidth_source']})")
    if ok:
        lines.append(
            f"model: {ok['model']}; {ok['prompt_tokens']}-token prompt, {ok['gen_tokens']} generated, "
            f"median of {ok['runs']} run(s); mlxseek reads {ok['active_bytes_per_token'] / 1e6:.1f} MB/token"
        )
    return "\n".join(lines)
