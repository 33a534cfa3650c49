"""Mutations of a checkpoint folder for the fuzz harness (tests/test_fuzz_checkpoints.py): one lie per
example in a shard header, the index or config.json, as a hypothesis strategy of (description, apply)."""

import hashlib
import json
import struct
from pathlib import Path

from hypothesis import strategies as st

DELETE = object()

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


def reads(folder: Path) -> dict:
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
    inner = None  # a key inside an object-valued entry (rope_scaling.factor, quantization_config.weight_block_size)
    if isinstance(config[ckey], dict) and config[ckey] and draw(st.booleans()):
        inner = draw(st.sampled_from(sorted(config[ckey])))
    true = config[ckey] if inner is None else config[ckey][inner]
    value = draw(st.one_of(VALUES, st.integers(0, 3).map(lambda i: _near(true, i))))

    def apply(d):
        c = json.loads((d / "config.json").read_text())
        _set(c if inner is None else c[ckey], ckey if inner is None else inner, value)
        (d / "config.json").write_text(json.dumps(c))

    return f"config: {ckey}{'.' + inner if inner else ''} = {value!r}", apply


def _near(v, i):
    """A plausible lie: the true value doubled, halved, plus or minus one."""
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return [_near(x, i) for x in v]  # weight_block_size, compress_ratios
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    return [v * 2, v // 2 if isinstance(v, int) else v / 2, v + 1, v - 1][i]
