"""The one safetensors seam (mlxseek/checkpoint/safetensors.py): its dtype table agrees with what MLX writes
and reads, its row reads return the bytes `mx.load` gives, its headers are read by an independent reader,
and every way a header can lie is refused with a CheckpointError naming the file, the tensor and the fault."""

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from st_io import read_raw

from mlxseek.checkpoint import safetensors
from mlxseek.checkpoint.store import WeightStore
from mlxseek.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
SAVABLE = [mx.float32, mx.float16, mx.bfloat16, mx.uint8, mx.int8, mx.uint16, mx.int16, mx.uint32, mx.int32,
           mx.uint64, mx.int64, mx.bool_]


def _bits(a: mx.array) -> bytes:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()


def test_dtype_table_matches_what_mlx_writes_and_reads(tmp_path):
    arrays = {f"t{i}": (mx.arange(24).reshape(4, 3, 2) % 7).astype(d) for i, d in enumerate(SAVABLE)}
    path = tmp_path / "all.safetensors"
    mx.save_safetensors(str(path), arrays)
    header = safetensors.read_header(path)
    loaded = mx.load(str(path))
    for name, a in arrays.items():
        info = header.tensors[name]
        assert info["dtype"] == safetensors.name_of(a.dtype)
        assert safetensors.DTYPES[info["dtype"]].mlx == loaded[name].dtype
        assert safetensors.nbytes(info["dtype"], info["shape"]) == a.nbytes
        rows = safetensors.to_mlx(safetensors.read_rows(path, header, name, 1, 3), info["dtype"])
        assert rows.dtype == loaded[name].dtype and _bits(rows) == _bits(loaded[name][1:3])


def test_float8_dtypes_are_known_one_byte_and_read_as_uint8():
    for name in ("F8_E4M3", "F8_E8M0"):
        d = safetensors.DTYPES[name]
        assert d.itemsize == 1 and d.mlx == mx.uint8
    assert safetensors.name_of(mx.uint8) == "U8"  # a writer of float8 bits names them itself


def test_row_reads_of_a_real_fp4_shard_match_mx_load():
    store = WeightStore(FIXTURES / "v4_fp4")
    for key in [k for k in store.keys() if store.dtype(k) in ("F8_E8M0", "I8", "F8_E4M3")][:6]:
        whole = mx.load(str(store.file_of(key)))[key]
        n = store.shape(key)[0]
        assert _bits(store.read_rows(key, n // 2, n)) == _bits(whole[n // 2:])


def test_encoded_header_is_read_by_an_independent_reader(tmp_path):
    a, b = mx.arange(6, dtype=mx.float32).reshape(2, 3), mx.ones((4,), dtype=mx.bfloat16)
    blobs = [safetensors.host_bits(a).tobytes(), safetensors.host_bits(b).tobytes()]
    header, size = safetensors.layout_header([("a", "F32", (2, 3), 24), ("b", "BF16", (4,), 8)], {"format": "pt"})
    raw = safetensors.encode_header(header)
    assert len(raw) % 8 == 0 and size == 32
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw + b"".join(blobs))
    theirs, body = read_raw(path)
    assert theirs["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]} and len(body) == 32
    assert np.array_equal(np.array(mx.load(str(path))["a"]), np.array(a))
    assert safetensors.read_header(path).data_start == len(raw)


# ---- every lie a header can tell ------------------------------------------------------------------

def _shard(tmp_path, edit=None, *, raw_header=None, body_extra=b"", truncate=0) -> Path:
    """A valid 3-tensor shard (gate 16 B, up 16 B, norm 8 B), with `edit(header)` applied."""
    header = {"gate": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "up": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]},
              "norm": {"dtype": "BF16", "shape": [4], "data_offsets": [32, 40]},
              "__metadata__": {"format": "pt"}}
    if edit:
        edit(header)
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    body = bytes(range(40)) + body_extra
    path = tmp_path / "model.safetensors"
    data = struct.pack("<Q", len(text)) + text + body
    path.write_bytes(data[: len(data) - truncate])
    return path


def _set(path, value):
    *parents, leaf = path
    def edit(h):
        obj = h
        for p in parents:
            obj = obj[p]
        if value is KeyError:
            del obj[leaf]
        else:
            obj[leaf] = value
    return edit


LIES = {
    "overlapping ranges": (_set(["gate", "data_offsets"], [16, 32]), "tensor 'up' bytes [16, 32) overlap those of 'gate'"),
    "gap between ranges": (lambda h: h.update(up={"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}),
                           "tensor 'up' starts at byte 24 but the previous tensor 'gate' ends at 16"),
    "size not prod(shape) x itemsize": (_set(["norm", "shape"], [3]), "tensor 'norm' has data_offsets [32, 40] (8 bytes) but BF16[3] needs 6"),
    "missing data_offsets": (_set(["up", "data_offsets"], KeyError), "tensor 'up' has no 'data_offsets'"),
    "missing dtype": (_set(["up", "dtype"], KeyError), "tensor 'up' has no 'dtype'"),
    "offsets as strings": (_set(["up", "data_offsets"], ["16", "32"]), "tensor 'up' has data_offsets ['16', '32']: they must be two integers"),
    "three offsets": (_set(["up", "data_offsets"], [16, 24, 32]), "tensor 'up' has data_offsets [16, 24, 32]"),
    "reversed offsets": (_set(["up", "data_offsets"], [32, 16]), "0 <= begin <= end"),
    "float offsets": (_set(["up", "data_offsets"], [16.0, 32.0]), "must be two integers"),
    "negative shape": (_set(["up", "shape"], [-2, -2]), "tensor 'up' has shape [-2, -2]: it must be a list of non-negative integers"),
    "boolean shape": (_set(["up", "shape"], [True, 4]), "it must be a list of non-negative integers"),
    "shape not a list": (_set(["up", "shape"], 4), "tensor 'up' has shape 4"),
    "unknown dtype": (_set(["up", "dtype"], "F64"), "tensor 'up' has unsupported dtype F64"),
    "entry not an object": (_set(["up"], [1, 2]), "tensor 'up' is described by a JSON list"),
    "metadata not an object": (_set(["__metadata__"], "pt"), "__metadata__ is a str"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_header_is_refused_naming_file_tensor_and_fault(lie, tmp_path):
    edit, words = LIES[lie]
    path = _shard(tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        safetensors.read_header(path)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("raw,words", [
    (b'[{"a": 1}]', "safetensors header is a JSON list, not an object"),
    (b'{"gate": \xff}', "safetensors header is not UTF-8 text (byte 9 of the header)"),
    (b'{"gate": {', "safetensors header is not valid JSON"),
    (b'"text"', "safetensors header is a JSON str"),
    (b'{"a": {"dtype": "U8", "shape": [40], "data_offsets": [0, 40]}, "a": {"dtype": "U8", "shape": [40], '
     b'"data_offsets": [0, 40]}}', "key 'a' appears twice"),
], ids=["list", "non-utf8", "bad-json", "string", "duplicate-key"])
def test_a_header_that_is_not_an_object_of_utf8_json_is_refused(raw, words, tmp_path):
    path = _shard(tmp_path, raw_header=raw)
    with pytest.raises(CheckpointError, match="^" + str(path).replace(".", r"\.")) as e:
        safetensors.read_header(path)
    assert words in str(e.value), str(e.value)


def test_ranges_must_cover_the_data_section_exactly(tmp_path):
    with pytest.raises(CheckpointError, match=r"the tensors' bytes end at 40 but the data section holds 48"):
        safetensors.read_header(_shard(tmp_path, body_extra=b"\0" * 8))
    with pytest.raises(CheckpointError, match=r"truncated safetensors file: tensor 'norm' ends at byte 40 .* only 36"):
        safetensors.read_header(_shard(tmp_path, truncate=4))
    with pytest.raises(CheckpointError, match=r"header claims \d+ bytes, file has"):
        path = _shard(tmp_path)
        path.write_bytes(struct.pack("<Q", 10**6) + path.read_bytes()[8:])
        safetensors.read_header(path)


def test_a_valid_header_with_zero_size_tensors_and_any_order_is_accepted(tmp_path):
    def edit(h):
        h["empty"] = {"dtype": "F32", "shape": [0, 5], "data_offsets": [16, 16]}
        h["gate"], h["norm"] = h.pop("gate"), h.pop("norm")  # key order differs from byte order
    header = safetensors.read_header(_shard(tmp_path, edit))
    assert set(header.tensors) == {"gate", "up", "norm", "empty"} and header.metadata == {"format": "pt"}


@pytest.mark.parametrize("name", sorted(p.parent.name for p in FIXTURES.glob("*/config.json")))
def test_mlxseek_info_exits_0_on_every_fixture_folder(name):
    from click.testing import CliRunner

    from mlxseek.cli import main

    r = CliRunner().invoke(main, ["info", str(FIXTURES / name)])
    assert r.exit_code == 0, r.output
    assert f"{FIXTURES / name}: " in r.output and "parameters" in r.output
