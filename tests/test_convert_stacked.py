"""An already stacked source (mlx-lm's `switch_mlp` layout, bf16: what `benchmarks/make_random_v3.py --bits 0`
writes) is converted one expert and one row block at a time; the bytes equal converting each stack whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import mlxseek
from mlxseek.convert import stream
from random_checkpoint import PRESETS, write_random_checkpoint

# moe_intermediate 256: a gate/up expert is two 128-row blocks, so pieces split experts as well as stacks.
CONFIG = dict(PRESETS["tiny"], moe_intermediate_size=256)


@pytest.fixture(scope="module")
def stacked_source(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("src") / "stacked", CONFIG, bits=0, tokenizer=False)


def _weights(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}


@pytest.mark.parametrize("options", [{}, {"quantize": True, "q_bits": 4, "q_group_size": 32},
                                     {"quantize": True, "q_bits": 3, "q_group_size": 64, "layout": "kmajor"}],
                         ids=["float", "q4g32", "q3g64-kmajor"])
def test_stacked_source_in_pieces_gives_the_bytes_of_whole_stacks(stacked_source, tmp_path, monkeypatch, options):
    whole = mlxseek.convert(hf_path=stacked_source, mlx_path=tmp_path / "whole", quiet=True, **options)
    pieces = []
    real = stream._stack_pieces

    def counted(*a):
        for p in real(*a):
            pieces.append(p[:2])
            yield p

    monkeypatch.setattr(stream, "_stack_pieces", counted)
    monkeypatch.setattr(stream, "PIECE_BYTES", 64 * 64 * 4)  # below one expert: 128-row blocks
    split = mlxseek.convert(hf_path=stacked_source, mlx_path=tmp_path / "split", quiet=True, **options)
    E, layers = CONFIG["n_routed_experts"], CONFIG["num_hidden_layers"] - CONFIG["first_k_dense_replace"]
    # gate and up: 2 blocks per expert; down (E, 64, 256): 1
    assert len(pieces) == layers * E * (2 + 2 + 1)
    assert _weights(split.path) == _weights(whole.path)
    report = json.loads((split.path / "convert_report.json").read_text())
    assert report["output_bytes"] == whole.output_bytes
