"""Property-based fuzzing of what `load` believes: one mutation of a committed checkpoint's shard headers,
index or config.json per example (bf16 `v3`, FP8 `v3_fp8`, FP4 `v4_fp4`), then `mlxseek info` and
`mlxseek.load_model` on it.

Every outcome must be either a typed `MlxseekError`, or a load whose parameters are bit-identical to the
unmutated checkpoint's, with every tensor read from the same bytes; nothing may hang or allocate past a
bound. Outcomes are counted by type and written to $MLXSEEK_FUZZ_REPORT (default: the pytest temp dir);
run with -s to see them printed:

    MLXSEEK_FUZZ_REPORT=/tmp/fuzz.json python -m pytest -q -s tests/test_fuzz_checkpoints.py            # fast
    MLXSEEK_FUZZ_LONG=1 MLXSEEK_FUZZ_REPORT=/tmp/fuzz.json python -m pytest -q -s -m slow tests/test_fuzz_checkpoints.py

Not generated: swapping the ranges of two same-size tensors. That yields a well-formed file which the
format cannot tell from an honest one (the safetensors library accepts it too), so no header check can
refuse it; every single-field edit of a range can be refused, and is.
"""

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

import mlxseek
from mlxseek.errors import MlxseekError
from mlxseek.tools.info import info

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ("v3", "v3_fp8", "v4_fp4")
FAST = int(os.environ.get("MLXSEEK_FUZZ_EXAMPLES", "50"))  # per fixture: ~3 s each on a shared 2-core box
SLOW = int(os.environ.get("MLXSEEK_FUZZ_SLOW_EXAMPLES", "3000"))
CONVERT_EXAMPLES = int(os.environ.get("MLXSEEK_FUZZ_CONVERT_EXAMPLES", "300"))  # ~0.2 s of convert each
SECONDS_PER_LOAD = 20.0  # a load of these 2-3 MB checkpoints takes ~30 ms; a config-sized build would not end
PEAK_BYTES = 512 << 20  # MLX allocator peak per load: the checkpoints are a few MB
DELETE = object()
COUNTS: dict[str, Counter] = {}

# Values a lying header, index or config might hold instead of the truth.
VALUES = st.one_of(
    st.integers(-3, 40), st.integers(-(2**63), 2**64), st.sampled_from([10**9, 10**12, 2**31, 2**32 - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.none(), st.booleans(),
    st.lists(st.integers(-2, 300), max_size=4), st.lists(st.text(max_size=3), max_size=2),
    st.sampled_from(["F32", "F16", "BF16", "F8_E4M3", "F8_E8M0", "U8", "I8", "I32", "U32", "F64", "bf16", ""]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(DELETE),
)


def _read(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8: 8 + n], data[8 + n:]


def _write_header(path: Path, header, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _set(obj: dict, key, value) -> None:
    if value is DELETE:
        obj.pop(key, None)
    else:
        obj[key] = value


def _set_item(items: list, i: int, value) -> None:
    if value is DELETE:
        del items[i]
    else:
        items[i] = value


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _reads(folder: Path) -> dict:
    """key -> (dtype, shape, sha256 of the bytes it reads) as a plain reading of the files says (None when
    a plain reading fails: the loader must then refuse it anyway)."""
    try:
        index = folder / "model.safetensors.index.json"
        wm = json.loads(index.read_text())["weight_map"] if index.exists() else None
        out = {}
        for shard in _shards(folder):
            text, body = _read(shard)
            for k, info in json.loads(text).items():
                if k != "__metadata__" and (wm is None or wm.get(k) == shard.name):
                    a, b = info["data_offsets"]
                    out[k] = (info["dtype"], info["shape"], hashlib.sha256(body[a:b]).hexdigest())
        return out
    except Exception:  # noqa: BLE001
        return None


@st.composite
def mutations(draw, folder: Path):
    """(description, function applying the mutation to a copy of `folder`)."""
    shards = _shards(folder)
    shard = draw(st.sampled_from(shards)).name
    text, _ = _read(folder / shard)
    header = json.loads(text)
    tensors = sorted(k for k in header if k != "__metadata__")
    kind = draw(st.sampled_from(["field", "field", "field", "alias", "shift", "header", "flip", "length",
                                 "truncate", "append", "index", "config", "config", "config"]))
    key = draw(st.sampled_from(tensors))
    if kind == "field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "begin", "end", "shape_dim", "entry"]))
        value = draw(VALUES)

        def apply(d, field=field, value=value):
            h, body = json.loads(_read(d / shard)[0]), _read(d / shard)[1]
            info = h[key]
            if field in ("begin", "end"):
                _set_item(info["data_offsets"], int(field == "end"), value)
            elif field == "shape_dim" and info["shape"]:
                _set_item(info["shape"], draw_index % len(info["shape"]), value)
            elif field == "entry":
                _set(h, key, value)
            else:
                _set(info, field, value)
            _write_header(d / shard, h, body)

        draw_index = draw(st.integers(0, 3))
        return f"{shard}: {key}.{field} = {value!r}", apply
    if kind in ("alias", "shift"):
        other = draw(st.sampled_from(tensors))
        delta = draw(st.integers(-64, 64).filter(bool))

        def apply(d, kind=kind):
            h, body = json.loads(_read(d / shard)[0]), _read(d / shard)[1]
            if kind == "alias":  # issue 13 class 1: point one tensor at another's bytes
                h[key]["data_offsets"] = list(h[other]["data_offsets"])
            else:
                h[key]["data_offsets"] = [o + delta for o in h[key]["data_offsets"]]
            _write_header(d / shard, h, body)

        return f"{shard}: {key} {kind} {other if kind == 'alias' else delta}", apply
    if kind == "header":
        value = draw(st.one_of(VALUES.filter(lambda v: v is not DELETE), st.just({})))

        def apply(d):
            _write_header(d / shard, value, _read(d / shard)[1])

        return f"{shard}: header = {value!r}", apply
    if kind == "flip":
        pos, byte = draw(st.integers(0, len(text) - 1)), draw(st.integers(0, 255))

        def apply(d):
            raw = bytearray((d / shard).read_bytes())
            raw[8 + pos] = byte
            (d / shard).write_bytes(bytes(raw))

        return f"{shard}: header byte {pos} = {byte:#x}", apply
    if kind == "length":
        n = draw(st.one_of(st.integers(0, len(text) + 64), st.integers(0, 2**64 - 1)))

        def apply(d):
            raw = bytearray((d / shard).read_bytes())
            raw[:8] = struct.pack("<Q", n)
            (d / shard).write_bytes(bytes(raw))

        return f"{shard}: header length = {n}", apply
    if kind in ("truncate", "append"):
        n = draw(st.integers(1, 4096))

        def apply(d, kind=kind):
            raw = (d / shard).read_bytes()
            (d / shard).write_bytes(raw[:-n] if kind == "truncate" else raw + b"\0" * n)

        return f"{shard}: {kind} {n} bytes", apply
    if kind == "index":
        op = draw(st.sampled_from(["drop", "remap", "value", "add", "weight_map", "top"]))
        value = draw(VALUES)
        target = draw(st.sampled_from([s.name for s in shards] + ["../" + shards[0].name, "missing.safetensors"]))

        def apply(d, op=op, value=value):
            p = d / "model.safetensors.index.json"
            index = json.loads(p.read_text())
            wm = index["weight_map"]
            if op == "drop":
                wm.pop(key, None)
            elif op == "remap":
                wm[key] = target
            elif op == "value":
                _set(wm, key, value)
            elif op == "add":
                wm[f"{key}.extra"] = shard
            elif op == "weight_map":
                _set(index, "weight_map", value)
            else:
                index = value if value is not DELETE else []
            p.write_text(json.dumps(index))

        return f"index: {op} {key} {target if op == 'remap' else value!r}", apply
    config = json.loads((folder / "config.json").read_text())
    ckey = draw(st.sampled_from(sorted(config)))
    value = draw(st.one_of(VALUES, st.integers(0, 3).map(lambda i, c=config, k=ckey: _near(c[k], i))))

    def apply(d):
        c = json.loads((d / "config.json").read_text())
        _set(c, ckey, value)
        (d / "config.json").write_text(json.dumps(c))

    return f"config: {ckey} = {value!r}", apply


def _near(v, i):
    """A plausible lie: the true value doubled, halved, plus or minus one."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    return [v * 2, v // 2 if isinstance(v, int) else v / 2, v + 1, v - 1][i]


def _bits(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def _logits(model) -> mx.array:
    return model(mx.array([[0, 5, 17, 3, 9, 1]])).astype(mx.float32)


def _params(model) -> dict:
    return {k: _bits(v) for k, v in tree_flatten(model.parameters())}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    yield COUNTS
    path = Path(os.environ.get("MLXSEEK_FUZZ_REPORT") or tmp_path_factory.getbasetemp() / "fuzz_counts.json")
    summary = {name: dict(sorted(c.items())) for name, c in COUNTS.items()}
    summary["total"] = dict(sorted(sum(COUNTS.values(), Counter()).items()))
    summary["mutations"] = sum(n for k, n in summary["total"].items() if not k.startswith(("info: ", "convert: ")))
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nfuzz outcomes ({path}):\n{json.dumps(summary, indent=1)}")


def _info_outcome(d: Path, what: str, counts: Counter) -> None:
    """`mlxseek info` reads the same validated view: it reports, or refuses with a typed error."""
    t0 = time.perf_counter()
    try:
        info(d)
        counts["info: reported"] += 1
    except MlxseekError as e:
        counts[f"info: {type(e).__name__}"] += 1
    except Exception as e:  # noqa: BLE001
        counts["info: untyped " + type(e).__name__] += 1
        raise AssertionError(f"{what}: info raised untyped {type(e).__name__}: {e}") from e
    assert time.perf_counter() - t0 < SECONDS_PER_LOAD, f"{what}: info took too long"


def _convert_outcome(d: Path, what: str, counts: Counter) -> None:
    """`mlxseek convert` of the mutated folder: an output, or a typed error leaving no output; the source
    is never touched."""
    out, before = d.parent / "out", _tree_hash(d)
    shutil.rmtree(out, ignore_errors=True)
    try:
        mlxseek.convert(hf_path=d, mlx_path=out, quiet=True)
        counts["convert: wrote"] += 1
    except MlxseekError as e:
        counts[f"convert: {type(e).__name__}"] += 1
        assert not out.exists() and not out.with_name("out.partial").exists(), f"{what}: convert left output"
    except Exception as e:  # noqa: BLE001
        counts["convert: untyped " + type(e).__name__] += 1
        raise AssertionError(f"{what}: convert raised untyped {type(e).__name__}: {e}") from e
    assert _tree_hash(d) == before, f"{what}: convert modified its source"


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _run(name: str, examples: int, report, convert: bool = False) -> None:
    src = FIXTURES / name.split("+")[0]
    base = mlxseek.load_model(src)
    base_params, base_reads, base_logits = _params(base), _reads(src), _logits(base)
    counts = report.setdefault(name, Counter())
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutation=mutations(src))
    def check(mutation):
        what, apply = mutation
        d = work / "m"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        apply(d)
        _info_outcome(d, what, counts)
        if convert:
            _convert_outcome(d, what, counts)
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        try:
            model = mlxseek.load_model(d)
        except MlxseekError as e:
            counts[type(e).__name__] += 1
            return
        except Exception as e:  # noqa: BLE001  what this test exists to find
            counts["untyped " + type(e).__name__] += 1
            raise AssertionError(f"{what}: untyped {type(e).__name__}: {e}") from e
        finally:
            elapsed, peak = time.perf_counter() - t0, mx.get_peak_memory()
            assert elapsed < SECONDS_PER_LOAD, f"{what}: load took {elapsed:.1f}s"
            assert peak < PEAK_BYTES, f"{what}: load peaked at {peak / 1e6:.0f} MB"
        if _reads(d) != base_reads:
            counts["loaded changed bytes"] += 1
            raise AssertionError(f"{what}: loaded, but its tensors read other bytes")
        if _same(_params(model), base_params):
            counts["loaded unchanged"] += 1
            return
        # Same bytes, other representation (e.g. FP4 experts dequantized instead of kept packed when the
        # config no longer declares them): the model must compute what the original computes.
        diff = float(mx.abs(_logits(model) - base_logits).max())
        if diff > 1e-3:
            counts["loaded changed bytes"] += 1
            raise AssertionError(f"{what}: loaded, but its weights differ (logits move by {diff:.3g})")
        counts["loaded unchanged (other layout)"] += 1

    try:
        check()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_checkpoint_loads_unchanged_or_fails_typed(name, report):
    _run(name, FAST, report)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MLXSEEK_FUZZ_LONG"), reason="long run: set MLXSEEK_FUZZ_LONG=1")
@pytest.mark.parametrize("name", NAMES)
def test_mutated_checkpoint_long_run(name, report):
    _run(name, SLOW, report)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MLXSEEK_FUZZ_LONG"), reason="long run: set MLXSEEK_FUZZ_LONG=1")
@pytest.mark.parametrize("name", NAMES)
def test_mutated_checkpoint_converts_or_fails_typed(name, report):
    _run(name + "+convert", CONVERT_EXAMPLES, report, convert=True)
