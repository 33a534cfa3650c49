"""Raw safetensors I/O in NumPy for tests: an independent reader (bf16 and FP8 e4m3 decoded here, not by
mlxseek or MLX) and a byte-level rewriter for building corrupt or edited checkpoints. No torch needed."""

import json
import struct
from pathlib import Path

import numpy as np

_NP = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "U32": np.uint32}


def _e4m3_table() -> np.ndarray:
    """All 256 float8 e4m3fn values: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7f/0xff are NaN."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    val = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7))
    val = sign * val
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


E4M3 = _e4m3_table()


def read_raw(path: Path) -> tuple[dict, bytes]:
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, data[8 + n :]


def read_float32(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a shard as float32 (bf16 widened, e4m3 decoded); integer tensors kept as is."""
    header, body = read_raw(path)
    out = {}
    for k, info in header.items():
        a, b = info["data_offsets"]
        raw, shape, dt = body[a:b], info["shape"], info["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dt == "F8_E4M3":
            arr = E4M3[np.frombuffer(raw, np.uint8)]
        else:
            arr = np.frombuffer(raw, _NP[dt])
        out[k] = arr.reshape(shape).astype(np.float32) if arr.dtype.kind == "f" else arr.reshape(shape)
    return out


def rewrite(path: Path, drop=(), rename=None) -> None:
    """Rewrite a shard keeping each tensor's dtype and bytes, minus `drop`, with keys renamed."""
    rename = rename or {}
    header, body = read_raw(path)
    new_header, chunks, off = {}, [], 0
    for k, info in header.items():
        if k in drop:
            continue
        a, b = info["data_offsets"]
        new_header[rename.get(k, k)] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [off, off + b - a]}
        chunks.append(body[a:b])
        off += b - a
    new_header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(new_header).encode()
    hb += b" " * (-len(hb) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))


def edit_index(folder: Path, drop=(), rename=None) -> None:
    rename = rename or {}
    p = Path(folder) / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    wm = index["weight_map"]
    index["weight_map"] = {rename.get(k, k): v for k, v in wm.items() if k not in drop}
    p.write_text(json.dumps(index, indent=2))
