"""Shared by tests/test_calibration_v4.py and benchmarks/v4_calibration.py: a V4 fixture with a tokenizer, and
the importance-weighted error of converted folders against the source, per tensor and expert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx

from mlxseek.checkpoint.keymap import build_plan
from mlxseek.config import ModelConfig
from mlxseek.convert.calibrate import CALIBRATION_CTX, read_calibration
from mlxseek.convert.calibrate_mhc import collect_mhc
from mlxseek.convert.reader import SourceReader
from mlxseek.convert.requantize import unpack_fp4_experts
from mlxseek.convert.stream import Source
from mlxseek.models import family_of

FIX = Path(__file__).parent / "fixtures"


def with_tokenizer(name: str, dst: Path) -> Path:
    """Fixture `name` (links to its files) with a tokenizer: trained_v3's byte-level BPE cut to the fixture's
    vocabulary (ids below vocab_size, and the merges that build only those)."""
    dst.mkdir(parents=True)
    for f in (FIX / name).iterdir():
        if f.name != "golden.npz":
            (dst / f.name).symlink_to(f.resolve())
    vocab = ModelConfig.from_file(dst).vocab_size
    tok = json.loads((FIX / "trained_v3" / "tokenizer.json").read_text())
    kept = {t: i for t, i in tok["model"]["vocab"].items() if i < vocab}
    tok["model"]["vocab"] = kept
    tok["model"]["merges"] = [m for m in tok["model"]["merges"] if m[0] in kept and m[1] in kept and m[0] + m[1] in kept]
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] < vocab]
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    shutil.copy(FIX / "trained_v3" / "tokenizer_config.json", dst / "tokenizer_config.json")
    return dst


def unpacked_source(folder: Path) -> Source:
    """The source as a below-4-bit conversion reads it: FP4 experts dequantized (bf16, the output dtype)."""
    cfg = ModelConfig.from_file(folder)
    reader = SourceReader(folder)
    plan = build_plan(reader.keys(), cfg, rename=family_of(cfg).key_rename(cfg))
    unpack_fp4_experts(plan)
    return Source(reader, cfg, plan, mx.bfloat16)


def statistics(src: Path, text: Path, tokens: int):
    """(source, the statistics a conversion with `--calibration text --calibration-tokens tokens` gathers)."""
    source = unpacked_source(src)
    batches = read_calibration(text, src, ctx=CALIBRATION_CTX, limit=tokens, vocab_size=source.cfg.vocab_size)
    return source, collect_mhc(source, batches)


def tensors(folder: Path) -> dict[str, mx.array]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def weighted_errors(source: Source, stats, folders: list[Path]) -> dict[tuple[str, int], list[float]]:
    """{(weight name, expert): [sum_j imp_j (Q(w) - w)_rj^2 for each folder]} over every quantized matrix of the
    folders (same bits and group size); imp is the recorded mean squared input (ones where none was recorded)."""
    outs = [tensors(f) for f in folders]
    quant = json.loads((folders[0] / "config.json").read_text())["quantization"]
    mat = source.materializer(source.reader)
    errors = {}
    for t in source.plan.targets:
        for name, w in mat.materialize(t).items():
            base = name[: -len("weight")]
            if not name.endswith(".weight") or base + "scales" not in outs[0]:
                continue
            p = quant.get(base[:-1]) or {"bits": quant["bits"], "group_size": quant["group_size"]}
            p = {"bits": p["bits"], "group_size": p["group_size"]}
            deq = [mx.dequantize(d[base + "weight"], d[base + "scales"], d[base + "biases"], **p) for d in outs]
            w = w.astype(mx.float32)
            stack = w if w.ndim == 3 else w[None]
            for e in range(stack.shape[0]):
                imp = stats.importance(base[:-1], e)
                imp = mx.ones((w.shape[-1],)) if imp is None else mx.array(imp)
                errors[(name, e)] = [float((imp * ((q if w.ndim == 3 else q[None])[e].astype(mx.float32)
                                                   - stack[e]) ** 2).sum()) for q in deq]
    return errors
