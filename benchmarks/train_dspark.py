#!/usr/bin/env python
"""Train a tiny DSpark drafter on a frozen V4 backbone and publish it as a 0731-layout fixture.

    python benchmarks/train_dspark.py                       # ~3-5 min on 2 cores; writes tests/fixtures/trained_dspark
    python benchmarks/train_dspark.py --steps 20 --out /tmp/ds   # smoke run

The backbone is tests/fixtures/v4_flash (random weights, frozen). What a drafter must learn is the
backbone's own greedy continuation, so the training data is that: greedy continuations of random
prompts, and the loss is DSpark's (the DeepSeek forward as `mlxseek.layers.v4.dspark` implements it):
for a block starting at position P, slot i predicts token P+1+i from the ring (the main model's
target-layer hiddens before P), the block [t_P, NOISE x (k-1)] and the Markov bias of the true previous
token (teacher forcing); the confidence head learns whether its slot's argmax is right (BCE). The
drafter's parameters train (embedding and LM head stay the backbone's); the result is written in the
official key layout (`mtp.{s}.*`) beside the backbone's tensors.
Reproducible: prompts, init and batches are seeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))
from dspark_checkpoint import write_dspark_checkpoint  # noqa: E402

import mlxseek  # noqa: E402
from mlxseek.checkpoint.v4_names import v4_rename  # noqa: E402

OUT = HERE.parent / "tests" / "fixtures" / "trained_dspark"


def greedy_corpus(model, n: int, prompt_len: int, gen: int, seed: int, chunk: int = 256) -> np.ndarray:
    """(n, prompt_len + gen) token ids: random prompts and the backbone's greedy continuation of each, decoded
    `chunk` rows at a time (rows share offsets, so the batch is exact: the tests compare a row with solo)."""
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size - 1  # the last id is DSpark's noise token
    prompts = rng.integers(2, V, (n, prompt_len)).astype(np.uint32)
    rows = []
    for lo in range(0, n, chunk):
        cache, x = model.make_cache(), mx.array(prompts[lo: lo + chunk])
        out, logits = [x], model(x, cache)[:, -1]
        for _ in range(gen):
            nxt = mx.argmax(logits, axis=-1).astype(mx.uint32)[:, None]
            out.append(nxt)
            logits = model(nxt, cache)[:, -1]
            mx.async_eval(logits)
        rows.append(np.array(mx.concatenate(out, axis=1)))
    return np.concatenate(rows)


def block_loss(model, taps: mx.array, seqs: mx.array, P: int, k: int) -> tuple[mx.array, mx.array]:
    """Mean CE over k slots of blocks starting at P for every sequence (B, N) + confidence BCE; and accuracy."""
    ds = model.dspark
    B = seqs.shape[0]
    lo = max(0, P - ds.ring_size)
    rings = [r for r in ds.context_rows(taps[:, lo:P], lo)]
    ids = mx.concatenate([seqs[:, P: P + 1], mx.full((B, k - 1), ds.noise_token_id, dtype=seqs.dtype)], axis=1)
    x = ds.block(model.model.embed_tokens(ids), ids, rings, P)  # (B, k, D)
    logits = model.lm_head(ds.norm(x)).astype(mx.float32)  # (B, k, V)
    prev = seqs[:, P: P + k]  # teacher forcing: slot i's Markov bias reads the true token P+i
    bias, emb = ds.markov_head(prev.reshape(-1))
    logits = logits + bias.reshape(B, k, -1)
    target = seqs[:, P + 1: P + 1 + k]
    ce = nn.losses.cross_entropy(logits, target).mean()
    right = (mx.argmax(logits, axis=-1) == target).astype(mx.float32)
    conf = ds.confidence_head(x.reshape(B * k, -1), emb).reshape(B, k)
    bce = nn.losses.binary_cross_entropy(mx.clip(conf, 1e-6, 1 - 1e-6), mx.stop_gradient(right),
                                         with_logits=False).mean()
    return ce + 0.1 * bce, right.mean()


def train(model, corpus: np.ndarray, *, steps: int, batch: int, k: int, lr: float, seed: int) -> list[dict]:
    model.freeze()
    model.dspark.unfreeze()
    seqs = mx.array(corpus)
    parts = []
    for lo in range(0, seqs.shape[0], 128):  # the frozen backbone's target hiddens, once
        parts.append(model.trunk_taps(seqs[lo: lo + 128])[1])
        mx.eval(parts[-1])
    taps = mx.concatenate(parts)
    opt = optim.Adam(learning_rate=optim.cosine_decay(lr, steps))
    step = nn.value_and_grad(model, lambda m, t, s, P: block_loss(m, t, s, P, k))
    rng = np.random.default_rng(seed)
    log, tic = [], time.perf_counter()
    N, T = corpus.shape
    for i in range(steps):
        rows = mx.array(rng.choice(N, size=min(batch, N), replace=False))
        P = int(rng.integers(8, T - k - 1))
        (loss, acc), grads = step(model, taps[rows], seqs[rows], P)
        opt.update(model, grads)
        mx.eval(model.dspark.parameters(), opt.state, loss, acc)
        if i % 25 == 0 or i == steps - 1:
            log.append({"step": i, "loss": round(loss.item(), 4), "slot_accuracy": round(acc.item(), 4),
                        "seconds": round(time.perf_counter() - tic, 1)})
            print(json.dumps(log[-1]), flush=True)
    return log


def publish(model, src: Path, out: Path, report: dict) -> None:
    """The random checkpoint's official layout, with the trained drafter's values under the same keys."""
    import shutil

    params = dict(tree_flatten(model.dspark.parameters()))
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(mx.load(str(f)))
    for key, old in tensors.items():
        if not key.startswith("mtp."):
            continue
        internal = v4_rename(key, dspark=True).removeprefix("dspark.")
        expert = internal.split(".mlp.experts.")
        if len(expert) == 2:  # per-expert official keys <- rows of the stacked switch_mlp weight
            e, rest = expert[1].split(".", 1)
            value = params[f"{expert[0]}.mlp.switch_mlp.{rest}"][int(e)]
        else:
            value = params[internal]
        tensors[key] = value.astype(old.dtype)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for name in sorted(set(index["weight_map"].values())):
        part = {k: v for k, v in tensors.items() if index["weight_map"][k] == name}
        mx.save_safetensors(str(out / name), part, metadata={"format": "pt"})
    for f in ("model.safetensors.index.json", "config.json"):
        shutil.copy(src / f, out / f)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sequences", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mx.random.seed(args.seed)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = write_dspark_checkpoint(Path(tmp) / "init", seed=args.seed)
        model = mlxseek.load(src, tokenizer=False, dtype="float32")[0]
        k = model.config.dspark_block_size
        tic = time.perf_counter()
        corpus = greedy_corpus(model, args.sequences, 16, 112, args.seed)
        corpus_s = time.perf_counter() - tic
        log = train(model, corpus, steps=args.steps, batch=args.batch, k=k, lr=args.lr, seed=args.seed)
        report = {"backbone": "tests/fixtures/v4_flash (frozen, random weights)", "steps": args.steps,
                  "batch": args.batch, "block": k, "lr": args.lr, "seed": args.seed, "sequences": args.sequences,
                  "sequence_tokens": int(corpus.shape[1]), "corpus_seconds": round(corpus_s, 1), "log": log,
                  "data": "random 16-token prompts (seeded) and the backbone's greedy 112-token continuations"}
        publish(model, src, args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
