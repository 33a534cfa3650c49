"""Measured KV-cache bytes per token at real DeepSeek shapes: mlxseek's latent cache vs mlx-lm's cache.

Builds one decoder layer of each published shape (random weights, dense FFN to keep it small), runs the same
tokens through mlxseek and mlx-lm, and reads the bytes each cache holds. Prints JSON lines.

    python benchmarks/cache_bytes.py
"""

import json
from pathlib import Path

import mlx.core as mx

from mlxseek.config import ModelConfig
from mlxseek.models.deepseek_v3 import Model

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "data" / "configs"


def one_layer(d: dict) -> dict:
    # One decoder layer, dense FFN, small vocab: the attention (and so the cache) keeps its real shape.
    return {**d, "num_hidden_layers": 1, "first_k_dense_replace": 1, "vocab_size": 256,
            "num_nextn_predict_layers": 0, "quantization_config": None}


def used_bytes(cache) -> float:
    c = cache[0]
    if hasattr(c, "bytes_per_token"):
        return c.bytes_per_token()
    return sum(a.nbytes for a in c.keys_and_values()) / c.offset


def main() -> None:
    from mlx_lm.models import deepseek_v2, deepseek_v3
    from mlx_lm.models.cache import make_prompt_cache

    tokens = mx.array([[0, 5, 9, 13, 17, 21, 25, 29]])
    for name, mod in (("deepseek_v2_lite", deepseek_v2), ("deepseek_v3", deepseek_v3)):
        d = one_layer(json.loads((CONFIGS / f"{name}.json").read_text()))
        ours = Model(ModelConfig.from_dict(d))
        ours.set_dtype(mx.bfloat16)
        row = {"shape": name}
        for label, kw in (("mlxseek", {}), ("mlxseek_8bit", {"kv_bits": 8}), ("mlxseek_4bit", {"kv_bits": 4})):
            cache = ours.make_cache(**kw)
            mx.eval(ours(tokens, cache))
            row[f"{label}_bytes_per_token_per_layer"] = used_bytes(cache)
        ref = mod.Model(mod.ModelArgs.from_dict({k: v for k, v in d.items() if v is not None}))
        ref.set_dtype(mx.bfloat16)
        cache = make_prompt_cache(ref)
        mx.eval(ref(tokens, cache=cache))
        row["mlx_lm_bytes_per_token_per_layer"] = used_bytes(cache)
        row["ratio_mlx_lm_over_mlxseek"] = row["mlx_lm_bytes_per_token_per_layer"] / row["mlxseek_bytes_per_token_per_layer"]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
