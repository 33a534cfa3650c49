"""stream_generate / generate / ChatSession on a tiny random 4-bit V3 with the real DeepSeek tokenizer."""

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import make_sampler

import mlxseek
from mlxseek.errors import GenerationError
from mlxseek.generation.chat import ChatSession
from mlxseek.generation.steps import make_prompt_cache

N = 12


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    _, tok = tiny
    return tok.encode("<｜begin▁of▁sentence｜><｜User｜>Write a haiku about memory bandwidth.<｜Assistant｜>")


def argmax_loop(model, ids: list[int], n: int) -> list[int]:
    """Reference: re-run the whole sequence without a cache for every token (LM head on the last position:
    a 4-bit 129280-row head over every position is slow on MLX's CPU backend)."""
    out = []
    for _ in range(n):
        h = model.hidden_states(mx.array(ids + out)[None])
        out.append(int(mx.argmax(model.lm_head(h[:, -1]))))
    return out


def force(sequence: list[int], n_prompt: int):
    """A logits processor that makes the model emit `sequence`, whatever its weights say."""

    def proc(history, logits):
        i = history.size - n_prompt
        if i >= len(sequence):
            return logits
        return mx.where(mx.arange(logits.shape[-1]) == sequence[i], 0.0, -1e9)[None].astype(logits.dtype)

    return proc


def test_greedy_stream_equals_generate_equals_argmax_loop(tiny, prompt_ids):
    model, tok = tiny
    records = list(mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=N))
    tokens = [r.token for r in records]
    assert tokens == argmax_loop(model, prompt_ids, N)
    text = mlxseek.generate(model, tok, prompt_ids, max_tokens=N)
    assert text == "".join(r.text for r in records) == tok.decode(tokens)
    assert [r.generation_tokens for r in records] == list(range(1, N + 1))
    assert [r.finish_reason for r in records] == [None] * (N - 1) + ["length"]
    assert all(r.prompt_tokens == len(prompt_ids) for r in records)
    last = records[-1]
    assert last.prompt_tps > 0 and last.generation_tps > 0 and last.peak_memory > 0
    assert last.logprobs.shape == (len(tok),)
    assert abs(float(mx.logsumexp(last.logprobs))) < 1e-4


def test_string_prompt_equals_its_token_ids(tiny, prompt_ids):
    model, tok = tiny
    text = tok.decode(prompt_ids)
    assert mlxseek.generate(model, tok, text, max_tokens=4) == mlxseek.generate(model, tok, prompt_ids, max_tokens=4)


def test_mlx_lm_stream_generate_drives_our_model(tiny, prompt_ids):
    from mlx_lm.generate import stream_generate as mlx_lm_stream

    model, tok = tiny
    theirs = [r.token for r in mlx_lm_stream(model, tok, mx.array(prompt_ids), max_tokens=N)]
    ours = [r.token for r in mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=N)]
    assert theirs == ours


def test_chunked_prefill_gives_the_same_tokens(tiny, prompt_ids):
    model, tok = tiny
    whole = [r.token for r in mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=6)]
    seen = []
    chunked = mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=6, prefill_step_size=4,
                                      progress=lambda done, total: seen.append(done))
    assert [r.token for r in chunked] == whole
    assert seen[0] == 4 and seen[-1] == len(prompt_ids)


def test_prefill_chunks_shrink_as_the_context_grows(tiny, prompt_ids, monkeypatch):
    """With a small score budget, chunks get shorter as the cache fills (heads * chunk * context bounded),
    and the tokens are those of one whole-prompt prefill."""
    from mlxseek.backend import policy_of
    from mlxseek.generation import prefill
    model, tok = tiny
    prompt_ids = prompt_ids * 4  # 44 tokens
    whole = [r.token for r in mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=6)]
    heads = model.config.num_attention_heads
    monkeypatch.setattr(prefill, "MIN_PREFILL_STEP", 2)
    budget = 4 * heads * 8 * 16  # 8 tokens at 16 of context
    monkeypatch.setattr(model, "backend", policy_of(model).replace(prefill_scores_bytes=budget))
    seen = []
    chunked = mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=6, prefill_step_size=8,
                                      progress=lambda done, total: seen.append(done))
    assert [r.token for r in chunked] == whole
    steps = [b - a for a, b in zip([0] + seen, seen)][:-1]  # the last: the final chunk, prefilled with decode
    assert steps[0] == 8 and steps[-1] < steps[0] and steps == sorted(steps, reverse=True)
    for a, n in zip([0] + seen, steps):
        assert n == 2 or 4 * heads * n * (a + 8) <= budget


def test_eos_stops_and_is_not_in_the_text(tiny, prompt_ids):
    model, tok = tiny
    word = tok.encode("hello", add_special_tokens=False)
    forced = force(word + [tok.eos_token_id], len(prompt_ids))
    records = list(mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=N, logits_processors=[forced]))
    assert records[-1].finish_reason == "stop" and records[-1].token == tok.eos_token_id
    assert "".join(r.text for r in records) == "hello"
    assert records[-1].generation_tokens == len(word) + 1


def test_stop_string_truncates(tiny, prompt_ids):
    model, tok = tiny
    ids = tok.encode("one two three four five", add_special_tokens=False)
    forced = force(ids, len(prompt_ids))
    records = list(mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=N, logits_processors=[forced],
                                           stop=["hree f"]))
    assert "".join(r.text for r in records) == "one two t"
    assert records[-1].finish_reason == "stop"


def test_reasoning_and_content_stream_separately(tiny, prompt_ids):
    model, tok = tiny
    ids = tok.encode("<think>\nLet me think.\n</think>\n\nAnswer.", add_special_tokens=False)
    forced = force(ids, len(prompt_ids))
    records = list(mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=len(ids), logits_processors=[forced]))
    assert "".join(r.reasoning for r in records) == "Let me think.\n"
    assert "".join(r.content for r in records) == "Answer."


def test_seeded_sampling_is_reproducible(tiny, prompt_ids):
    model, tok = tiny
    sampler = make_sampler(temp=1.0)

    def run(seed):
        return [r.token for r in mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=8, sampler=sampler, seed=seed)]

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert first != argmax_loop(model, prompt_ids, 8)


def test_prompt_cache_continues_the_context(tiny, prompt_ids):
    model, tok = tiny
    cache = make_prompt_cache(model)
    first = [r.token for r in mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=4, prompt_cache=cache)]
    more = tok.encode(" and then", add_special_tokens=False)
    # The decode loop never feeds the last token of a "length" stop: the next prompt starts with it.
    second = [r.token for r in mlxseek.stream_generate(model, tok, first[-1:] + more, max_tokens=4, prompt_cache=cache)]
    assert second == argmax_loop(model, prompt_ids + first + more, 4)


def test_chat_second_turn_prefills_only_new_tokens(tiny):
    model, tok = tiny
    chat = ChatSession(model, tok, system="Be brief.", max_tokens=5)
    list(chat.send("Hi!"))
    history = chat.tokens
    in_cache = chat.cache[0].offset
    records = list(chat.send("And in Chinese?"))
    fed = records[0].prompt_tokens
    user_turn = tok.encode("<｜User｜>And in Chinese?<｜Assistant｜>", add_special_tokens=False)
    assert fed == (len(history) - in_cache) + len(user_turn)  # unfed reply tail + EOS, then the new turn
    assert chat.tokens[: len(history)] == history
    assert chat.tokens[len(history) : len(history) + len(user_turn)] == user_turn
    full = tok.encode(mlxseek.loading.tokenizer.apply_chat_template(tok, chat.messages[:-1]), add_special_tokens=False)
    assert fed < len(full)
    reply = [r.token for r in records]
    assert reply == argmax_loop(model, history + user_turn, len(reply))
    assert chat.messages[-1] == {"role": "assistant", "content": "".join(r.text for r in records)}


def test_chat_reset_forgets(tiny):
    model, tok = tiny
    chat = ChatSession(model, tok, max_tokens=4)
    fresh = "".join(r.text for r in chat.send("Hello"))
    list(chat.send("Again"))
    chat.reset()
    assert chat.tokens == [] and chat.cache[0].offset == 0
    assert "".join(r.text for r in chat.send("Hello")) == fresh


def test_bad_arguments_raise_generation_error(tiny, prompt_ids):
    model, tok = tiny
    with pytest.raises(GenerationError, match="empty"):
        list(mlxseek.stream_generate(model, tok, [], max_tokens=4))
    with pytest.raises(GenerationError, match="max_tokens"):
        list(mlxseek.stream_generate(model, tok, prompt_ids, max_tokens=0))
    ctx = model.config.max_position_embeddings
    with pytest.raises(GenerationError, match="max_position_embeddings"):
        list(mlxseek.stream_generate(model, tok, [5] * ctx, max_tokens=4))
    with pytest.raises(GenerationError, match="no tokenizer"):
        list(mlxseek.stream_generate(model, None, "text", max_tokens=4))


def test_generation_is_capped_at_the_context(tiny):
    model, tok = tiny
    ctx = model.config.max_position_embeddings
    records = list(mlxseek.stream_generate(model, tok, [5] * (ctx - 3), max_tokens=50))
    assert len(records) == 3 and records[-1].finish_reason == "length"
