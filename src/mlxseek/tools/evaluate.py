"""`mlxseek eval`: perplexity of a model on a text file and, against a reference model, the per-token
KL divergence and top-1 agreement (what llama.cpp's `perplexity --kl-divergence` reports).

Scoring follows llama.cpp's perplexity tool: the file is tokenized once (no special tokens), cut into
chunks of `ctx` tokens whose first token is the BOS token (when the tokenizer has one), each chunk is
run from an empty cache, and only predictions from position `score_from` on (default ctx // 2) count, so
every scored token sees at least that much context. Shapes: B chunks, C ctx, V vocab.
KL(P_ref || P_model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v)) per scored position, in nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import numpy as np

from ..errors import EvaluationError
from ..generation.stream import check_token_ids

LOGITS_BUDGET = 1 << 26  # float32 logits per forward pass (256 MB): sets how many chunks run together


@dataclass
class EvalResult:
    model: str
    data: str
    ctx: int
    score_from: int
    chunks: int
    tokens: int  # scored predictions
    nll: float  # mean negative log-likelihood, nats
    ppl: float
    ppl_stderr: float  # delta method: ppl * stderr(nll)
    reference: Optional[str] = None
    ref_ppl: Optional[float] = None
    kl_mean: Optional[float] = None
    kl_stderr: Optional[float] = None
    kl_median: Optional[float] = None
    kl_p99: Optional[float] = None
    kl_max: Optional[float] = None
    top1_agreement: Optional[float] = None  # fraction of positions where both models' argmax agree

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_tokens(tokenizer, data: str | Path) -> list[int]:
    path = Path(data)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file; pass --data a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise EvaluationError(f"{path}: the file is empty; pass a text file with at least a few hundred tokens")
    return encode_text(tokenizer, text)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a whole file, without special tokens. transformers warns when a text is longer than the
    model's context ("will result in indexing errors"); we cut it into chunks ourselves, so it is silenced."""
    import logging

    log = logging.getLogger("transformers.tokenization_utils_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return tokenizer.encode(text, add_special_tokens=False)
    finally:
        log.setLevel(level)


def make_chunks(ids: list[int], ctx: int, bos: Optional[int], source: str) -> np.ndarray:
    """(B, ctx) token chunks; with a BOS token each chunk is bos + ctx-1 text tokens (llama.cpp)."""
    body = ctx - 1 if bos is not None else ctx
    n = len(ids) // body
    if n == 0:
        raise EvaluationError(
            f"{source}: {len(ids)} tokens, fewer than one chunk of --ctx {ctx}; use a longer file or a smaller --ctx"
        )
    chunks = np.array(ids[: n * body], dtype=np.int64).reshape(n, body)
    if bos is not None:
        chunks = np.concatenate([np.full((n, 1), bos), chunks], axis=1)
    return chunks


def _logprobs(model, chunks: mx.array) -> mx.array:
    logits = model(chunks).astype(mx.float32)  # (B, C, V), no cache: every chunk starts afresh
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def score(model, chunks: np.ndarray, score_from: int, ref_model=None) -> dict[str, np.ndarray]:
    """Per scored position: nll (and ref_nll, kl, agree with a reference). Arrays of length B*(C-1-score_from)."""
    out: dict[str, list] = {"nll": [], "ref_nll": [], "kl": [], "agree": []}
    batch = max(1, LOGITS_BUDGET // (chunks.shape[1] * model.config.vocab_size))
    for i in range(0, len(chunks), batch):
        x = mx.array(chunks[i: i + batch])
        targets = x[:, score_from + 1:]
        lp = _logprobs(model, x)[:, score_from:-1]  # (B, S, V): position t predicts token t+1
        out["nll"].append(-mx.take_along_axis(lp, targets[..., None], -1)[..., 0])
        if ref_model is not None:
            ref = _logprobs(ref_model, x)[:, score_from:-1]
            out["ref_nll"].append(-mx.take_along_axis(ref, targets[..., None], -1)[..., 0])
            out["kl"].append((mx.exp(ref) * (ref - lp)).sum(-1))
            out["agree"].append(mx.argmax(ref, -1) == mx.argmax(lp, -1))
        mx.eval(*[v[-1] for v in out.values() if v])
    return {k: np.concatenate([np.array(a).reshape(-1) for a in v]) for k, v in out.items() if v}


def _load(path: str | Path, dtype: Any, what: str):
    from ..loading.loader import load

    model, tokenizer = load(path, dtype=dtype, with_mtp=False)
    if tokenizer is None and what == "--model":
        raise EvaluationError(
            f"{path}: no tokenizer.json or tokenizer.model; copy the source checkpoint's tokenizer files here")
    return model, tokenizer


def evaluate(*, model: str | Path, data: str | Path, kl_vs: Optional[str | Path] = None, ctx: Optional[int] = None,
             score_from: Optional[int] = None, dtype: Any = None) -> EvalResult:
    """Perplexity of the checkpoint `model` on the text file `data`; with `kl_vs` (a reference checkpoint
    with the same vocabulary, e.g. the unquantized model) also KL divergence and top-1 agreement.
    ctx defaults to min(512, max_position_embeddings); score_from to ctx // 2."""
    m, tokenizer = _load(model, dtype, "--model")
    max_ctx = m.config.max_position_embeddings
    ctx = ctx if ctx is not None else min(512, max_ctx)
    if not 2 <= ctx <= max_ctx:
        raise EvaluationError(f"--ctx {ctx}: must be between 2 and the model's context {max_ctx} "
                              "(config.json max_position_embeddings)")
    score_from = ctx // 2 if score_from is None else score_from
    if not 0 <= score_from <= ctx - 2:
        raise EvaluationError(f"--score-from {score_from}: must be between 0 and ctx - 2 = {ctx - 2}")
    ref = None
    if kl_vs is not None:
        ref, _ = _load(kl_vs, dtype, "--kl-vs")
        if ref.config.vocab_size != m.config.vocab_size:
            raise EvaluationError(f"--kl-vs {kl_vs}: vocabulary {ref.config.vocab_size} differs from the model's "
                                  f"{m.config.vocab_size}; compare models that share a tokenizer")
    ids = read_tokens(tokenizer, data)
    check_token_ids(ids + [tokenizer.bos_token_id or 0], m.config.vocab_size, what=f"{data}: the tokenized text's")
    chunks = make_chunks(ids, ctx, tokenizer.bos_token_id, str(data))
    s = score(m, chunks, score_from, ref)
    nll = float(s["nll"].mean())
    stderr = float(s["nll"].std(ddof=1) / math.sqrt(s["nll"].size)) if s["nll"].size > 1 else 0.0
    res = EvalResult(model=str(model), data=str(data), ctx=ctx, score_from=score_from, chunks=len(chunks),
                     tokens=int(s["nll"].size), nll=nll, ppl=math.exp(nll), ppl_stderr=math.exp(nll) * stderr)
    if ref is not None:
        kl = s["kl"]
        res.reference, res.ref_ppl = str(kl_vs), math.exp(float(s["ref_nll"].mean()))
        res.kl_mean, res.kl_median = float(kl.mean()), float(np.median(kl))
        res.kl_stderr = float(kl.std(ddof=1) / math.sqrt(kl.size)) if kl.size > 1 else 0.0
        res.kl_p99, res.kl_max = float(np.percentile(kl, 99)), float(kl.max())
        res.top1_agreement = float(s["agree"].mean())
    return res


def format_result(r: EvalResult) -> str:
    lines = [f"{r.model} on {r.data}: {r.tokens} tokens scored ({r.chunks} chunks of {r.ctx}, from position "
             f"{r.score_from})", f"perplexity {r.ppl:.4f} +/- {r.ppl_stderr:.4f} (mean NLL {r.nll:.5f} nats)"]
    if r.reference is not None:
        lines += [f"reference {r.reference}: perplexity {r.ref_ppl:.4f}",
                  f"KL divergence mean {r.kl_mean:.6f} +/- {r.kl_stderr:.6f}, median {r.kl_median:.6f}, "
                  f"p99 {r.kl_p99:.6f}, max {r.kl_max:.6f} nats",
                  f"top-1 agreement {100 * r.top1_agreement:.2f}%"]
    return "\n".join(lines)
