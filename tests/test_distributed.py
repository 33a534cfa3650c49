"""Pipeline and expert parallelism over MLX's ring backend: 2 local ranks on 127.0.0.1 under the
deadline-bounded launcher, against the single-process run of the same float32 model.

The rank worker is benchmarks/distributed.py --worker (one JSON line per mode on stdout).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten
from tiny_model import _writer

from mlxseek.checkpoint.keymap import build_plan
from mlxseek.checkpoint.store import WeightStore
from mlxseek.cli import main
from mlxseek.config import ModelConfig
from mlxseek.errors import ConfigError
from mlxseek.generation.steps import generate_step
from mlxseek.loading.loader import load_model
from mlxseek.parallel.distributed import Shard, plan_shard, split_experts, split_layers
from mlxseek.parallel.launcher import free_ports, launch
from mlxseek.parallel.watchdog import EXIT_CODE, HEARTBEAT_ENV

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--worker"]
PROMPT, GEN = 8, 8
DEADLINE = 120  # whole launches; each finishes in ~15 s here


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """float32, 6 layers (1 dense), 16 experts top-4: routed experts are most of the bytes, as in V3."""
    w = _writer()
    cfg = dict(w.PRESETS["tiny"], num_hidden_layers=6, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
               topk_group=2, vocab_size=256)
    return w.write_random_checkpoint(tmp_path_factory.mktemp("dist") / "m", cfg, bits=0, dtype="float32", seed=3,
                                     tokenizer=False)


@pytest.fixture(scope="module")
def single(model_dir) -> dict:
    model = load_model(model_dir)
    prompt = mx.array(np.random.default_rng(0).integers(3, model.config.vocab_size, PROMPT), dtype=mx.uint32)
    tokens = [t for t, _ in generate_step(prompt, model, max_tokens=GEN)]
    return {"tokens": tokens, "param_bytes": sum(v.nbytes for _, v in tree_flatten(model.parameters()))}


def _rows(result) -> dict:
    rows = [json.loads(x) for r in result.ranks for x in r.stdout.splitlines() if x.startswith("{")]
    return {(r["mode"], r["rank"]): r for r in rows}


def _stored_bytes(model_dir: Path) -> dict[str, int]:
    store = WeightStore(model_dir)
    return {k: int(np.prod(store.shape(k))) * 4 for k in store.keys()}  # float32 checkpoint


def test_two_ranks_give_the_single_process_tokens_with_half_the_weights(model_dir, single):
    # --prefill-step 3: the 8-token prompt goes in 3 chunks, two of which evaluate only the caches.
    cmd = WORKER + ["--model", str(model_dir), "--modes", "pipeline", "expert", "--prompt-tokens", str(PROMPT),
                    "--gen-tokens", str(GEN), "--prefill-step", "3"]
    res = launch(cmd, 2, deadline=DEADLINE)
    assert res.returncode == 0, res.summary() + "".join(r.stderr[-1500:] for r in res.ranks)
    rows = _rows(res)
    assert sorted(rows) == [("expert", 0), ("expert", 1), ("pipeline", 0), ("pipeline", 1)]
    for row in rows.values():
        assert row["tokens"] == single["tokens"], row["mode"]

    sizes = _stored_bytes(model_dir)
    total = sum(sizes.values())
    assert single["param_bytes"] == total  # float32 in, float32 resident: bytes compare one to one
    replicated = sum(n for k, n in sizes.items() if not k.startswith("model.layers."))  # embed, norm, head
    layer = [sum(n for k, n in sizes.items() if k.startswith(f"model.layers.{i}.")) for i in range(6)]
    experts = sum(n for k, n in sizes.items() if ".switch_mlp." in k)

    pipe = [rows["pipeline", r]["param_bytes"] for r in (0, 1)]
    # Each layer lives on exactly one rank; the embedding, final norm and head on both.
    assert sum(pipe) == total + replicated
    # Cut at the layer boundary nearest half the layer bytes: off by at most half the largest layer.
    for b in pipe:
        assert abs(b - replicated - (total - replicated) / 2) <= max(layer) / 2
    # Expert parallel: 16 experts split 8 + 8 exactly; everything else replicated.
    for r in (0, 1):
        assert rows["expert", r]["param_bytes"] == total - experts // 2
    assert max(pipe + [rows["expert", r]["param_bytes"] for r in (0, 1)]) < 0.62 * total
    # Only the rank's own bytes were ever materialised: the load peaks at what stays resident (+1%).
    for row in rows.values():
        assert row["load_peak_bytes"] <= 1.01 * row["param_bytes"], row


def test_a_killed_rank_makes_the_other_exit_with_a_named_error(model_dir):
    cmd = WORKER + ["--model", str(model_dir), "--modes", "pipeline", "--prompt-tokens", str(PROMPT),
                    "--gen-tokens", "200", "--die-rank", "1", "--die-after", "2"]
    t0 = time.monotonic()
    res = launch(cmd, 2, deadline=DEADLINE, grace=30)
    assert time.monotonic() - t0 < DEADLINE
    assert res.failed_rank == 1 and res.returncode == 128 + 9, res.summary() + res.ranks[0].stderr[-800:]
    assert "rank 1 failed first (killed by signal SIGKILL)" in res.summary()
    survivor = res.ranks[0]
    assert survivor.returncode == EXIT_CODE and not survivor.killed, survivor.stderr[-2000:]
    assert "mlxseek distributed: rank 0 of 2:" in survivor.stderr
    assert "rank 1 (pid" in survivor.stderr  # the dead peer is named


@pytest.mark.parametrize("heartbeats", [True, False], ids=["mlxseek-launcher", "any-launcher"])
def test_a_rank_that_never_starts_ends_the_wait_at_the_connect_deadline(model_dir, tmp_path, heartbeats):
    """Rank 0 of 2 started alone. With our launcher's heartbeat folder the wait happens before MLX's
    init and names the missing rank; without one (mlx.launch, mpirun) init itself blocks, holding the
    GIL, and the helper process ends it."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(2)]))
    (tmp_path / "beats").mkdir()
    env = {**os.environ, "MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile)}
    env.pop(HEARTBEAT_ENV, None)
    if heartbeats:
        env[HEARTBEAT_ENV] = str(tmp_path / "beats")
    t0 = time.monotonic()
    p = subprocess.run(WORKER + ["--model", str(model_dir), "--connect-timeout", "3"], env=env, capture_output=True,
                       text=True, timeout=DEADLINE)
    assert time.monotonic() - t0 < 30
    assert p.returncode == (EXIT_CODE if heartbeats else -9), p.stderr
    assert "mlxseek distributed: rank 0 of 2: connecting to the other ranks" in p.stderr
    assert "did not finish within 3 s" in p.stderr
    assert ("ranks that never started: [1]" in p.stderr) == heartbeats


def test_cli_distributed_bench_runs_two_local_ranks(model_dir):
    script = Path(sys.executable).with_name("mlxseek")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from mlxseek.cli import main; main()"]
    args = ["bench", "--model", str(model_dir), "--distributed", "expert", "--prompt-tokens", "4", "--gen-tokens", "2",
            "--runs", "1", "--json", "--bandwidth", "10"]
    p = subprocess.run(cmd + args, capture_output=True, text=True, timeout=DEADLINE)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert len(rows) == 1 and rows[0]["engine"] == "mlxseek" and "error" not in rows[0]  # rank 0 prints, once


def test_launch_command_refuses_zero_ranks():
    r = CliRunner().invoke(main, ["launch", "-n", "0", "--", "info", "x"])
    assert r.exit_code == 2 and "-n" in r.output


def test_layer_split_balances_bytes_and_expert_split_is_contiguous():
    assert split_layers([1, 4, 4, 4, 4], 2) == [(0, 3), (3, 5)]  # 9 vs 8, not 5 vs 12 by layer count
    assert split_layers([5, 5, 5], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_layers([100, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]  # every rank gets a layer
    assert split_experts(10, 3) == [(0, 4), (4, 7), (7, 10)]


def test_expert_shard_of_an_hf_checkpoint_holds_its_experts_only():
    """HF layout: per-expert tensors, stacked for this rank only (no group needed to load a share)."""

    class Group:  # what the loader asks of a group: its rank and size
        rank, size = (lambda self: 1), (lambda self: 2)

    fixture = ROOT / "tests" / "fixtures" / "v3"
    full = load_model(fixture)
    part = load_model(fixture, group=Group(), parallel="expert")
    E = full.config.n_routed_experts
    for proj in ("gate_proj", "up_proj", "down_proj"):
        a = getattr(full.model.layers[1].mlp.switch_mlp, proj).weight
        b = getattr(part.model.layers[1].mlp.switch_mlp, proj).weight
        assert b.shape[0] == E // 2 and mx.array_equal(a[E // 2:], b).item()
    assert part.mtp.block.mlp.switch_mlp.gate_proj.weight.shape[0] == E // 2  # the MTP block's MoE too


def test_shard_plans_refuse_impossible_splits_with_the_option_named():
    cfg = ModelConfig.from_file(ROOT / "tests" / "fixtures" / "v3")
    store = WeightStore(ROOT / "tests" / "fixtures" / "v3")
    plan = build_plan(store.keys(), cfg)
    with pytest.raises(ConfigError, match="--distributed pipeline: 3 ranks but the model has 2 layers"):
        plan_shard(cfg, store, plan, rank=0, size=3, parallel="pipeline")
    with pytest.raises(ConfigError, match="n_routed_experts"):
        plan_shard(cfg, store, plan, rank=0, size=32, parallel="expert")
    with pytest.raises(ConfigError, match="parallel='tensor'"):
        plan_shard(cfg, store, plan, rank=0, size=2, parallel="tensor")
    assert plan_shard(cfg, store, plan, rank=1, size=2, parallel="expert") == Shard("expert", 1, 2, (0, 2), (8, 16))


def test_watchdog_deadline_ends_a_stalled_step_with_a_named_error():
    """`Watchdog.guard`: one item of a token stream may take at most `seconds`; the watchdog module is
    loaded on its own (no MLX) so the subprocess starts fast."""
    code = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("wd", {str(ROOT / "src" / "mlxseek" / "parallel" / "watchdog.py")!r})
wd = importlib.util.module_from_spec(spec); spec.loader.exec_module(wd)
dog = wd.Watchdog(1, 2, interval=0.05).start()
def tokens():
    yield 1
    time.sleep(30)  # a peer that stopped answering
    yield 2
for t in dog.guard(tokens(), "decoding a token", 0.5):
    time.sleep(1.0)  # the consumer's own time between tokens does not count
    print(t, flush=True)
"""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 10
    assert p.returncode == EXIT_CODE and p.stdout == "1\n"
    assert p.stderr.strip() == "mlxseek distributed: rank 1 of 2: decoding a token did not finish within 0.5 s"
