#!/usr/bin/env python
"""Train a tiny DSpark drafter on a frozen V4 backbone and publish it as a 0731-layout fixture.

    python benchmarks/train_dspark.py                       # ~20 min on 2 busy cores; writes tests/fixtures/trained_dspark
    python benchmarks/train_dspark.py --steps 20 --out /tmp/ds   # smoke run

The backbone (`--backbone`) is tests/fixtures/trained_v4 (`train_tiny_v4.py`: trained on the stdlib
corpus, with its own MTP head), frozen; `--backbone tests/fixtures/v4_flash` gives the random control.
What a drafter must learn is the backbone's own greedy continuation, so the training data is that: greedy
continuations of prompts (windows of the training split's text when the backbone ships a tokenizer,
else random ids), and the loss is DSpark's (the DeepSeek forward as `mlxseek.layers.v4.dspark` implements it):
for a block starting at position P, slot i predicts token P+1+i from the ring (the main model's
target-layer hiddens before P), the block [t_P, NOISE x (k-1)] and the Markov bias of the true previous
token (teacher forcing), for blocks whose targets are all greedy tokens; the confidence head learns
whether its slot's argmax is right (BCE). The drafter's parameters train (embedding and LM head stay the
backbone's); the result is written in the official key layout (`mtp.{s}.*`): shard 2 holds the drafter,
shard 1 is the backbone's own backbone-only shard copied byte for byte (the same stored file as the MTP
checkpoint's, so "DSpark vs MTP" compares two drafters on one backbone).
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
sys.path.insert(0, str(HERE))
from dspark_checkpoint import write_dspark_checkpoint  # noqa: E402

import mlxseek  # noqa: E402
from mlxseek.checkpoint.v4_names import v4_rename  # noqa: E402

FIXTURES = HERE.parent / "tests" / "fixtures"
OUT = FIXTURES / "trained_dspark"
BACKBONE_SHARD, DRAFTER_SHARD = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def text_prompts(folder: Path, n: int, length: int, seed: int) -> np.ndarray | None:
    """(n, length) windows of the training split's token stream (train_tiny's corpus), or None when the
    backbone ships no tokenizer."""
    if not (folder / "tokenizer.json").exists():
        return None
    import tiny_corpus
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = np.array(tiny_corpus.encode_documents(tok, tiny_corpus.split_corpus()[0]), dtype=np.uint32)
    starts = np.random.default_rng(seed).integers(0, ids.size - length, n)
    return np.stack([ids[s: s + length] for s in starts])


def greedy_corpus(model, n: int, prompt_len: int, gen: int, seed: int, chunk: int = 256,
                  prompts: np.ndarray | None = None) -> np.ndarray:
    """(n, prompt_len + gen) token ids: prompts (default random) and the backbone's greedy continuation of
    each, decoded `chunk` rows at a time (rows share offsets, so the batch is exact: the tests compare a
    row with solo)."""
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size - 1  # the last id is DSpark's noise token
    if prompts is None:
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


def train(model, corpus: np.ndarray, *, steps: int, batch: int, k: int, lr: float, seed: int,
          first: int = 8) -> list[dict]:
    """Blocks start at P >= `first` (the prompt's last token: every target is then a greedy token)."""
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
        P = int(rng.integers(first, T - k - 1))
        (loss, acc), grads = step(model, taps[rows], seqs[rows], P)
        opt.update(model, grads)
        mx.eval(model.dspark.parameters(), opt.state, loss, acc)
        if i % 25 == 0 or i == steps - 1:
            log.append({"step": i, "loss": round(loss.item(), 4), "slot_accuracy": round(acc.item(), 4),
                        "seconds": round(time.perf_counter() - tic, 1)})
            print(json.dumps(log[-1]), flush=True)
    return log


def publish(model, init: Path, backbone: Path, out: Path, report: dict) -> None:
    """The backbone's shard 1 (backbone only) copied, the trained drafter as shard 2 under the official
    keys of the initial checkpoint `init`, its config, and the backbone's tokenizer."""
    import shutil

    from mlxseek.convert.export import write_safetensors

    weight_map = json.loads((backbone / "model.safetensors.index.json").read_text())["weight_map"]
    shared = sorted(k for k, f in weight_map.items() if f == BACKBONE_SHARD)
    if any(k.startswith("mtp.") for k in shared) or any(
            f != BACKBONE_SHARD for k, f in weight_map.items() if not k.startswith("mtp.")):
        raise SystemExit(f"{backbone}: {BACKBONE_SHARD} must hold the backbone alone (train_tiny_v4.py writes it so)")
    params = dict(tree_flatten(model.dspark.parameters()))
    init_tensors = {}
    for f in sorted(init.glob("*.safetensors")):
        init_tensors.update(mx.load(str(f)))
    drafter = {}
    for key in sorted(k for k in init_tensors if k.startswith("mtp.")):
        internal = v4_rename(key, dspark=True).removeprefix("dspark.")
        expert = internal.split(".mlp.experts.")
        if len(expert) == 2:  # per-expert official keys <- rows of the stacked switch_mlp weight
            e, rest = expert[1].split(".", 1)
            value = params[f"{expert[0]}.mlp.switch_mlp.{rest}"][int(e)]
        else:
            value = params[internal]
        drafter[key] = value.astype(init_tensors[key].dtype)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(backbone / BACKBONE_SHARD, out / BACKBONE_SHARD)
    write_safetensors(out / DRAFTER_SHARD, drafter)
    total = sum(init_tensors[k].nbytes for k in shared) + sum(v.nbytes for v in drafter.values())
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted({**dict.fromkeys(shared, BACKBONE_SHARD),
                                        **dict.fromkeys(drafter, DRAFTER_SHARD)}.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.copy(init / "config.json", out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (backbone / name).exists():
            shutil.copy(backbone / name, out / name)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, default=FIXTURES / "trained_v4")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=96)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mx.random.seed(args.seed)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        init = write_dspark_checkpoint(Path(tmp) / "init", seed=args.seed, src=args.backbone)
        model = mlxseek.load(init, tokenizer=False, dtype="float32")[0]
        k = model.config.dspark_block_size
        tic = time.perf_counter()
        prompts = text_prompts(args.backbone, args.sequences, args.prompt_tokens, args.seed)
        corpus = greedy_corpus(model, args.sequences, args.prompt_tokens, args.gen_tokens, args.seed,
                               prompts=prompts)
        corpus_s = time.perf_counter() - tic
        log = train(model, corpus, steps=args.steps, batch=args.batch, k=k, lr=args.lr, seed=args.seed,
                    first=args.prompt_tokens - 1)
        source = "windows of the training split's text" if prompts is not None else "random ids"
        report = {"backbone": f"{args.backbone.name} (frozen)",
                  "steps": args.steps, "batch": args.batch, "block": k, "lr": args.lr, "seed": args.seed,
                  "sequences": args.sequences, "sequence_tokens": int(corpus.shape[1]),
                  "corpus_seconds": round(corpus_s, 1), "train_seconds": log[-1]["seconds"], "log": log,
                  "data": f"{args.prompt_tokens}-token prompts ({source}, seeded) and the backbone's greedy "
                          f"{args.gen_tokens}-token continuations; blocks start at the prompt's last token or later"}
        publish(model, init, args.backbone, args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
