"""`mlxseek convert --layout kmajor`: weights stored (in, out) with groups along `out`, the CPU backend's
fast quantized layout, written by the converter from the float source (one quantization, same bits)."""

import json

import mlx.core as mx
import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from mlx.utils import tree_flatten

import mlxseek
from mlxseek.cli import main as cli
from mlxseek.convert import stream
from mlxseek.cpu.kmajor import KMajorQuantizedLinear, KMajorQuantizedSwitchLinear

GROUP = 32


def convert(src, dst, **kw):
    return mlxseek.convert(hf_path=src, mlx_path=dst, quantize=True, q_group_size=GROUP, quiet=True, **kw)


def f32(a):
    # Dequantize in float32 whatever the scales' dtype, as the float32 kernels do.
    return a if a is None or not mx.issubdtype(a.dtype, mx.floating) else a.astype(mx.float32)


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "convert_report.json"}


@pytest.fixture(scope="module")
def kmajor(tmp_path_factory):
    return convert(FIXTURES / "v3_fp8", tmp_path_factory.mktemp("km") / "out", layout="kmajor").path


def test_every_eligible_module_is_recorded_kmajor(kmajor):
    q = json.loads((kmajor / "config.json").read_text())["quantization"]
    layouts = {p: v.get("layout") for p, v in q.items() if isinstance(v, dict)}
    assert layouts["lm_head"] == "kmajor"
    assert layouts["model.layers.1.mlp.switch_mlp.down_proj"] == "kmajor"
    assert layouts["model.layers.1.self_attn.o_proj"] == "kmajor"
    # Embeddings (row lookups) and the absorbed-MLA MultiLinear keep MLX's layout.
    assert "model.embed_tokens" not in layouts and "model.layers.1.self_attn.embed_q" not in layouts


def test_stored_weights_are_the_source_quantized_along_out(kmajor, fixture_model):
    """Each stored (in, out) weight dequantizes to the float source within one step of its own group
    (MLX's affine rounding keeps zero exact, so its error reaches a full step, not half), groups running
    along `out`: a wrong axis, placement or piece offset breaks this bound."""
    source = dict(tree_flatten(fixture_model("v3_fp8").parameters()))
    stored = {}
    for f in kmajor.glob("*.safetensors"):
        stored.update(mx.load(str(f)))
    q = json.loads((kmajor / "config.json").read_text())["quantization"]
    checked = 0
    for path, p in q.items():
        if not isinstance(p, dict) or p.get("layout") != "kmajor" or path.startswith("mtp."):
            continue
        w, s, b = (stored[f"{path}.{k}"] for k in ("weight", "scales", "biases"))
        deq = mx.dequantize(w, s, b, group_size=GROUP, bits=4).swapaxes(-1, -2)  # (..., out, in)
        src = source[f"{path}.weight"].astype(mx.float32)
        assert deq.shape == src.shape, path
        step = mx.repeat(mx.abs(s.astype(mx.float32)), GROUP, axis=-1).swapaxes(-1, -2)  # (..., out, in)
        # plus bf16 rounding of the dequantized value (2^-8 relative)
        assert bool(mx.all(mx.abs(deq - src) <= step * 1.05 + mx.abs(src) / 256 + 1e-6)), path
        checked += 1
    assert checked >= 10


def test_loads_kmajor_and_matches_dequantized_float_model(kmajor, fixture_model):
    """Logits of the K-major store equal those of the float model holding the same dequantized weights."""
    model, _ = mlxseek.load(kmajor, with_mtp=False, tokenizer=False)
    assert model.kernel_layout.startswith("kmajor (stored)")
    kinds = {type(m) for _, m in model.named_modules()}
    assert KMajorQuantizedLinear in kinds and KMajorQuantizedSwitchLinear in kinds
    ref, _ = mlxseek.load(FIXTURES / "v3_fp8", with_mtp=False, tokenizer=False, dtype="float32")
    dense = []
    for path, m in model.named_modules():
        if isinstance(m, (KMajorQuantizedLinear, KMajorQuantizedSwitchLinear)):
            w = mx.dequantize(m.weight, f32(m.scales), f32(m.biases), group_size=m.group_size, bits=m.bits)
            dense.append((f"{path}.weight", w.swapaxes(-1, -2).astype(mx.float32)))
    ref.load_weights(dense, strict=False)
    # The modules the store keeps in MLX's layout (embeddings, MultiLinear, ...) are quantized in both.
    for path, m in model.named_modules():
        if hasattr(m, "scales") and not isinstance(m, (KMajorQuantizedLinear, KMajorQuantizedSwitchLinear)):
            mode = getattr(m, "mode", "affine")
            w = mx.dequantize(m.weight, f32(m.scales), f32(m.get("biases")), group_size=m.group_size, bits=m.bits,
                              mode=mode)
            ref.load_weights([(f"{path}.weight", w.astype(mx.float32))], strict=False)
    x = mx.array([[1, 5, 9, 20, 33, 7, 300, 2]])
    diff = float(mx.abs(model(x) - ref(x)).max())
    assert diff < 1e-3, diff


def test_row_pieces_write_the_same_bytes_as_whole_matrices(kmajor, tmp_path, monkeypatch):
    """A matrix split into row blocks lands in column blocks of the stored (in, out) tensor."""
    monkeypatch.setattr(stream, "PIECE_BYTES", 128 * 128 * 4)  # lm_head and the dense MLP split in pieces
    pieces = convert(FIXTURES / "v3_fp8", tmp_path / "pieces", layout="kmajor").path
    assert folder_bytes(pieces) == folder_bytes(kmajor)


def test_same_size_as_transposed(kmajor, tmp_path):
    transposed = convert(FIXTURES / "v3_fp8", tmp_path / "t").path
    size = lambda f: sum(p.stat().st_size for p in f.glob("*.safetensors"))  # noqa: E731
    assert abs(size(kmajor) - size(transposed)) < 0.01 * size(transposed)


def test_cli_layout_option(tmp_path):
    r = CliRunner().invoke(cli, ["convert", "--hf-path", str(FIXTURES / "v3"), "--mlx-path", str(tmp_path / "o"),
                                 "--layout", "kmajor", "--quiet"])
    assert r.exit_code != 0 and "--layout kmajor" in r.output and "-q" in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(cli, ["convert", "--help"])
    assert "--layout" in r.output and "kmajor" in r.output


def test_info_reports_the_layout_and_the_same_parameters(kmajor, tmp_path):
    from mlxseek.tools.info import info

    k, t = info(kmajor), info(convert(FIXTURES / "v3_fp8", tmp_path / "t").path)
    assert k["quantization"]["layout"].startswith("kmajor (") and t["quantization"]["layout"] == "transposed"
    assert k["quantization"]["overrides"] == t["quantization"]["overrides"]
    assert (k["total_params"], k["active_params"]) == (t["total_params"], t["active_params"])


def test_paged_experts_keep_the_stored_layout(kmajor):
    """Experts read from disk on demand (expert_memory_gb) are built K-major like the resident stacks."""
    x = mx.array([[1, 5, 9, 20, 33, 7, 300, 2]])
    resident, _ = mlxseek.load(kmajor, with_mtp=False, tokenizer=False)
    paged, _ = mlxseek.load(kmajor, with_mtp=False, tokenizer=False, expert_memory_gb=1e-4)
    assert float(mx.abs(paged(x) - resident(x)).max()) < 1e-5
    assert paged.pager.stats()["misses"] > 0
