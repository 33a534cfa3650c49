"""Training step for `train_tiny.py`: joint main + MTP loss and auxiliary-loss-free load balancing.

Shapes: B batch, L sequence, D hidden, V vocab, E routed experts, M MoE layers (the MTP block included).
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlxseek.config import ModelConfig
from mlxseek.layers.masks import causal_mask
from mlxseek.layers.moe import DeepSeekMoE


class _Sink:
    """Not a list/dict, so nn.Module keeps it out of the parameter tree."""

    def __init__(self):
        self.inds: list = []


def _recording(gate_cls: type) -> type:
    """A subclass of the model's router class (V3 `MoEGate`, V4 `V4Gate`) that records its expert choices
    (..., K) so the step can count expert loads; swapped onto the gate instance and back in `finish`."""

    class Recording(gate_cls):
        def __call__(self, *args):
            inds, weights = super().__call__(*args)
            self.sink.inds.append((self.index, inds))
            return inds, weights

    return Recording


def v3_forward(model, x, y1):
    """V3: (main logits for t+1, MTP logits for t+2), both (B, L, V). The MTP module reads the final
    normed hidden and embed(t+1); its output head is the main LM head (V3 report 2.2: shared)."""
    h = model.model(x)  # (B, L, D)
    mtp = model.mtp
    z = mtp.eh_proj(mx.concatenate([mtp.enorm(model.model.embed_tokens(y1)), mtp.hnorm(h)], axis=-1))
    hm = mtp.block(z, causal_mask(z.shape[1], 0))
    return model.lm_head(h), model.lm_head(mtp.shared_head.norm(hm))


def v3_finish(model) -> None:
    """The MTP head was trained as the main LM head; the V3 checkpoint stores it as its own copy."""
    model.mtp.shared_head.head.weight = model.lm_head.weight


def init_weights(model, cfg: ModelConfig, seed: int, *, out_proj: tuple[str, ...] = ("o_proj.weight", "down_proj.weight"),
                 keep: tuple[str, ...] = ()) -> None:
    """Normal(0, 0.02) projections and embeddings (V3 uses 0.006 at width 7168; ours is 128 wide), output
    projections (`out_proj` suffixes) scaled by 1/sqrt(2 * layers) as in GPT-2, ones for norms, zero router
    bias; parameters ending in a `keep` suffix keep the module's own initial value."""
    rng = np.random.default_rng(seed)
    residual_scale = 1 / math.sqrt(2 * (cfg.num_hidden_layers + cfg.num_nextn_predict_layers))
    new = {}
    for name, p in nn.utils.tree_flatten(model.parameters()):
        if name.endswith(keep):
            continue
        if name.endswith("norm.weight") or "layernorm" in name:
            w = np.ones(p.shape)
        elif name.endswith("e_score_correction_bias"):
            w = np.zeros(p.shape)
        else:
            std = 0.02 * (residual_scale if name.endswith(out_proj) else 1.0)
            w = rng.standard_normal(p.shape) * std
        new[name] = mx.array(w.astype(np.float32))
    model.update(nn.utils.tree_unflatten(list(new.items())))


class Trainer:
    """`forward(model, x, y1)` -> (main logits, MTP logits) defines the family's two heads (`v3_forward`);
    `on_finish(model)` runs after training (`v3_finish`)."""

    def __init__(self, model, cfg: ModelConfig, *, lr: float, warmup: int, steps: int, mtp_lambda: float,
                 bias_rate: float, forward=v3_forward, on_finish=v3_finish):
        self.model, self.cfg, self.forward, self.on_finish = model, cfg, forward, on_finish
        self.sink = _Sink()
        self.gates, self.gate_names, self.gate_classes = [], [], []
        for name, m in model.named_modules():
            if isinstance(m, DeepSeekMoE):
                self.gate_names.append(name)
                self.gate_classes.append(type(m.gate))
                m.gate.__class__ = _recording(type(m.gate))
                m.gate.sink, m.gate.index = self.sink, len(self.gates)
                self.gates.append(m.gate)
        # The correction bias is steered by the load rule below, never by the optimizer (V3 report 2.1.2);
        # V4's hash table (tid2eid) is a fixed token -> experts map.
        model.freeze(keys=["e_score_correction_bias", "tid2eid"], strict=False)
        schedule = optim.join_schedules(
            [optim.linear_schedule(lr * 0.01, lr, warmup), optim.cosine_decay(lr, max(steps - warmup, 1), lr * 0.1)],
            [warmup],
        )
        self.opt = optim.AdamW(schedule, betas=[0.9, 0.95], weight_decay=0.1)
        self.mtp_lambda, self.bias_rate = mtp_lambda, bias_rate
        self.last_imbalance: list[float] = []
        state = [model.state, self.opt.state]
        self._step = partial(mx.compile, inputs=state, outputs=state)(self._train_step)

    def _loss(self, model, windows):
        """windows (B, L+2): inputs [:L], next tokens [1:L+1], MTP targets (t+2) [2:L+2]."""
        self.sink.inds = []
        x, y1, y2 = windows[:, :-2], windows[:, 1:-1], windows[:, 2:]
        main_logits, mtp_logits = self.forward(model, x, y1)
        main = nn.losses.cross_entropy(main_logits, y1).mean()
        mtp_loss = nn.losses.cross_entropy(mtp_logits, y2).mean()
        E = self.cfg.n_routed_experts
        # (M, E) in self.gates order (the forward meets the gates in another order than named_modules lists them)
        by_gate = dict(self.sink.inds)
        loads = mx.stack([mx.zeros((E,)).at[by_gate[i].reshape(-1)].add(1.0) for i in range(len(self.gates))])
        return main + self.mtp_lambda * mtp_loss, (main, mtp_loss, loads)

    def _train_step(self, windows):
        grad_fn = nn.value_and_grad(self.model, self._loss)
        (_, (main, mtp, loads)), grads = grad_fn(self.model, windows)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        self.opt.update(self.model, grads)
        for gate, load in zip(self.gates, loads):  # raise under-loaded experts, lower over-loaded ones
            if "e_score_correction_bias" not in gate:  # a hash-routed layer: nothing to steer
                continue
            err = load.mean() - load
            gate.e_score_correction_bias = gate.e_score_correction_bias + self.bias_rate * mx.sign(err)
        return main, mtp, loads

    def step(self, windows: mx.array) -> tuple[float, float, list[float]]:
        """One optimizer step; returns (main loss, MTP loss, max/mean expert load per MoE layer)."""
        main, mtp, loads = self._step(windows)
        mx.eval(main, mtp, loads, self.model.state, self.opt.state)
        self.last_imbalance = (loads.max(axis=-1) / loads.mean(axis=-1)).tolist()
        return main.item(), mtp.item(), self.last_imbalance

    def finish(self) -> None:
        """Put the plain router classes back (the recording ones are a training device only)."""
        for gate, cls in zip(self.gates, self.gate_classes):
            gate.__class__ = cls
            del gate.sink, gate.index
        self.model.unfreeze()
        self.on_finish(self.model)


def evaluate(model, ids: np.ndarray, *, seq: int, max_windows: int = 64, forward=None) -> dict:
    """Held-out perplexity of the next token and of the MTP's t+2 token over non-overlapping windows;
    `forward` as in `Trainer` (default: V3 through the published modules, `model.mtp` with its own head)."""
    n = min((ids.size - 2) // seq, max_windows)
    nll = mtp_nll = 0.0
    for i in range(n):
        w = mx.array(ids[i * seq: i * seq + seq + 2])[None]
        x, y1, y2 = w[:, :-2], w[:, 1:-1], w[:, 2:]
        if forward is not None:
            main_logits, logits = forward(model, x, y1)
            nll += nn.losses.cross_entropy(main_logits, y1).sum().item()
            mtp_nll += nn.losses.cross_entropy(logits, y2).sum().item()
            continue
        h = model.hidden_states(x)
        nll += nn.losses.cross_entropy(model.lm_head(h), y1).sum().item()
        logits, _ = model.mtp(h, model.model.embed_tokens(y1), causal_mask(seq, 0))
        mtp_nll += nn.losses.cross_entropy(logits, y2).sum().item()
    tokens = n * seq
    return {"ppl": math.exp(nll / tokens), "mtp_ppl": math.exp(mtp_nll / tokens), "tokens": tokens}
