"""The prefix cache seen through the HTTP API (trained tiny V3, real engine): a request sharing a
1,000-token prefix reports cached_tokens >= 960 in usage and answers as a cold run does; the disk tier
serves a prefix after the server restarts."""

import openai
import pytest
from serve_helpers import TRAINED, deadline, running_server

import mlxseek

MODEL_ID = "trained_v3"
TIMEOUT = 60


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return mlxseek.load(TRAINED)


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(600):
        yield


def shared_prefix(tok, n: int) -> list[int]:
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))
    ids = tok.encode(text)
    assert len(ids) >= n
    return ids[:n]


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_shared_1000_token_prefix_is_served_from_the_cache(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prefix = shared_prefix(tok, 1000)
    first, second = prefix + tok.encode("# one", add_special_tokens=False), prefix + tok.encode(
        "# two", add_special_tokens=False)
    cold = mlxseek.generate(model, tok, second, max_tokens=8)
    with running_server(model, tok, model_id=MODEL_ID, chat_style="v3") as (srv, _):
        c = client(srv)
        a = c.completions.create(model=MODEL_ID, prompt=first, max_tokens=8, temperature=0)
        b = c.completions.create(model=MODEL_ID, prompt=second, max_tokens=8, temperature=0)
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    assert b.usage.prompt_tokens_details.cached_tokens >= 960
    assert b.usage.prompt_tokens == len(second)
    assert b.choices[0].text == cold


def test_disk_tier_serves_a_prefix_after_a_restart(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    prompt = shared_prefix(tok, 300)
    cold = mlxseek.generate(model, tok, prompt, max_tokens=8)
    for run in range(2):
        with running_server(model, tok, model_id=MODEL_ID, chat_style="v3",
                            prompt_cache_dir=str(tmp_path)) as (srv, _):
            r = client(srv).completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0)
        assert r.choices[0].text == cold
        cached = r.usage.prompt_tokens_details.cached_tokens
        assert (cached == 0) if run == 0 else (cached >= 256)
