"""Routed experts paged from the store: `load(..., expert_memory_gb=X)` keeps every other weight resident
and at most X GB (1e9 bytes) of experts, least recently used first out; the rest are read on demand.

A read is one whole expert of one MoE layer: its (gate, up, down) rows, with their quantization scales
and biases or FP8 block scales, straight from the shard (`mlxseek.checkpoint.slices`). It goes through the same
key map (`Materializer`) and the same CPU re-layout as a resident load, so a paged expert is bit for
bit the expert the resident model holds, and `layers.paged_experts` runs it on the same kernels.

Prefetch: once layer l's experts are known, layer l+1's router is applied to layer l's MoE input (the
residual stream changes little from one layer to the next, so this guesses l+1's choice well; the
previous token's choice would not help: the LRU already holds it whenever the budget fits one token's
experts). A background thread reads the guessed experts while layer l computes and layer l+1 attends;
the first MoE layer of the next token is guessed from the current token's. A wrong guess enters the
LRU only into free room (first out), so guesses never evict anything.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..checkpoint.keymap import SCALE_SUFFIX, Materializer, Plan, Target
from ..checkpoint.quant_record import quant_params
from ..checkpoint.slices import SlicedStore, read_rows_raw
from ..config import ModelConfig
from ..cpu.kmajor import stored_kmajor_skeleton
from ..errors import ConfigError, WeightMismatchError
from ..layers.experts import RoutedExperts
from ..layers.moe import DeepSeekMoE
from ..models import build_model
from ..models.families import has, supported
from .experts import PagedExperts

SUPPORTED_TYPES = supported("pages_experts")  # the model_types whose family supports it
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def _module_of(name: str) -> str:
    return name.rsplit(".", 2)[0]  # ...switch_mlp.gate_proj.weight -> ...switch_mlp


class ExpertPager:
    """The expert LRU shared by every PagedExperts module of one model."""

    def __init__(self, store, cfg: ModelConfig, plan: Plan, targets: dict[str, list[Target]], *,
                 budget_bytes: int, dtype, keep_fp32):
        self.store, self.cfg, self.plan, self.targets = store, cfg, plan, targets
        self.budget, self.dtype, self.keep_fp32 = budget_bytes, dtype, keep_fp32
        self.kmajor = False  # set by PagedPlacement.finish: re-lay each expert as the loader re-lays stacks
        self.expert_bytes = 0  # resident bytes of one expert, measured on the first one built
        self._lru: OrderedDict = OrderedDict()  # (module path, expert) -> RoutedExperts with 1 expert
        self._resident = 0
        self._pending: dict[tuple[str, int], Future] = {}
        self._last: dict[str, list[int]] = {}
        self.gates: dict[str, nn.Module] = {}  # module path -> its layer's router (MoEGate), for guessing
        main = sorted((p for p in targets if _LAYER.match(p)), key=lambda p: int(_LAYER.match(p)[1]))
        # Prefetch follows the forward order, wrapping to the first MoE layer for the next token.
        self._next = {p: main[(i + 1) % len(main)] for i, p in enumerate(main)}
        self._first = main[0] if main else None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlxseek-prefetch")
        self._lock = threading.Lock()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.hits = self.misses = self.prefetch_used = self.prefetched = 0
        self.bytes_read = 0

    def stats(self) -> dict:
        lookups = self.hits + self.misses + self.prefetch_used
        return {"lookups": lookups, "hits": self.hits, "misses": self.misses, "prefetch_used": self.prefetch_used,
                "prefetched": self.prefetched, "hit_rate": self.hits / lookups if lookups else 0.0,
                "bytes_read": self.bytes_read, "resident_bytes": self._resident,
                "resident_experts": len(self._lru), "budget_bytes": self.budget, "expert_bytes": self.expert_bytes}

    def total_bytes(self) -> int:
        """Resident bytes of every routed expert of every paged layer (what full residency holds)."""
        return self.expert_bytes * self.cfg.n_routed_experts * len(self.targets)

    # Reading experts from the store.
    def _slice(self, path: str, e: int) -> tuple[dict[str, tuple[int, int]], list[Target]]:
        """Rows to read and key-map targets that build expert `e` of module `path`."""
        rows, targets = {}, []
        for t in self.targets[path]:
            if t.op == "copy":  # stacked (E, ...) in the checkpoint: one row
                rows[self.plan.source_of[t.sources[0]]] = (e, e + 1)
                targets.append(t)
                continue
            s = t.sources[e]  # per-expert tensors (HF layout): the whole tensor, and its FP8 scale
            for k in (s, s + SCALE_SUFFIX):
                if k in self.plan.source_of:
                    src = self.plan.source_of[k]
                    rows[src] = (0, self.store.shape(src)[0])
            targets.append(replace(t, sources=(s,)))
        return rows, targets

    def _read_raw(self, path: str, e: int) -> dict:
        rows, _ = self._slice(path, e)
        raw = {k: read_rows_raw(self.store, k, *r) for k, r in rows.items()}
        with self._lock:
            self.bytes_read += sum(a.nbytes for a in raw.values())
        return raw

    def build_expert(self, path: str, e: int, raw: Optional[dict]) -> RoutedExperts:
        """Expert `e` of `path` as a one-expert module, from `raw` bits (prefetched) or read now."""
        rows, targets = self._slice(path, e)
        sliced = SlicedStore(self.store, rows, raw)
        mat = Materializer(sliced, self.cfg, self.plan, dtype=self.dtype, keep_fp32=self.keep_fp32)
        arrays = {}
        for t in targets:
            arrays.update(mat.materialize(t))
        if raw is None:
            with self._lock:
                self.bytes_read += sliced.bytes_read
        cfg = self.cfg
        module = RoutedExperts(cfg.hidden_size, cfg.moe_intermediate_size, 1)
        local = {k[len(path) + 1:]: v for k, v in arrays.items()}  # "gate_proj.weight", ...

        def quantized(p: str, _) -> dict | bool:  # as the loader quantizes the stack: recorded parameters
            return (f"{p}.scales" in local and quant_params(cfg, f"{path}.{p}")) or False

        nn.quantize(module, class_predicate=quantized)
        # Experts a `--layout kmajor` folder stores K-major keep that layout, as the loader's stacks do.
        stored_kmajor_skeleton(module, cfg, lambda p: f"{p}.scales" in local, prefix=f"{path}.")
        module.load_weights(list(local.items()))
        if self.kmajor:
            from ..cpu.kmajor import apply_cpu_layout

            apply_cpu_layout(module)
        mx.eval(module.parameters())
        return module

    # The LRU of resident experts.
    def get(self, path: str, ids: list[int]) -> dict[int, RoutedExperts]:
        """Expert modules for `ids` of `path`: resident, prefetched, or read now."""
        out = {}
        for e in ids:
            key = (path, e)
            module = self._lru.get(key)
            if module is not None:
                self._lru.move_to_end(key)
                self.hits += 1
            else:
                future = self._pending.pop(key, None)
                module = self.build_expert(path, e, future.result() if future else None)
                self.prefetch_used += future is not None
                self.misses += future is None
                self._insert(key, module)
            out[e] = module
        self._evict()
        self._keep_wrong_guesses(path)
        self._last[path] = list(ids)
        return out

    def _keep_wrong_guesses(self, path: str) -> None:
        """Experts read ahead for `path` but not picked: keep them while the budget has free room (they
        were read anyway; guessed again next token, they would be read again), never evicting for them."""
        for key in [k for k in self._pending if k[0] == path]:
            future = self._pending.pop(key)
            if future.done() and self._resident + self.expert_bytes <= self.budget:
                self._insert(key, self.build_expert(*key, future.result()))
                self._lru.move_to_end(key, last=False)  # first out if room runs short

    def guess_next(self, path: str, x: mx.array) -> None:
        """Queue reads of the experts the layer after `path` will likely pick for MoE input `x` (..., D)."""
        nxt = self._next.get(path)
        if nxt is None:
            return
        if nxt != self._first and nxt in self.gates:
            inds = np.array(self.gates[nxt](x)[0]).reshape(-1)
            ids, votes = np.unique(inds, return_counts=True)
            # Long prompts want most experts: read ahead only the most voted, at most 2 tokens' worth.
            ids = ids[np.argsort(-votes, kind="stable")][: 2 * self.cfg.num_experts_per_tok].tolist()
        else:  # the first MoE layer of the next token: what it picked for this one
            ids = self._last.get(nxt, [])
        self._prefetch(nxt, ids)

    def _insert(self, key, module: RoutedExperts) -> None:
        nbytes = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
        self._lru[key] = module
        self._resident += nbytes

    def _evict(self) -> None:
        while self._resident > self.budget and self._lru:
            _, module = self._lru.popitem(last=False)
            self._resident -= sum(v.nbytes for _, v in tree_flatten(module.parameters()))

    def _prefetch(self, path: str, ids: list[int]) -> None:
        wanted = [e for e in ids if (path, e) not in self._lru]
        for key in [k for k in self._pending if k[0] == path and k[1] not in wanted]:
            del self._pending[key]  # stale guesses for this layer
        for e in wanted:
            if (path, e) not in self._pending:
                self._pending[path, e] = self._io.submit(self._read_raw, path, e)
                self.prefetched += 1


def _check_experts(store, cfg: ModelConfig, plan: Plan, by_module: dict[str, list[Target]]) -> None:
    """Paged stacks are read one expert at a time, long after loading: check their headers now.
    Every MoE layer must store n_routed_experts experts of the same shapes (the first paged expert,
    built at load, is checked against config.json by the strict weight load)."""

    def layout(ts: list[Target]) -> list:
        out = []
        for t in sorted(ts, key=lambda t: t.outputs[0]):
            src = plan.source_of[t.sources[0]]
            shape = store.shape(src)
            n, shape = (shape[0], shape[1:]) if t.op == "copy" else (len(t.sources), shape)
            if n != cfg.n_routed_experts:
                raise WeightMismatchError(f"{store.file_of(src)}: {src} holds {n} experts but config.json "
                                          f"n_routed_experts is {cfg.n_routed_experts}")
            out.append((t.outputs[0].rsplit(".", 2)[1:], shape, store.dtype(src)))
        return out

    layouts = {path: layout(ts) for path, ts in by_module.items()}
    first = next(iter(layouts), None)
    for path, lay in layouts.items():
        if lay != layouts[first]:
            raise WeightMismatchError(f"{store.folder}: the routed experts of {path} differ in shape or dtype from "
                                      f"those of {first}; the checkpoint does not match config.json")


class PagedPlacement:
    """Loader placement for `expert_memory_gb` (see `mlxseek.loading.placement`)."""

    def __init__(self, cfg: ModelConfig, store, plan: Plan, *, budget_gb: float, dtype, keep_fp32):
        if not has(cfg, "pages_experts"):
            raise ConfigError(f"{cfg.model_type}: expert_memory_gb supports {', '.join(SUPPORTED_TYPES)}; "
                              "load this model without it")
        if not isinstance(budget_gb, (int, float)) or budget_gb < 0:
            raise ConfigError(f"expert_memory_gb must be a number >= 0 (GB of routed experts to keep resident), "
                              f"got {budget_gb!r}")
        self.cfg, self.budget, self.dtype, self.keep_fp32 = cfg, int(budget_gb * 1e9), dtype, keep_fp32
        self.pager: Optional[ExpertPager] = None

    def restrict(self, store, plan: Plan):
        experts = [t for t in plan.targets if ".switch_mlp." in t.outputs[0]]
        by_module: dict[str, list[Target]] = {}
        for t in experts:
            by_module.setdefault(_module_of(t.outputs[0]), []).append(t)
        self.pager = ExpertPager(store, self.cfg, plan, by_module, budget_bytes=self.budget, dtype=self.dtype,
                                 keep_fp32=self.keep_fp32)
        _check_experts(store, self.cfg, plan, by_module)
        paged = {s for t in experts for s in t.sources}
        paged |= {s + SCALE_SUFFIX for s in paged}
        rest = Plan([t for t in plan.targets if t not in experts], plan.dropped,
                    {k: v for k, v in plan.source_of.items() if k not in paged}, plan.has_mtp, plan.quantization)
        return store, rest

    def build(self, cfg: ModelConfig, *, with_mtp: bool):
        model = build_model(cfg, with_mtp=with_mtp)
        moes = {f"{p}.switch_mlp": m for p, m in model.named_modules()
                if isinstance(m, DeepSeekMoE) and f"{p}.switch_mlp" in self.pager.targets}
        self.pager.gates = {p: m.gate for p, m in moes.items()}
        model.update_modules(tree_unflatten([(p, PagedExperts(self.pager, p)) for p in moes]))
        return model

    def finish(self, model) -> None:
        pager = self.pager
        pager.kmajor = model.kernel_layout.relaid  # experts re-laid at load: page them in that layout too
        if pager.targets:  # one expert, built and dropped, gives the resident size of every expert
            probe = pager.build_expert(next(iter(pager.targets)), 0, None)
            pager.expert_bytes = sum(v.nbytes for _, v in tree_flatten(probe.parameters()))
            pager.reset_stats()
        model.pager = pager
