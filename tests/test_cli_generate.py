"""`mlxseek generate | chat | bench`: once each as a real subprocess, bad input through CliRunner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlxseek
from mlxseek.cli import main
from mlxseek.generation.chat import ChatSession
from mlxseek.loading.tokenizer import apply_chat_template


def mlxseek_cmd() -> list[str]:
    script = Path(sys.executable).with_name("mlxseek")  # the installed entry point
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mlxseek.cli import main; main()"]


def run(*args, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(mlxseek_cmd() + list(args), input=stdin, capture_output=True, text=True, timeout=300,
                          env=env)


def test_generate_subprocess_prints_the_greedy_completion(tiny_dir, tiny):
    p = run("generate", "--model", str(tiny_dir), "--prompt", "Tell me a joke.", "--max-tokens", "8",
            "--system", "Be funny.")
    assert p.returncode == 0, p.stderr
    model, tok = tiny
    prompt = apply_chat_template(tok, [{"role": "system", "content": "Be funny."},
                                       {"role": "user", "content": "Tell me a joke."}])
    assert p.stdout == mlxseek.generate(model, tok, prompt, max_tokens=8) + "\n"
    assert "generation: 8 tokens" in p.stderr and "peak memory" in p.stderr


def test_chat_subprocess_through_stdin(tiny_dir, tiny):
    p = run("chat", "--model", str(tiny_dir), "--max-tokens", "5", stdin="Hello\nMore please\n/reset\nHello\n/exit\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert lines[2] == "[conversation reset]"
    model, tok = tiny
    first = "".join(r.text for r in ChatSession(model, tok, max_tokens=5).send("Hello"))
    assert lines[0] == lines[3] == first  # after /reset the same question gets the same first answer


def test_bench_json_subprocess(tiny_dir):
    p = run("bench", "--model", str(tiny_dir), "--prompt-tokens", "16", "--gen-tokens", "4", "--runs", "1",
            "--vs", "mlx-lm", "--bandwidth", "100", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["engine"] for r in rows] == ["mlxseek", "mlx-lm"]
    for r in rows:
        assert "error" not in r, r
        assert r["prompt_tokens"] == 16 and r["gen_tokens"] == 4 and r["bandwidth_gbps"] == 100
        assert r["achieved_gbps"] == pytest.approx(r["decode_tps"] * r["active_bytes_per_token"] / 1e9)
        assert r["pct_roofline"] == pytest.approx(100 * r["achieved_gbps"] / 100)
        assert r["peak_memory_gb"] > 0
    ours = mlxseek.backend.backend_policy().compute_dtype  # float32 on MLX's CPU backend, bf16 on a GPU
    assert rows[0]["activation_dtype"] == ours and rows[1]["activation_dtype"] == "bfloat16"
    assert rows[1]["decode_speedup"] == pytest.approx(rows[0]["decode_tps"] / rows[1]["decode_tps"])


def test_active_bytes_count_k_of_e_experts(tiny):
    from mlx.utils import tree_flatten

    from mlxseek.tools.bench import active_bytes_per_token

    model, _ = tiny
    cfg = model.config
    params = dict(tree_flatten(model.parameters()))
    experts = sum(v.nbytes for k, v in params.items() if ".switch_mlp." in k)
    embed = sum(v.nbytes for k, v in params.items() if k.startswith("model.embed_tokens."))
    everything = sum(v.nbytes for v in params.values())
    expected = everything - experts - embed + experts * cfg.num_experts_per_tok / cfg.n_routed_experts
    expected += embed / cfg.vocab_size
    assert active_bytes_per_token(model, cfg) == int(expected)
    one_more = cfg.replace(num_experts_per_tok=cfg.num_experts_per_tok + 1)
    delta = active_bytes_per_token(model, one_more) - active_bytes_per_token(model, cfg)
    assert delta == pytest.approx(experts / cfg.n_routed_experts, abs=1)  # one more expert of every stack


def one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("command", ["generate", "chat", "bench"])
def test_missing_model_dir(command, tmp_path):
    args = [command, "--model", str(tmp_path / "nope")] + (["--prompt", "hi"] if command == "generate" else [])
    assert "not a folder" in one_error_line(CliRunner().invoke(main, args))


def test_non_mlxseek_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    line = one_error_line(CliRunner().invoke(main, ["generate", "--model", str(tmp_path), "--prompt", "hi"]))
    assert "model_type 'llama'" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(CliRunner().invoke(main, ["generate", "--model", str(empty), "--prompt", "hi"]))
    assert "config.json" in line


def test_max_tokens_zero(tiny_dir):
    result = CliRunner().invoke(main, ["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-tokens", "0"])
    assert "--max-tokens" in one_error_line(result)


def test_prompt_longer_than_context(tiny_dir):
    result = CliRunner().invoke(main, ["generate", "--model", str(tiny_dir), "--prompt", "word " * 400])
    assert "max_position_embeddings" in one_error_line(result)


def test_bench_refuses_more_tokens_than_the_context(tiny_dir):
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_dir), "--prompt-tokens", "300"])
    assert "context" in one_error_line(result)

