"""`mlxseek eval`: perplexity, KL divergence and top-1 agreement on the trained tiny DeepSeek-V3."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import mlx.core as mx
import pytest
from click.testing import CliRunner
from conftest import FIXTURES

import mlxseek
from mlxseek.cli import main
from mlxseek.errors import EvaluationError
from mlxseek.tools.evaluate import evaluate

TRAINED, TRAINED_FP8 = FIXTURES / "trained_v3", FIXTURES / "trained_v3_fp8"
HELDOUT = FIXTURES / "trained_v3_heldout.txt"
CTX = 64


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    """About 300 tokens of held-out text: 4-5 chunks of 64."""
    path = tmp_path_factory.mktemp("eval") / "small.txt"
    path.write_text(HELDOUT.read_text()[:1000])
    return path


def _manual_nll(model, tok, text: str, ctx: int, score_from: int) -> float:
    """Token by token through the KV cache (decode path, not the batched one): mean NLL of the same
    predictions, chunking as documented (bos + ctx-1 text tokens, predictions from score_from on)."""
    ids = tok.encode(text, add_special_tokens=False)
    total, n = 0.0, 0
    for c in range(len(ids) // (ctx - 1)):
        chunk = [tok.bos_token_id] + ids[c * (ctx - 1): (c + 1) * (ctx - 1)]
        cache = model.make_cache()
        for t in range(ctx - 1):
            logits = model(mx.array([[chunk[t]]]), cache=cache)[0, -1]
            if t >= score_from:
                total -= (logits - mx.logsumexp(logits))[chunk[t + 1]].item()
                n += 1
    return total / n


@pytest.mark.parametrize("score_from", [0, CTX // 2])
def test_perplexity_is_exp_mean_nll_of_a_manual_loop(small_text, score_from):
    model, tok = mlxseek.load(TRAINED, with_mtp=False)
    res = evaluate(model=TRAINED, data=small_text, ctx=CTX, score_from=score_from)
    manual = _manual_nll(model, tok, small_text.read_text(), CTX, score_from)
    assert res.tokens == res.chunks * (CTX - 1 - score_from)
    assert res.nll == pytest.approx(manual, rel=1e-4)
    assert res.ppl == pytest.approx(math.exp(manual), rel=1e-4)
    assert res.ppl < model.config.vocab_size / 10  # a trained model: far below the uniform perplexity


def test_kl_of_a_model_against_itself_is_zero(small_text):
    res = evaluate(model=TRAINED, data=small_text, kl_vs=TRAINED, ctx=CTX)
    assert res.kl_mean == 0.0 and res.kl_max == 0.0
    assert res.top1_agreement == 1.0
    assert res.ref_ppl == res.ppl


def test_kl_against_the_fp8_copy_is_small_but_not_zero(small_text):
    res = evaluate(model=TRAINED_FP8, data=small_text, kl_vs=TRAINED, ctx=CTX)
    assert 0 < res.kl_mean < 0.05
    assert 0.9 < res.top1_agreement <= 1.0
    assert res.kl_median <= res.kl_p99 <= res.kl_max


def test_cli_json_matches_the_library(small_text):
    out = CliRunner().invoke(main, ["eval", "--model", str(TRAINED), "--data", str(small_text), "--ctx", str(CTX),
                                    "--kl-vs", str(TRAINED_FP8), "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output.strip().splitlines()[-1])
    lib = evaluate(model=TRAINED, data=small_text, kl_vs=TRAINED_FP8, ctx=CTX)
    assert row["ppl"] == pytest.approx(lib.ppl) and row["kl_mean"] == pytest.approx(lib.kl_mean)
    assert row["top1_agreement"] == lib.top1_agreement and row["tokens"] == lib.tokens


def test_cli_subprocess_prints_perplexity(small_text):
    exe = shutil.which("mlxseek") or str(__import__("pathlib").Path(sys.executable).with_name("mlxseek"))
    proc = subprocess.run([exe, "eval", "--model", str(TRAINED), "--data", str(small_text), "--ctx", str(CTX)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in proc.stdout and "tokens scored" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["--data", "/nonexistent/file.txt"], "no such file"),
    (["--ctx", "100000"], "--ctx 100000"),
    (["--score-from", "63"], "--score-from 63"),
    (["--kl-vs", str(FIXTURES / "v3")], "vocabulary 1024"),
])
def test_cli_bad_input_is_one_line(small_text, args, needle):
    base = {"--data": str(small_text), "--ctx": str(CTX)}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    out = CliRunner().invoke(main, ["eval", "--model", str(TRAINED), *sum(base.items(), ())])
    assert out.exit_code == 1
    assert needle in out.output and len(out.output.strip().splitlines()) == 1


def test_model_without_tokenizer_and_too_short_file(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    with pytest.raises(EvaluationError, match="fewer than one chunk"):
        evaluate(model=TRAINED, data=short, ctx=CTX)
    with pytest.raises(EvaluationError, match="no tokenizer"):
        evaluate(model=FIXTURES / "v3", data=short, ctx=CTX)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EvaluationError, match="empty"):
        evaluate(model=TRAINED, data=empty, ctx=CTX)
