"""DeepSeek-V4.1-Flash (`deepseek_v41`): embed -> hc_mult copies of the residual stream -> V4.1 blocks
(Engram n-gram memory before attention on `engram_layer_ids`; CSA2 attention whose compressed KV and top-k
selection are computed by source layers and reused by the layers after them; lagged mHC; sqrtsoftplus MoE
with no hash layers) -> collapse with the last `pre` -> RMSNorm -> lm_head. Follows `models.base`.

Engram tables are never part of the parameters: `attach_engram(hasher, memory)` gives the model a hasher
(layers/v41/engram_hash) and a row source (checkpoint/engram_rows: resident, or read from disk into a
byte-budgeted LRU). Each forward hashes all its positions first, then starts the reads of each table's
distinct rows in the background before layer 0 (the rows depend on token ids only: in decode, as soon as the
token is known); an Engram layer waits only for its own rows, while the layers before it compute.
`engram_overlap = False` fetches everything before layer 0 instead (the synchronous reference).
Vision (`vision_config`) is out of scope: the text model runs; image inputs are refused.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..cache.dspark import DSparkCache
from ..cache.v41 import make_v41_cache
from ..config import ModelConfig
from ..errors import ConfigError, GenerationError
from ..layers.experts import RoutedExperts
from ..layers.norms import RMSNorm
from ..layers.v4.moe import ClampedMLP
from ..layers.v41.attention import CSA2Attention
from ..layers.v41.block import V41DecoderLayer, collapse, expand
from ..layers.v41.dspark import DSpark41
from ..layers.v41.engram import PendingRows, gather_rows
from ..layers.v41.fake_quant import fake_fp8
from ..layers.v41.indexer import CSA2Indexer
from .base import CausalLM


def check_v41_config(cfg: ModelConfig) -> None:
    """The V4.1 relations the model relies on; ConfigError names the key."""
    n = cfg.num_hidden_layers
    if len(cfg.compress_ratios or []) < n:
        raise ConfigError(f"config.json: compress_ratios has {len(cfg.compress_ratios or [])} entries for {n} layers")
    for key in ("kv_source_layer_ids", "index_source_layer_ids", "engram_layer_ids"):
        bad = [i for i in getattr(cfg, key) or [] if not 0 <= i < n]
        if bad:
            raise ConfigError(f"config.json: {key} {bad} are not layers of this {n}-layer model")
    first_ratio = next((i for i in range(n) if cfg.compress_ratios[i]), None)
    if first_ratio is not None and first_ratio not in (cfg.kv_source_layer_ids or []):
        raise ConfigError(f"config.json: kv_source_layer_ids: layer {first_ratio} is the first with a compress "
                          "ratio, so it must be a KV source (a later layer cannot reuse entries not yet made)")


class V41Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hc_mult, self.engram_ids = cfg.hc_mult, list(cfg.engram_layer_ids or [])
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [V41DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache: list, engram_rows: dict, taps: tuple = ()):
        """-> the final normed hidden (B, L, D); with `taps`, also the mean over streams of those layers'
        inputs, concatenated (B, L, len(taps)*D): what the DSpark drafter reads. V4.1 taps the streams entering
        a target layer ("attention input", transformers' V4.1 config at 0a2080b4), not V4's layer output."""
        streams, pre = expand(self.embed_tokens(inputs), self.hc_mult)
        shared: dict = {}
        tapped = {}
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            rows = engram_rows.get(i)
            if isinstance(rows, PendingRows):
                rows = rows.get(before=streams)
            if i in taps:
                tapped[i] = streams.mean(axis=2)
            streams, pre = layer(streams, pre, c, shared, rows)
        out = self.norm(collapse(streams, pre))
        return (out, mx.concatenate([tapped[i] for i in taps], axis=-1)) if taps else out


class V41Model(CausalLM):
    def __init__(self, cfg: ModelConfig, *, with_mtp: bool = True):
        super().__init__(cfg)
        check_v41_config(cfg)
        self.model = V41Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._engram = None  # (hasher, memory): see attach_engram
        self.engram_overlap = True  # Engram reads overlap the layers before each Engram layer
        if with_mtp and cfg.has_dspark and cfg.dspark_stages:  # stages counted from the checkpoint's mtp.{s}.
            self.dspark = DSpark41(cfg, cfg.dspark_stages)
        self.set_fake_quant(True)  # as DeepSeek's reference runs it: FP8/FP4 cache rows and FP8 matmul inputs

    def attach_engram(self, hasher, memory) -> None:
        """hasher: layers.v41.engram_hash.EngramHasher; memory: checkpoint.engram_rows.DiskRows/ResidentRows."""
        self._engram = (hasher, memory)

    @property
    def engram_memory(self):
        return None if self._engram is None else self._engram[1]

    def _engram_rows(self, inputs: mx.array, cache: list) -> dict:
        ids = self.model.engram_ids
        if not ids:
            return {}
        if self._engram is None:
            raise GenerationError(f"layers {ids} read Engram tables, but none are attached: load the model with "
                                  "mlxseek.load (tables stay on disk) or call model.attach_engram(...)")
        hasher, memory = self._engram
        tokens = np.array(inputs, dtype=np.int64)
        history = cache[0].engram_history
        history = hasher.start(tokens.shape[0]) if history is None else history
        rows, cache[0].engram_history = hasher.rows(tokens, history)
        # The longer look-back a rollback (cache trim) restores the history from.
        trail = history if cache[0].engram_trail is None else cache[0].engram_trail
        trail = np.concatenate([trail, hasher.token_map[tokens]], axis=1)
        cache[0].engram_trail = trail[:, -(history.shape[1] + cache[0].trim_slack):]
        if not self.engram_overlap:
            return {layer: gather_rows(memory, j, rows[:, :, j]) for j, layer in enumerate(ids)}
        return {layer: PendingRows(memory, j, rows[:, :, j]) for j, layer in enumerate(ids)}

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        if input_embeddings is not None:
            raise ValueError("DeepSeek-V4.1 hashes token ids for Engram: pass `inputs`, not embeddings")
        cache = cache if cache is not None else self.make_cache()
        return self.lm_head(self.model(inputs, cache, self._engram_rows(inputs, cache)))

    def trunk(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        cache = cache if cache is not None else self.make_cache()
        return self.model(inputs, cache, self._engram_rows(inputs, cache))

    def trunk_taps(self, inputs: mx.array, cache: Optional[list] = None) -> tuple[mx.array, mx.array]:
        """(the final normed hidden (B, L, D), the DSpark target layers' hiddens (B, L, T*D))."""
        cache = cache if cache is not None else self.make_cache()
        return self.model(inputs, cache, self._engram_rows(inputs, cache), tuple(self.dspark.target_layer_ids))

    def make_dspark_cache(self) -> DSparkCache:
        return DSparkCache(len(self.dspark.stages), self.dspark.ring_size)

    def head(self, hidden: mx.array) -> mx.array:
        return self.lm_head(hidden)

    def make_cache(self, *, kv_bits: int | None = None, kv_group_size: int = 64) -> list:
        if kv_bits is not None:
            raise GenerationError("kv_bits: DeepSeek-V4.1's window and compressed caches are already FP8/FP4 "
                                  "inside the model; drop kv_bits (--kv-bits) for this model")
        return make_v41_cache(self.config)

    def set_fake_quant(self, on: bool, *, activations: bool = True) -> None:
        """Switch the in-forward FP8/FP4 rounding (on by default: the model was trained with it). With `on`,
        `activations` also rounds the matmul inputs of the linears DeepSeek ships FP8/FP4 to FP8 (ue8m0 scale
        per weight block column, 32 for V4.1) as its reference's GEMMs do (layers/v41/fake_quant); mlx-lm and
        transformers' port skip that, so comparisons with them pass activations=False."""
        block = (self.config.fp8_block_size or (32, 32))[1]
        rounding = partial(fake_fp8, block=block) if on and activations else None
        for _, m in self.named_modules():
            if isinstance(m, (CSA2Attention, CSA2Indexer)):  # the DSpark stages' attention too
                m.fake_quant = on
            if isinstance(m, (CSA2Attention, ClampedMLP, RoutedExperts)):
                m.input_rounding = rounding

    def set_attention_impl(self, impl: str) -> None:
        self.check_attention_impl(impl, ("auto",), self.model_type)
