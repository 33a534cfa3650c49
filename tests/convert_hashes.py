"""The converter cases whose weight files must stay byte-identical (tests/test_convert_bytes.py).

`python tests/convert_hashes.py` converts each case and writes tests/data/convert_hashes.json: the sha256
of every output weight shard, taken from the converter as it was before the throughput work (issue 17).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
HASHES = HERE / "data" / "convert_hashes.json"

# name -> (fixture, convert options)
CASES = {
    "v3-float": ("v3", {}),
    "v3-f32": ("v3", {"dtype": "float32"}),
    "v3-q4g32-uniform": ("v3", {"quantize": True, "q_bits": 4, "q_group_size": 32}),
    "v3-q4g64-experts": ("v3", {"quantize": True, "q_bits": 4, "q_group_size": 64, "recipe": "experts"}),
    "v3-q3g32-mixed": ("v3", {"quantize": True, "q_bits": 3, "q_group_size": 32, "recipe": "mixed"}),
    "v3-q4g32-kmajor": ("v3", {"quantize": True, "q_bits": 4, "q_group_size": 32, "layout": "kmajor"}),
    "v3-q8g32-f32": ("v3", {"quantize": True, "q_bits": 8, "q_group_size": 32, "dtype": "float32"}),
    "v3_fp8-float": ("v3_fp8", {}),
    "v3_fp8-q4g32-mixed": ("v3_fp8", {"quantize": True, "q_bits": 4, "q_group_size": 32, "recipe": "mixed"}),
    "v3_fp8-q4g32-kmajor-dropmtp": ("v3_fp8", {"quantize": True, "q_bits": 4, "q_group_size": 32,
                                               "layout": "kmajor", "drop_mtp": True}),
    "v2_lite-q4g32": ("v2_lite", {"quantize": True, "q_bits": 4, "q_group_size": 32}),
    "v32_fp8-q4g32-experts": ("v32_fp8", {"quantize": True, "q_bits": 4, "q_group_size": 32, "recipe": "experts"}),
    "v4_flash-q4g32-mixed": ("v4_flash", {"quantize": True, "q_bits": 4, "q_group_size": 32, "recipe": "mixed"}),
    "v4_fp4-float": ("v4_fp4", {}),
    "v4_fp4-q4g32-kmajor": ("v4_fp4", {"quantize": True, "q_bits": 4, "q_group_size": 32, "layout": "kmajor"}),
    "trained_v3_fp8-q6g64": ("trained_v3_fp8", {"quantize": True, "q_bits": 6, "q_group_size": 64}),
}


def weight_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def convert_case(name: str, tmp: Path) -> dict[str, str]:
    from mlxseek.convert.convert import convert

    fixture, opts = CASES[name]
    out = tmp / name
    convert(hf_path=FIXTURES / fixture, mlx_path=out, quiet=True, max_shard_bytes=1 << 20, **opts)
    return weight_hashes(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {name: convert_case(name, Path(tmp)) for name in CASES}
    HASHES.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HASHES}: {len(hashes)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
