"""Property-based fuzzing of what `load` believes: one mutation of a committed checkpoint's shard headers,
index or config.json per example (bf16 `v3`, FP8 `v3_fp8`, FP4 `v4_fp4`), then `mlxseek info` and
`mlxseek.load_model` on it.

Every outcome must be either a typed `MlxseekError`, or a load in which every tensor reads the same bytes
as in the unmutated checkpoint and whose parameters are bit-identical to its (or, where the same bytes
land in another layout, e.g. FP4 experts dequantized once config.json stops declaring them, whose logits
match); nothing may hang or allocate past a bound. The long run also converts every mutated folder: a
typed error leaves no output, and the source is never modified. Outcomes are counted by type and written to $MLXSEEK_FUZZ_REPORT (default: the pytest temp dir);
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
import tempfile
import time
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoint_mutations import mutations, reads
from hypothesis import HealthCheck, given, settings
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
COUNTS: dict[str, Counter] = {}

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
    base_params, base_reads, base_logits = _params(base), reads(src), _logits(base)
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
        if reads(d) != base_reads:
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
