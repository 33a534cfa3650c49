"""Routed experts paged from the store (`load(..., expert_memory_gb=X)`): bit-exact logits against the
fully resident model, the budget kept, hits and prefetch accounted; and the row reader under it."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_model import _writer

from mlxseek.checkpoint.slices import read_rows
from mlxseek.checkpoint.store import WeightStore
from mlxseek.errors import ConfigError, WeightMismatchError
from mlxseek.loading.loader import load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory) -> Path:
    """mlx layout (stacked experts), 4-bit g32, 3 MoE layers of 16 experts top-4."""
    w = _writer()
    cfg = dict(w.PRESETS["tiny"], num_hidden_layers=4, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
               topk_group=2, vocab_size=256)
    return w.write_random_checkpoint(tmp_path_factory.mktemp("paging") / "q", cfg, bits=4, group_size=32, seed=5,
                                     tokenizer=False)


def _budget_gb(path, fraction: float, **kw) -> float:
    probe = load_model(path, expert_memory_gb=0, **kw).pager
    return fraction * probe.total_bytes() / 1e9


def _params(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


CASES = {  # name -> (folder, load options)
    "mlx-4bit-cpu-layout": (None, {}),
    "mlx-4bit-checkpoint-layout": (None, {"cpu_layout": False}),
    "hf-bf16-per-expert": (FIXTURES / "v3", {}),
    "hf-fp8-per-expert": (FIXTURES / "v3_fp8", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quarter_budget_gives_bit_identical_logits(case, quantized_dir):
    folder, kw = CASES[case]
    folder = folder or quantized_dir
    full = load_model(folder, **kw)
    budget = _budget_gb(folder, 0.25, **kw)
    paged = load_model(folder, expert_memory_gb=budget, **kw)
    rng = np.random.default_rng(0)
    V = full.config.vocab_size
    c_full, c_paged = full.make_cache(), paged.make_cache()
    prompt = mx.array(rng.integers(3, V, (1, 40)))  # 40 x top-4 rows: the expert-sorted path
    a, b = full(prompt, cache=c_full), paged(prompt, cache=c_paged)
    assert mx.array_equal(a, b).item(), f"prefill max diff {mx.abs(a - b).max().item()}"
    tok = mx.argmax(a[:, -1:], axis=-1)
    for _ in range(6):  # decode: one token, the broadcast path
        a, b = full(tok, cache=c_full), paged(tok, cache=c_paged)
        assert mx.array_equal(a, b).item(), f"decode max diff {mx.abs(a - b).max().item()}"
        tok = mx.argmax(a[:, -1:], axis=-1)
    s = paged.pager.stats()
    assert s["misses"] > 0 and s["bytes_read"] > 0
    assert s["resident_bytes"] <= s["budget_bytes"] == int(budget * 1e9)
    assert s["resident_experts"] * s["expert_bytes"] == s["resident_bytes"]
    # The paged model's parameters are everything but the routed experts.
    experts = sum(v.nbytes for k, v in tree_flatten(full.parameters()) if ".switch_mlp." in k)
    assert _params(paged) == _params(full) - experts


def test_full_budget_serves_a_repeat_from_memory(quantized_dir):
    model = load_model(quantized_dir, expert_memory_gb=_budget_gb(quantized_dir, 1.0))
    x = mx.array(np.random.default_rng(1).integers(3, 256, (1, 24)))
    first = model(x)
    model.pager.reset_stats()
    second = model(x)
    s = model.pager.stats()
    assert mx.array_equal(first, second).item()
    assert s["hits"] == s["lookups"] > 0 and s["bytes_read"] == 0 and s["hit_rate"] == 1.0


def test_prefetch_serves_guessed_experts_and_accounts_every_lookup(quantized_dir):
    """Budget 0: nothing stays resident, so every expert is read on demand or served by a prefetch.
    Repeating a token, the first MoE layer (guessed from the previous token's choice) is all prefetched;
    later layers are guessed by their router on the previous layer's input."""
    model = load_model(quantized_dir, expert_memory_gb=0)
    x = mx.array([[7]])
    mx.eval(model(x))
    model.pager.reset_stats()
    mx.eval(model(x))
    s = model.pager.stats()
    assert s["resident_experts"] == 0 and s["hits"] == 0
    assert s["misses"] + s["prefetch_used"] == s["lookups"] == 3 * 4  # 3 MoE layers x top-4
    assert s["prefetch_used"] >= 4 and s["prefetched"] >= s["prefetch_used"]


def test_bad_budget_and_combination_are_refused_with_the_option_named(quantized_dir):
    with pytest.raises(ConfigError, match="expert_memory_gb must be a number >= 0"):
        load_model(quantized_dir, expert_memory_gb=-1)

    class Group:
        rank, size = (lambda self: 0), (lambda self: 2)

    with pytest.raises(ConfigError, match="expert_memory_gb and a distributed group"):
        load_model(quantized_dir, expert_memory_gb=1, group=Group())


def test_a_stack_that_disagrees_with_config_is_refused_at_load(quantized_dir, tmp_path):
    import json
    import shutil

    bad = Path(shutil.copytree(quantized_dir, tmp_path / "bad"))
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "n_routed_experts": 8, "n_group": 2, "topk_group": 1}))
    with pytest.raises(WeightMismatchError, match="holds 16 experts but config.json n_routed_experts is 8"):
        load_model(bad, expert_memory_gb=1)


@pytest.mark.parametrize("key", ["model.layers.1.mlp.switch_mlp.gate_proj.weight",
                                 "model.layers.1.mlp.switch_mlp.down_proj.scales"])
def test_read_rows_matches_the_lazy_slice_and_reads_only_those_rows(quantized_dir, key):
    store = WeightStore(quantized_dir)
    want = store.get(key)[5:9]
    mx.eval(want)
    got = read_rows(store, key, 5, 9)
    assert got.dtype == want.dtype and mx.array_equal(got, want).item()


def test_read_rows_of_bf16_and_out_of_range():
    store = WeightStore(FIXTURES / "v3")
    key = "model.layers.1.mlp.experts.3.up_proj.weight"
    assert store.dtype(key) == "BF16"
    assert mx.array_equal(read_rows(store, key, 0, 4), store.get(key)[:4]).item()
    with pytest.raises(Exception, match="outside its shape"):
        read_rows(store, key, 0, 10_000)
