"""The trained tiny DeepSeek-V4 and its two drafters, on held-out text (tests/fixtures/trained_v3_heldout.txt,
files the tokenizer and both trainings never saw):
- tests/fixtures/trained_v4: backbone + MTP head trained jointly (April layout, benchmarks/train_tiny_v4.py);
- tests/fixtures/trained_dspark: the same stored backbone shard plus a DSpark drafter trained on its greedy
  continuations (0731 layout, benchmarks/train_dspark.py).
Drafting with either gives exactly plain greedy's tokens, and both drafters' acceptance is learned: far
above the same drafter with its weights shuffled (same values, so the same scale, but no structure)."""

from __future__ import annotations

import hashlib

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten, tree_unflatten
from test_v4_mtp import _plain

import mlxseek
from mlxseek.speculative import DraftStats, speculative_generate_step
from mlxseek.tools.draft_bench import text_prompts

MTP_DIR, DSPARK_DIR = FIXTURES / "trained_v4", FIXTURES / "trained_dspark"
PROMPTS, PROMPT_TOKENS, GEN = 8, 24, 64


@pytest.fixture(scope="module")
def prompts():
    """PROMPTS windows of PROMPT_TOKENS ids (bos first) spread over the held-out text."""
    tok = mlxseek.load_tokenizer(MTP_DIR)
    return text_prompts(tok, FIXTURES / "trained_v3_heldout.txt", PROMPTS, PROMPT_TOKENS)


@pytest.fixture(scope="module")
def models():
    return {name: mlxseek.load(d, tokenizer=False)[0] for name, d in (("mtp", MTP_DIR), ("dspark", DSPARK_DIR))}


@pytest.fixture(scope="module")
def plain(models, prompts):
    return [_plain(models["mtp"], p, GEN) for p in prompts]


def _drafted(model, prompts, n: int, draft: str, k: int, plain=None) -> DraftStats:
    """Drafted greedy decoding over `prompts`; asserts each output equals `plain` (when given)."""
    stats = DraftStats()
    for i, p in enumerate(prompts):
        out = [t for t, _ in speculative_generate_step(p, model, max_tokens=n, draft=draft, num_draft=k, stats=stats)]
        if plain is not None:
            assert out == plain[i][:n], (draft, k, i)
    return stats


def _shuffled(model, part: str, seed: int = 0):
    """Permute the elements of every float tensor of `model.<part>` (the drafter) in place."""
    rng = np.random.default_rng(seed)
    new = [(k, mx.array(rng.permutation(np.array(v).reshape(-1)).reshape(v.shape)).astype(v.dtype))
           for k, v in tree_flatten(model[part].parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    model[part].update(tree_unflatten(new))
    return model


def test_both_drafters_sit_on_one_stored_backbone(models):
    digest = [hashlib.sha256((d / "model-00001-of-00002.safetensors").read_bytes()).hexdigest()
              for d in (MTP_DIR, DSPARK_DIR)]
    assert digest[0] == digest[1]
    assert models["mtp"].drafters == ("mtp",) and models["dspark"].drafters == ("dspark",)
    assert len(models["dspark"].dspark.stages) == 3
    # prompt + generation crosses the 32-token window and many ratio-4 CSA groups; the ratio-128 HCA layer
    # completes none in 88 tokens (tests/test_dspark.py crosses it on the random 0731 checkpoint)
    assert PROMPT_TOKENS + GEN > 2 * models["mtp"].config.sliding_window


@pytest.fixture(scope="module")
def trained_stats(models, prompts, plain):
    """Every drafted run of the trained fixtures, checked token for token against plain greedy."""
    return {
        ("dspark", 5): _drafted(models["dspark"], prompts, GEN, "dspark", 5, plain),
        ("dspark", 2): _drafted(models["dspark"], prompts, GEN, "dspark", 2, plain),
        ("mtp", 1): _drafted(models["mtp"], prompts, GEN, "mtp", 1, plain),
    }


def test_drafted_greedy_is_plain_greedy_on_held_out_text(trained_stats):
    for (draft, k), stats in trained_stats.items():
        assert stats.verify_steps > 0 and stats.accepted_tokens <= stats.draft_tokens, (draft, k)


@pytest.mark.parametrize("draft, k, part, path", [("dspark", 5, "dspark", DSPARK_DIR), ("mtp", 1, "mtp", MTP_DIR)])
def test_acceptance_is_learned_not_chance(trained_stats, prompts, draft, k, part, path):
    """First-position acceptance of the trained drafter vs the same drafter with shuffled weights, on the
    same backbone and prompts."""
    control = _shuffled(mlxseek.load(path, tokenizer=False)[0], part)
    shuffled = _drafted(control, prompts[:4], 32, draft, k).acceptance_by_position[0]
    trained = trained_stats[(draft, k)].acceptance_by_position[0]
    assert trained > 0.5 and trained > 3 * shuffled, (trained, shuffled)
