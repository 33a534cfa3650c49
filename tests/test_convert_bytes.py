"""The converter's weight files are byte-identical to those of the converter before the throughput work:
tests/data/convert_hashes.json holds the sha256 of every shard of each case in tests/convert_hashes.py,
taken from that earlier code (regenerate only on a deliberate format change)."""

from __future__ import annotations

import json

import pytest
from convert_hashes import CASES, HASHES, convert_case

from mlxseek.convert import stream

EXPECTED = json.loads(HASHES.read_text())


def test_every_case_has_recorded_hashes():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_weight_files_are_byte_identical(name, tmp_path):
    assert convert_case(name, tmp_path) == EXPECTED[name]


@pytest.mark.parametrize("name", ["v3_fp8-q4g32-mixed", "v3_fp8-q4g32-kmajor-dropmtp", "v3-f32"])
def test_small_pieces_give_the_recorded_bytes(name, tmp_path, monkeypatch):
    """Row blocks of 128 rows (the FP8 block; a partial edge block) go through the overlapped pipeline
    many times per tensor and still write the recorded bytes."""
    monkeypatch.setattr(stream, "PIECE_BYTES", 128 * 128 * 4)
    assert convert_case(name, tmp_path) == EXPECTED[name]
