"""Per-layer caches. MLA caches only the compressed latent (R) and the rotary key (Dr) per token.

The latent cache reuses mlx-lm's KVCache storage (keys = latent (B, 1, S, R), values = rotary key
(B, 1, S, Dr)), so it is trimmable and works with mlx-lm's prompt-cache utilities and generate loop.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, _BaseCache

from ..config import ModelConfig
from ..errors import GenerationError
from .protocol import Capabilities, CacheState, CacheStateError, check_kind, cut, owned

TOKEN_AXIS = 2  # every latent-cache array is (B, 1, S, X)


def _tokens(arrays: dict, n: int, kind: str) -> dict:
    """Copies of the first n tokens of each array; a wrong token count names the array."""
    out = {}
    for name, a in arrays.items():
        if a.ndim != 4 or a.shape[TOKEN_AXIS] < n:
            raise CacheStateError(f"cache state {kind}.{name}: shape {tuple(a.shape)} holds fewer than {n} tokens")
        out[name] = owned(a[..., :n, :])
    return out


class LatentCache(KVCache):
    """MLA latent cache: (kv_lora_rank + qk_rope_head_dim) values per token per layer."""

    kind = "latent"
    capabilities = Capabilities(cut=True, batch=True, quantize=True)

    def _named(self) -> dict:
        return {} if self.keys is None else {"keys": self.keys, "values": self.values}

    def snapshot(self) -> CacheState:
        n = self.offset
        return CacheState(self.kind, n, _tokens(self._named(), n, self.kind) if n else {}, {}, TOKEN_AXIS)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        a = _tokens(state.arrays, state.offset, self.kind)
        if a:
            self.state = (a["keys"], a["values"], state.offset)

    cut_state = staticmethod(cut)

    def to_quantized(self, group_size: int = 64, bits: int = 8) -> "QuantizedLatentCache":
        """What mlx-lm's `--kv-bits` calls: the same tokens, latent quantized (rope key kept)."""
        q = QuantizedLatentCache(group_size=group_size, bits=bits)
        if self.keys is not None:
            latent, rope = self.keys_and_values()
            q.update_and_fetch(latent, rope)
        return q


class QuantizedLatentCache(_BaseCache):
    """Latent cache with the latent (R) quantized in groups along R; the rotary key (Dr, 11% of the
    values for V3) stays in the compute dtype because position information is what low bits hurt most.

    update_and_fetch returns ((packed (B, 1, S, R*bits/32), scales, biases), rope (B, 1, S, Dr)):
    absorbed MLA multiplies against the packed latent directly (quantized_matmul), naive MLA
    dequantizes it."""

    step = 256
    kind = "qlatent"
    capabilities = Capabilities(cut=True, batch=False, quantize=False)
    cut_state = staticmethod(cut)

    def snapshot(self) -> CacheState:
        n, meta = self.offset, {"group_size": self.group_size, "bits": self.bits}
        if self.latent is None or n == 0:
            return CacheState(self.kind, 0, {}, meta, TOKEN_AXIS)
        named = {f"latent{j}": a for j, a in enumerate(self.latent)} | {"rope": self.rope.keys}
        return CacheState(self.kind, n, _tokens(named, n, self.kind), meta, TOKEN_AXIS)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        self.group_size, self.bits = state.meta["group_size"], state.meta["bits"]
        a = _tokens(state.arrays, state.offset, self.kind)
        if a:
            self.state = ([a["latent0"], a["latent1"], a["latent2"]], a["rope"], state.offset,
                          self.group_size, self.bits)

    def __init__(self, group_size: int = 64, bits: int = 8):
        self.group_size, self.bits = group_size, bits
        self.latent = None  # (packed, scales, biases), capacity along axis 2
        self.rope = KVCache()  # keys = rotary key; zero-width values
        self.offset = 0

    def update_and_fetch(self, latent: mx.array, k_pe: mx.array):
        B, _, L, R = latent.shape
        if R % self.group_size:
            raise GenerationError(
                f"kv cache quantization: kv_lora_rank {R} is not a multiple of kv_group_size {self.group_size}"
            )
        prev = self.offset
        if self.latent is None or prev + L > self.latent[0].shape[2]:
            grow = (self.step + L - 1) // self.step * self.step
            zeros = mx.quantize(mx.zeros((B, 1, grow, R), latent.dtype), group_size=self.group_size, bits=self.bits)
            old = [a[..., :prev, :] for a in self.latent] if self.latent is not None else None
            self.latent = [mx.concatenate([o, z], axis=2) for o, z in zip(old, zeros)] if old else list(zeros)
        q = mx.quantize(latent, group_size=self.group_size, bits=self.bits)
        for buf, new in zip(self.latent, q):
            buf[..., prev : prev + L, :] = new
        self.offset += L
        rope = self.rope.update_and_fetch(k_pe, k_pe[..., :0])[0]
        return tuple(a[..., : self.offset, :] for a in self.latent), rope

    def dequantized(self, packed: tuple) -> mx.array:
        return mx.dequantize(*packed, group_size=self.group_size, bits=self.bits)

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self.offset, n)
        self.offset -= n
        self.rope.trim(n)
        return n

    def size(self) -> int:
        return self.offset

    def empty(self) -> bool:
        return self.latent is None

    @property
    def state(self):
        return self.latent, self.rope.keys, self.offset, self.group_size, self.bits

    @state.setter
    def state(self, v):
        self.latent, rope, self.offset, self.group_size, self.bits = v
        self.rope = KVCache()
        if rope is not None:
            self.rope.state = (rope, rope[..., :0], self.offset)

    @property
    def nbytes(self) -> int:
        """Allocated bytes, like mlx-lm's caches (capacity grows in steps of 256 tokens)."""
        return 0 if self.latent is None else sum(a.nbytes for a in self.latent) + self.rope.nbytes

    def bytes_per_token(self) -> float:
        return sum(a.nbytes / a.shape[2] for a in self.latent) + self.rope.keys.nbytes / self.rope.keys.shape[2]


class DSACache(LatentCache):
    """V3.2 (DSA) cache: the MLA latent cache plus the lightning indexer's keys (index_head_dim per token).

    Both grow by the same tokens and `trim` rolls both back, so speculative rollback keeps them in step.
    The indexer keys reuse a KVCache (keys (B, 1, S, Di); zero-width values, so no memory)."""

    kind = "dsa"
    capabilities = Capabilities(cut=True, batch=True, quantize=False)

    def __init__(self):
        super().__init__()
        self.index = KVCache()

    def _named(self) -> dict:
        return {} if self.keys is None else {"keys": self.keys, "values": self.values, "index": self.index.keys}

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        a = _tokens(state.arrays, state.offset, self.kind)
        if a:
            self.state = (a["keys"], a["values"], state.offset, a["index"])

    def update_index_keys(self, keys):
        """Append the new tokens' indexer keys (B, 1, L, Di); returns all of them, (B, 1, S, Di)."""
        return self.index.update_and_fetch(keys, keys[..., :0])[0]

    def trim(self, n: int) -> int:
        n = super().trim(n)
        self.index.trim(n)
        return n

    def to_quantized(self, group_size: int = 64, bits: int = 8):
        raise GenerationError("kv cache quantization is not supported for deepseek_v32 (DSA) models yet")

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.index.keys

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, index_keys = v
        self.index = KVCache()
        if index_keys is not None:
            self.index.state = (index_keys, index_keys[..., :0], self.offset)

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.index.nbytes


def make_cache(
    cfg: ModelConfig, num_layers: int | None = None, *, kv_bits: int | None = None, kv_group_size: int = 64,
    dsa: bool = False,
) -> list:
    """One cache per layer; `kv_bits` (8 or 4) quantizes the MLA latent from the first token; `dsa`: the
    layers also keep DSA indexer keys (the family says so: V3.2)."""
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    if kv_bits is not None:
        if dsa:
            raise GenerationError("kv cache quantization is not supported for deepseek_v32 (DSA) models yet")
        return [QuantizedLatentCache(group_size=kv_group_size, bits=kv_bits) for _ in range(n)]
    cls = DSACache if dsa else LatentCache
    return [cls() for _ in range(n)]


def latent_values_per_token(cfg: ModelConfig) -> int:
    """Cached values per token per layer for absorbed MLA."""
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim


def mha_values_per_token(cfg: ModelConfig) -> int:
    """What a per-head K/V cache (mlx-lm's deepseek_v2) stores per token per layer."""
    return cfg.num_attention_heads * (cfg.q_head_dim + cfg.v_head_dim)
