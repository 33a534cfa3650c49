"""Calibration statistics, gathered streaming: one decoder layer resident at a time.

The calibration text is tokenized with the checkpoint's own tokenizer and cut into chunks of `ctx`
tokens (BOS first, as `mlxseek eval` does). Embeddings are computed once; then each decoder layer is
materialized from the source through the same key map the converter uses (FP8 dequantized), wrapped
with recorders, run over every chunk, and dropped. The activations between layers (T tokens x hidden)
live in RAM, or in .npy files when they would exceed `ram_bytes`.

What is recorded, per quantizable module that sees activations (attention projections, dense and shared
MLPs, lm_head), and per routed expert of each `switch_mlp` projection:
  count   tokens that went through it (for an expert: the tokens routed to it)
  sumsq   (in,) sum over those tokens of x_j^2; mean squared input per column = sumsq / count
MultiLinear (the split kv_b), the embedding and the MTP block see no recorded input: they and the
experts no calibration token was routed to ("cold") fall back to weight-only statistics (plain error).
Shapes: T tokens, D hidden, E experts, K experts per token, I input dim of a projection.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx_lm.models.switch_layers import SwitchLinear

from ..backend import backend_policy
from ..errors import ConversionError
from ..layers.masks import causal_mask
from ..models import build_model
from ..models.families import family_of
from .quantize import is_router
from .resident import load_resident
from .stream import Source

CALIBRATION_CTX = 512  # tokens per chunk (clipped to max_position_embeddings)
BATCH_TOKENS = 4096  # tokens per forward: chunks are batched up to this
RAM_BYTES = 1 << 30  # activations kept in RAM up to this, spilled to disk beyond


@dataclass
class ModuleStats:
    count: np.ndarray  # (E,) tokens per expert; (1,) for a plain Linear
    sumsq: np.ndarray  # (E, I) float64

    def add(self, count, sumsq) -> None:
        self.count += np.asarray(count, dtype=np.int64).reshape(self.count.shape)
        self.sumsq += np.asarray(sumsq.astype(mx.float32), dtype=np.float64).reshape(self.sumsq.shape)


@dataclass
class Statistics:
    """Per module path: ModuleStats; `importance(path, e)` is the mean squared input per column."""

    tokens: int = 0
    chunks: int = 0
    ctx: int = 0
    modules: dict[str, ModuleStats] = field(default_factory=dict)
    weight_only: list[str] = field(default_factory=list)  # quantizable modules with no recorded input

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> "Statistics":
        """Empty statistics for these (B, L) token batches: their token, chunk and context counts."""
        return cls(tokens=int(sum(b.size for b in batches)), chunks=sum(len(b) for b in batches),
                   ctx=int(batches[0].shape[1]))

    def get(self, path: str, experts: int, in_dim: int) -> ModuleStats:
        if path not in self.modules:
            self.modules[path] = ModuleStats(np.zeros(experts, np.int64), np.zeros((experts, in_dim)))
        return self.modules[path]

    def importance(self, path: str, expert: int = 0) -> np.ndarray | None:
        """(I,) mean squared input per column, or None (weight-only: never seen, or a cold expert)."""
        s = self.modules.get(path)
        if s is None or s.count[expert] == 0:
            return None
        return (s.sumsq[expert] / s.count[expert]).astype(np.float32)

    def cold_experts(self) -> dict[str, int]:
        return {p: int((s.count == 0).sum()) for p, s in self.modules.items() if len(s.count) > 1}

    def summary(self) -> dict:
        cold = self.cold_experts()
        stacks = {p.rsplit(".", 1)[0] for p in cold}  # one count per MoE layer (gate/up/down share routing)
        per_layer = {s: cold[s + ".gate_proj"] for s in sorted(stacks) if s + ".gate_proj" in cold}
        return {"tokens": self.tokens, "chunks": self.chunks, "ctx": self.ctx,
                "modules_with_statistics": len(self.modules), "weight_only_modules": sorted(self.weight_only),
                "cold_experts": sum(per_layer.values()), "cold_experts_per_layer": per_layer}


class _LinearRecorder(nn.Module):
    def __init__(self, inner: nn.Module, stats: ModuleStats):
        super().__init__()
        self.inner, self._stats = inner, stats

    def __call__(self, x, *args, **kw):
        flat = x.reshape(-1, x.shape[-1]).astype(mx.float32)
        self._stats.add(flat.shape[0], (flat * flat).sum(axis=0))
        return self.inner(x, *args, **kw)


class _SwitchRecorder(nn.Module):
    """SwitchLinear's call: x (..., 1, I) with indices (...): row t goes through expert indices[t].

    It also computes the call, as one matmul per expert over the rows routed to it, instead of `gather_mm`:
    MLX's CPU `gather_mm` runs row by row (1024 rows x 16 experts of 512 x 7168: 4.2 CPU s against 0.3 s
    for the grouped matmuls), and calibration, unlike decoding, routes thousands of rows at once."""

    def __init__(self, inner: SwitchLinear, stats: ModuleStats):
        super().__init__()
        self.inner, self._stats = inner, stats

    def __call__(self, x, indices, *args, **kw):
        I, E = x.shape[-1], self._stats.count.shape[0]
        xi = mx.broadcast_to(x[..., 0, :], (*indices.shape, I)).reshape(-1, I)  # (N, I): one row per pair
        idx = indices.reshape(-1)
        x2 = xi.astype(mx.float32)
        self._stats.add(mx.zeros((E,), mx.int32).at[idx].add(1), mx.zeros((E, I)).at[idx].add(x2 * x2))
        return grouped_matmul(self.inner, xi, np.array(idx)).reshape(*indices.shape, 1, -1)


def grouped_matmul(layer: SwitchLinear, x: mx.array, idx: np.ndarray) -> mx.array:
    """layer(x[n], idx[n]) for every row n of x (N, I) -> (N, out): rows grouped by expert, one matmul each."""
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=layer.weight.shape[0])
    xs, outs, start = x[mx.array(order)], [], 0
    for e in np.flatnonzero(counts):
        y = xs[start:start + counts[e]] @ layer.weight[e].T
        outs.append(y + layer.bias[e] if "bias" in layer else y)
        mx.eval(outs[-1])  # one expert's temporaries at a time (a transposed weight may be copied)
        start += counts[e]
    return mx.concatenate(outs)[mx.array(np.argsort(order))]


def attach(root: nn.Module, prefix: str, stats: Statistics) -> None:
    """Wrap every quantizable module under `root` (full path `prefix` + its path) with a recorder."""
    for rel, m in list(root.named_modules()):
        path = prefix + rel
        if not rel or not hasattr(m, "to_quantized") or is_router(path):
            continue
        if isinstance(m, SwitchLinear):
            rec = _SwitchRecorder(m, stats.get(path, m.weight.shape[0], m.weight.shape[-1]))
        elif type(m) is nn.Linear:
            rec = _LinearRecorder(m, stats.get(path, 1, m.weight.shape[-1]))
        else:
            stats.weight_only.append(path)
            continue
        parent_path, _, leaf = rel.rpartition(".")
        parent = root
        for part in parent_path.split(".") if parent_path else ():
            parent = parent[int(part)] if isinstance(parent, list) else getattr(parent, part)
        setattr(parent, leaf, rec)


class Activations:
    """The hidden states of every chunk batch between two layers: in RAM, or one .npy file per batch."""

    def __init__(self, folder: Path | None):
        self.folder, self.items = folder, []

    def put(self, k: int, h: mx.array) -> None:
        mx.eval(h)
        if self.folder is None:
            item = h
        else:
            item = self.folder / f"h{k}.npy"
            np.save(item, np.array(h.astype(mx.float32)))
        if k == len(self.items):
            self.items.append(item)
        else:
            self.items[k] = item

    def get(self, k: int, dtype: mx.Dtype) -> mx.array:
        item = self.items[k]
        return item if isinstance(item, mx.array) else mx.array(np.load(item)).astype(dtype)


def make_batches(ids: list[int], *, bos: int | None, ctx: int, limit: int,
                 batch_tokens: int = BATCH_TOKENS) -> list[np.ndarray]:
    """(B, L) token batches: chunks of `ctx` (BOS + ctx-1 text tokens), at most `limit` tokens in all."""
    body = ctx - 1 if bos is not None else ctx
    ids = ids[: max(1, limit * body // ctx)]
    chunks = [ids[i : i + body] for i in range(0, len(ids), body)]
    chunks = [([bos] if bos is not None else []) + c for c in chunks if len(c) == body or len(chunks) == 1]
    per = max(1, batch_tokens // ctx)
    return [np.array(chunks[i : i + per], dtype=np.int32) for i in range(0, len(chunks), per)]


def read_calibration(path: str | Path, src: Path, *, ctx: int, limit: int, vocab_size: int,
                     batch_tokens: int = BATCH_TOKENS) -> list[np.ndarray]:
    """Tokenize calibration text `path` with the checkpoint's tokenizer (mlx-lm's loader)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"--calibration {path}: not a file; pass a text file (held-out text excluded)")
    if not any((src / n).exists() for n in ("tokenizer.json", "tokenizer.model")):
        raise ConversionError(f"--calibration: {src} has no tokenizer.json or tokenizer.model to tokenize {path}; "
                              "copy the tokenizer files from the original release")
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(src)
    ids = tok.encode(path.read_text(errors="replace"), add_special_tokens=False)
    if ids and max(ids) >= vocab_size:
        raise ConversionError(f"--calibration {path}: token id {max(ids)} is outside the model's vocabulary "
                              f"(vocab_size {vocab_size}); {src}'s tokenizer does not belong to its config.json")
    if len(ids) < 2:
        raise ConversionError(f"--calibration {path}: holds {len(ids)} token(s); give it some text")
    return make_batches(ids, bos=tok.bos_token_id, ctx=ctx, limit=limit, batch_tokens=batch_tokens)


def check_runner(cfg, runner: str) -> None:
    """ConversionError naming --calibration unless cfg's family calibrates with `runner` ("mla", "mhc")."""
    family = family_of(cfg)
    if not family.calibrates:
        raise ConversionError(f"--calibration: {cfg.model_type} ({family.calibration_gap}) is not calibrated yet; "
                              "convert it without --calibration", field="calibration")
    if family.calibrates != runner:
        raise ConversionError(f"--calibration: {cfg.model_type} calibrates with the {family.calibrates!r} layer "
                              f"runner, not {runner!r}", field="calibration")


def collect(source: Source, batches: list[np.ndarray], *, ram_bytes: int = RAM_BYTES, on_layer=None) -> Statistics:
    """Statistics of `batches` through the source model, one decoder layer resident at a time.

    on_layer(prefix, module, stats): called while the embedding, each layer (after its forward), lm_head
    and the MTP block are resident, e.g. to measure quantization error without reading weights again."""
    cfg = source.cfg
    check_runner(cfg, "mla")
    # The backend policy's compute dtype (float32 on MLX's CPU backend, whose gather_mm takes nothing else).
    source = dataclasses.replace(source, dtype=backend_policy().dtype)
    model = build_model(cfg, with_mtp=source.plan.has_mtp)  # lazy: only what load_resident fills is ever allocated
    measuring, on_layer = on_layer is not None, on_layer or (lambda *_: None)
    stats = Statistics.of(batches)
    width = 4 * cfg.hidden_size * stats.tokens
    with tempfile.TemporaryDirectory(prefix="mlxseek-calibration-") as tmp:
        acts = Activations(Path(tmp) if width > ram_bytes else None)
        load_resident(model.model.embed_tokens, source, "model.embed_tokens.")
        for k, b in enumerate(batches):
            acts.put(k, model.model.embed_tokens(mx.array(b)))
        on_layer("model.", _Holder(embed_tokens=model.model.embed_tokens), stats)
        model.model.embed_tokens = nn.Identity()
        for i in range(len(model.model.layers)):
            mx.clear_cache()  # hand the dropped embedding's or layer's buffers back before the next is read
            _through_layer(model.model.layers, i, source, batches, acts, stats, on_layer)
        mx.clear_cache()
        load_resident(model.model.norm, source, "model.norm.")
        head = stats.get("lm_head", 1, cfg.hidden_size)
        for k in range(len(batches)):
            h = model.model.norm(acts.get(k, source.dtype))
            _LinearRecorder(nn.Identity(), head)(h)  # lm_head's input only: its (T, vocab) output is not needed
    if measuring:  # the statistics need only lm_head's input; its (vocab, D) weight is read to be measured
        load_resident(model.lm_head, source, "lm_head.")
        on_layer("", _Holder(lm_head=model.lm_head), stats)
    model.lm_head = nn.Identity()
    stats.weight_only.append("model.embed_tokens")
    if source.plan.has_mtp:
        stats.weight_only += ["mtp." + rel for rel, m in model.mtp.named_modules()
                              if rel and hasattr(m, "to_quantized") and not is_router("mtp." + rel)]
        if measuring:
            load_resident(model.mtp, source, "mtp.")
            on_layer("mtp.", model.mtp, stats)
    return stats


def _through_layer(layers: list, i: int, source: Source, batches, acts: Activations, stats: Statistics,
                   on_layer) -> None:
    """Decoder layer i read, run over every batch (its outputs replace its inputs in `acts`), measured and
    dropped: the model's reference goes first, this frame's on return, so the next layer is read alone."""
    layer, prefix = layers[i], f"model.layers.{i}."
    layers[i] = nn.Identity()
    load_resident(layer, source, prefix)
    attach(layer, prefix, stats)
    for k, b in enumerate(batches):
        acts.put(k, layer(acts.get(k, source.dtype), causal_mask(b.shape[1], 0), None))
    on_layer(prefix, layer, stats)


class _Holder(nn.Module):
    """A parent for top-level modules, so their paths read as in the full model."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)


def collect_in_memory(source: Source, batches: list[np.ndarray]) -> Statistics:
    """The same statistics with the whole model resident, one full forward per batch: the reference
    `collect` is tested against (it needs the model's size in memory, so conversion never uses it)."""
    source = dataclasses.replace(source, dtype=backend_policy().dtype)
    model = build_model(source.cfg, with_mtp=False)
    load_resident(model, source, "model.", relative=False)
    load_resident(model, source, "lm_head.", relative=False)
    stats = Statistics.of(batches)
    for i, layer in enumerate(model.model.layers):
        attach(layer, f"model.layers.{i}.", stats)
    head = stats.get("lm_head", 1, source.cfg.hidden_size)
    for b in batches:
        h = model.model.embed_tokens(mx.array(b))
        for layer in model.model.layers:
            h = layer(h, causal_mask(b.shape[1], 0), None)
            mx.eval(h)
        _LinearRecorder(nn.Identity(), head)(model.model.norm(h))
    return stats
