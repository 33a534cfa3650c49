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
from mlxseek.layers.moe import DeepSeekMoE, MoEGate


class _Sink:
    """Not a list/dict, so nn.Module keeps it out of the parameter tree."""

    def __init__(self):
        self.inds: list = []


class RecordingGate(MoEGate):
    """The model's router, recording its expert choices (..., K) so the step can count expert loads."""

    def __init__(self, cfg: ModelConfig, sink: _Sink, index: int):
        super().__init__(cfg)
        self.sink, self.index = sink, index

    def __call__(self, x):
        inds, weights = super().__call__(x)
        self.sink.inds.append((self.index, inds))
        return inds, weights


def init_weights(model, cfg: ModelConfig, seed: int) -> None:
    """Normal(0, 0.02) projections and embeddings (V3 uses 0.006 at width 7168; ours is 128 wide), output
    projections scaled by 1/sqrt(2 * layers) as in GPT-2, ones for norms, zero router bias."""
    rng = np.random.default_rng(seed)
    residual_scale = 1 / math.sqrt(2 * (cfg.num_hidden_layers + cfg.num_nextn_predict_layers))
    new = {}
    for name, p in nn.utils.tree_flatten(model.parameters()):
        if name.endswith("norm.weight") or "layernorm" in name:
            w = np.ones(p.shape)
        elif name.endswith("e_score_correction_bias"):
            w = np.zeros(p.shape)
        else:
            std = 0.02 * (residual_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0)
            w = rng.standard_normal(p.shape) * std
        new[name] = mx.array(w.astype(np.float32))
    model.update(nn.utils.tree_unflatten(list(new.items())))


class Trainer:
    def __init__(self, model, cfg: ModelConfig, *, lr: float, warmup: int, steps: int, mtp_lambda: float,
                 bias_rate: float):
        self.model, self.cfg = model, cfg
        self.sink = _Sink()
        self.gates, self.gate_names = [], []
        for name, m in model.named_modules():
            if isinstance(m, DeepSeekMoE):
                self.gate_names.append(name)
                gate = RecordingGate(cfg, self.sink, len(self.gates))
                gate.update(m.gate.parameters())
                m.gate = gate
                self.gates.append(gate)
        # The correction bias is steered by the load rule below, never by the optimizer (V3 report 2.1.2).
        model.freeze(keys=["e_score_correction_bias"], strict=False)
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
        h = model.model(x)  # (B, L, D): final normed hidden
        main = nn.losses.cross_entropy(model.lm_head(h), y1).mean()
        mtp = model.mtp
        z = mtp.eh_proj(mx.concatenate([mtp.enorm(model.model.embed_tokens(y1)), mtp.hnorm(h)], axis=-1))
        hm = mtp.block(z, causal_mask(z.shape[1], 0))
        # The MTP output head is the main LM head (V3 report 2.2: shared output head).
        mtp_loss = nn.losses.cross_entropy(model.lm_head(mtp.shared_head.norm(hm)), y2).mean()
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
        """Put the plain router class back (the recording one is a training device only)."""
        for _, m in self.model.named_modules():
            if isinstance(m, DeepSeekMoE) and isinstance(m.gate, RecordingGate):
                gate = MoEGate(self.cfg)
                gate.update(m.gate.parameters())
                m.gate = gate
        self.model.unfreeze()
        # The MTP head was trained as the main LM head; the checkpoint stores it as its own copy.
        self.model.mtp.shared_head.head.weight = self.model.lm_head.weight


def evaluate(model, ids: np.ndarray, *, seq: int, max_windows: int = 64) -> dict:
    """Held-out perplexity of the next token and of the MTP's t+2 token over non-overlapping windows."""
    n = min((ids.size - 2) // seq, max_windows)
    nll = mtp_nll = 0.0
    for i in range(n):
        w = mx.array(ids[i * seq: i * seq + seq + 2])[None]
        x, y1, y2 = w[:, :-2], w[:, 1:-1], w[:, 2:]
        h = model.hidden_states(x)
        nll += nn.losses.cross_entropy(model.lm_head(h), y1).sum().item()
        logits, _ = model.mtp(h, model.model.embed_tokens(y1), causal_mask(seq, 0))
        mtp_nll += nn.losses.cross_entropy(logits, y2).sum().item()
    tokens = n * seq
    return {"ppl": math.exp(nll / tokens), "mtp_ppl": math.exp(mtp_nll / tokens), "tokens": tokens}
