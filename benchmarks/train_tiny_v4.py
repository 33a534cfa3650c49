#!/usr/bin/env python
"""Train a tiny DeepSeek-V4 (mHC, CSA/HCA compressed attention with the indexer, hash-routed and
sqrtsoftplus MoE, sinks) jointly with its MTP head, with MLX on the CPU, on the same stdlib corpus and
tokenizer as `train_tiny.py`'s V3, and publish it in DeepSeek's official V4 layout (bf16).

    python benchmarks/train_tiny_v4.py                      # ~25 min on 2 shared cores; writes the fixture
    python benchmarks/train_tiny_v4.py --steps 20 --out /tmp/tiny_v4   # smoke run

The shape is V4-Flash's, scaled down: compress ratios 4 (CSA, with the indexer) and 128 (HCA; the only
ratios transformers' V4 config accepts, and the tokenizer loader reads config.json through it), 256-token
training windows (so HCA layers see complete groups) and a 32-token sliding window that every training
window and test prompt crosses. The indexer's selection is discrete, so its own weights get no gradient
here and stay at their initial draw (DeepSeek trains them with a separate KL loss). The loss and the loop are
`train_tiny.py`'s (main CE + MTP_LAMBDA * MTP CE, auxiliary-loss-free balancing of the sqrtsoftplus
layers); V4's MTP reads the last layer's hc streams and embed(t+1) (`V4Model.mtp_forward`). The
tokenizer is trained_v3's own file, plus one id past it that the text never uses: DSpark's noise token
(`train_dspark.py --backbone`). Attention trains through the naive sink softmax (the reference path).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from train_tiny import MTP_LAMBDA, _maybe_reexec_with_openblas, train_loop  # noqa: E402

V3_FIXTURE = ROOT / "tests/fixtures/trained_v3"
# Official V4 config.json key names (DeepSeek-V4-Flash), sized to train in ~25 minutes on 2 CPU cores.
CONFIG = {
    "architectures": ["DeepseekV4ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "compress_ratios": [0, 4, 128, 4, 0], "compress_rope_theta": 160000,
    "hc_eps": 1e-06, "hc_mult": 4, "hc_sinkhorn_iters": 20, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 128, "index_head_dim": 32, "index_n_heads": 4, "index_topk": 8, "initializer_range": 0.02,
    "max_position_embeddings": 1024, "model_type": "deepseek_v4", "moe_intermediate_size": 96,
    "n_routed_experts": 8, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4,
    "num_experts_per_tok": 2, "num_hash_layers": 1, "num_hidden_layers": 4, "num_key_value_heads": 1,
    "num_nextn_predict_layers": 1, "o_groups": 2, "o_lora_rank": 64, "q_lora_rank": 64, "qk_rope_head_dim": 16,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus",
    "sliding_window": 32, "swiglu_limit": 10.0, "tie_word_embeddings": False, "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
}
# Parameters whose module default is the right start: mHC biases 0 and scales 1 (pre 0.5, post 1, comb
# uniform), sinks and compressor position biases 0, router bias 0 (`init_weights` draws the rest).
KEEP_INIT = (".base", ".scale", "sinks", "position_bias", "e_score_correction_bias", "tid2eid")


def v4_forward(model, x, y1):
    """(main logits for t+1, MTP logits for t+2), (B, L, V): the MTP head reads the last layer's streams."""
    streams = model.trunk(x)  # (B, L, n, D)
    mtp_logits, _ = model.mtp_forward(streams, y1)
    return model.head(streams), mtp_logits


def hash_table(vocab: int, experts: int, k: int, seed: int):
    """tid2eid (V, K) int32: K distinct experts per token id, drawn uniformly (the release's table is
    fixed before training too)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((vocab, experts)), axis=1)[:, :k].astype(np.int32)


def build(cfg, seed: int):
    import mlx.core as mx
    from tiny_trainer import init_weights

    from mlxseek.models.deepseek_v4 import V4Model

    model = V4Model(cfg)
    init_weights(model, cfg, seed=seed, out_proj=("o_b_proj.weight", "down_proj.weight"), keep=KEEP_INIT)
    for i, layer in enumerate(model.model.layers):
        if cfg.is_hash_layer(i):
            table = hash_table(cfg.vocab_size, cfg.n_routed_experts, cfg.num_experts_per_tok, seed + i)
            layer.mlp.gate.tid2eid = mx.array(table)
    model.set_attention_impl("naive")  # differentiable everywhere; the fast path is tested equal to it
    return model


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/trained_v4")
    ap.add_argument("--steps", type=int, default=260)
    ap.add_argument("--time-budget", type=float, default=1500.0, help="seconds; stop early if reached")
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--eval-seq", type=int, default=256, help="trained_v3's held-out windows")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--bias-rate", type=float, default=1e-2)
    ap.add_argument("--mtp-lambda", type=float, default=MTP_LAMBDA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-openblas", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    _maybe_reexec_with_openblas(args)
    import mlx.core as mx
    import numpy as np
    import tiny_corpus
    from tiny_trainer import Trainer, evaluate
    from tokenizers import Tokenizer

    from mlxseek.config import ModelConfig

    t0 = time.perf_counter()
    mx.random.seed(args.seed)
    train_texts, held_texts, held_names = tiny_corpus.split_corpus()
    tok = Tokenizer.from_file(str(V3_FIXTURE / "tokenizer.json"))
    train_ids = np.array(tiny_corpus.encode_documents(tok, train_texts), dtype=np.int32)
    held_ids = np.array(tiny_corpus.encode_documents(tok, held_texts), dtype=np.int32)
    config = {**CONFIG, "vocab_size": tok.get_vocab_size() + 1}  # + the noise id the text never uses
    cfg = ModelConfig.from_dict(config)
    model = build(cfg, args.seed)
    print(f"corpus {train_ids.size} train / {held_ids.size} held-out tokens | BLAS: "
          f"{os.environ.get('MLXSEEK_TRAIN_BLAS', 'bundled')}", flush=True)
    trainer = Trainer(model, cfg, lr=args.lr, warmup=args.warmup, steps=args.steps, mtp_lambda=args.mtp_lambda,
                      bias_rate=args.bias_rate, forward=v4_forward, on_finish=lambda m: None)
    steps_done, train_seconds = train_loop(args, trainer, train_ids)
    trainer.finish()
    model.eval()
    held = evaluate(model, held_ids, seq=args.eval_seq, forward=v4_forward)
    v3 = json.loads((V3_FIXTURE / "training.json").read_text())
    report = {
        "steps": steps_done, "schedule_steps": args.steps, "batch": args.batch, "seq": args.seq,
        "train_tokens": steps_done * args.batch * args.seq, "train_seconds": round(train_seconds, 1),
        "seed": args.seed, "lr": args.lr, "mtp_lambda": args.mtp_lambda, "bias_rate": args.bias_rate,
        "blas": os.environ.get("MLXSEEK_TRAIN_BLAS", "bundled"), "heldout_files": held_names,
        "heldout_tokens": held["tokens"], "heldout_seq": args.eval_seq, "heldout_ppl": round(held["ppl"], 3),
        "heldout_mtp_ppl": round(held["mtp_ppl"], 3), "uniform_ppl": cfg.vocab_size,
        "trained_v3_heldout_ppl": v3["heldout_ppl"], "trained_v3_heldout_mtp_ppl": v3["heldout_mtp_ppl"],
        "expert_load_max_over_mean": {n: round(x, 3) for n, x in zip(trainer.gate_names, trainer.last_imbalance)},
    }
    if steps_done < args.steps:
        report["reproduce"] = f"python benchmarks/train_tiny_v4.py --steps {args.steps} --stop-after {steps_done}"
    print(json.dumps(report), flush=True)
    publish(args.out, model, config, tok, report)
    print(f"total {time.perf_counter() - t0:.0f}s", flush=True)


def publish(out: Path, model, config: dict, tok, report: dict) -> None:
    """bf16 official V4 layout + trained_v3's tokenizer + training.json; then a greedy sample read back.
    Shard 1 holds the backbone alone, shard 2 the MTP head: `train_dspark.py --backbone` copies shard 1
    byte for byte into the DSpark checkpoint, so both drafters sit on one stored backbone."""
    import tiny_corpus

    import mlxseek
    from mlxseek.convert.export import write_official
    from mlxseek.convert.export_v4 import to_official_v4

    tensors = to_official_v4(model)
    backbone = [k for k in tensors if not k.startswith("mtp.")]
    write_official(out, tensors, config, groups=[backbone, [k for k in tensors if k.startswith("mtp.")]])
    tiny_corpus.save_tokenizer(tok, out, config["max_position_embeddings"])
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    loaded, tokenizer = mlxseek.load(out)
    prompt = "def __init__(self"
    print(f"--- sample: {prompt}{mlxseek.generate(loaded, tokenizer, prompt, max_tokens=48)}", flush=True)


if __name__ == "__main__":
    main()
