"""benchmarks/agent_bench.py at toy sizes: its JSON lines say what the prefix cache served, cold runs only on
the turns named, and the word-tokenizer folder it gives mlx_lm.server encodes a prompt to the same ids for
both servers (and is one mlx-lm can run on the CPU)."""

import json
import sys
from pathlib import Path

import mlx.core as mx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import agent_bench  # noqa: E402
import agent_http  # noqa: E402


def test_agent_session_lines(tmp_path):
    out = tmp_path / "lines.jsonl"
    agent_bench.main(["--models", f"v3={ROOT / 'tests/fixtures/v3'}", "v4.1=tiny", "--turns", "2", "--system", "100",
                      "--turn-tokens", "20", "--reply", "3", "--cold-turns", "2", "--batches", "--jsonl", str(out)])
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    turns = {(x["family"], x["turn"]): x for x in lines if x["bench"] == "agent_session"}
    assert set(turns) == {("v3", 1), ("v3", 2), ("v4.1", 1), ("v4.1", 2)}
    for family, kind in (("v3", "block"), ("v4.1", "exact")):
        first, second = turns[family, 1], turns[family, 2]
        assert first["cached_tokens"] == 0 and "ttft_cold_s" not in first  # --cold-turns 2: turn 1 runs warm only
        # turn 2 resends turn 1's prompt and reply: the cache serves turn 1's prompt (V3 in 32-token blocks)
        assert second["cached_tokens"] >= first["prompt_tokens"] // 32 * 32
        assert second["same_reply_as_cold"] is True and second["ttft_cold_s"] > 0
        assert second["snapshot_kind"] == kind and second["ram_bytes"] > 0 and second["disk_files"] >= 1
        assert second["warm_restore_s"] >= 0 and second["turn_end_snapshot_s"] > 0


def test_word_folder_encodes_alike_for_both_servers(tmp_path):
    from mlx_lm import load as lm_load

    from mlxseek.loading.tokenizer import load_tokenizer

    h = agent_http
    specials = {h.BOS: 0, h.EOS: 1, h.USER: 5, h.ASSISTANT: 6}
    folder = h.word_folder(ROOT / "tests/fixtures/v32", tmp_path / "v32-words", specials)
    ids = [0, 10, 11, 5, 1023, 6]
    text = h.text_of(ids, specials)
    ours = load_tokenizer(folder)
    assert list(ours.encode(text, add_special_tokens=False)) == ids
    model, theirs = lm_load(str(folder))
    assert list(theirs.encode(text)) == ids  # mlx_lm.server's call: no second begin-of-sentence
    # float32 weights: MLX's CPU expert matmul (gather_mm) refuses bf16, which the fixture is stored in
    logits = model(mx.array([ids]))
    assert logits.dtype == mx.float32 and logits.shape == (1, len(ids), 1024)
