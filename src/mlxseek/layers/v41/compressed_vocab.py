"""Engram's compressed vocabulary from the real tokenizer: token ids that normalise to the same text share
one id (NFKC, NFD, strip accents, lowercase, whitespace runs to one space, strip; a token that is exactly
whitespace stays one space); a token that decodes to a partial UTF-8 sequence keeps its raw token string.
Ids are numbered in order of first appearance. Provenance: transformers' V4.1 port
(`build_compressed_token_map`), DeepSeek's `engram.py`; V4.1-Flash's config says 99092 ids result.
"""

from __future__ import annotations

import numpy as np

_SENTINEL = "\ue000"  # private use: a lone space survives Strip() and does not merge with the empty string


def _normalizer():
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "), normalizers.Replace(Regex(r"^ $"), _SENTINEL),
        normalizers.Strip(), normalizers.Replace(_SENTINEL, " "),
    ])


def compressed_token_map(backend, vocab_size: int) -> tuple[np.ndarray, int]:
    """backend: a `tokenizers.Tokenizer` -> (map (vocab_size,) int64, number of compressed ids)."""
    norm, keys = _normalizer(), {}
    out = np.zeros(vocab_size, dtype=np.int64)
    for tid in range(vocab_size):
        text = backend.decode([tid], skip_special_tokens=False)
        key = backend.id_to_token(tid) if "\ufffd" in text else (norm.normalize_str(text) or text)
        out[tid] = keys.setdefault(key, len(keys))
    return out, len(keys)
