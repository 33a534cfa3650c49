"""The official openai SDK against a live `mlxseek serve` on the trained tiny V3 checkpoint: replies equal
mlxseek.generate's greedy output token for token, usage counts are right, /v1/models lists the model."""

import openai
import pytest
from serve_helpers import deadline, running_server

import mlxseek

MODEL_ID = "trained_v3"
PROMPT = "def parse_args(argv):\n    "
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(trained):
    model, tok = trained
    with deadline(600), running_server(model, tok, model_id=MODEL_ID, chat_style="v3") as (srv, _engine):
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def reference(trained, prompt, **kw):
    """Greedy tokens and text from the library itself."""
    model, tok = trained
    records = list(mlxseek.stream_generate(model, tok, prompt, **kw))
    return records, "".join(r.text for r in records)


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_completion_equals_generate_token_for_token(client, trained):
    records, text = reference(trained, PROMPT, max_tokens=24)
    r = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0)
    assert r.choices[0].text == text
    tok = trained[1]
    assert r.choices[0].logprobs.tokens == [tok.decode([x.token]) for x in records]
    assert r.choices[0].finish_reason == records[-1].finish_reason
    assert r.usage.prompt_tokens == len(tok.encode(PROMPT))
    assert r.usage.completion_tokens == records[-1].generation_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_completion_equals_generate(client, trained):
    records, text = reference(trained, PROMPT, max_tokens=24)
    stream = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(pieces) == text
    assert finish == records[-1].finish_reason
    assert usage.completion_tokens == records[-1].generation_tokens


def test_token_id_prompt_equals_string_prompt(client, trained):
    ids = trained[1].encode(PROMPT)
    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0)
    by_text = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_stop_string_cuts_the_reply_like_generate(client, trained):
    _, full = reference(trained, PROMPT, max_tokens=24)
    stop = full[3:6]
    _, text = reference(trained, PROMPT, max_tokens=24, stop=[stop])
    r = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == text
    assert stop not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(client):
    r = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(client):
    kw = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def chat_prompt(tok, messages):
    from mlxseek.formats import render_chat

    return tok.encode(render_chat(messages, style="v3"), add_special_tokens=False)


MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "import os\n"}]


def test_chat_equals_generate_on_the_v3_rendering(client, trained):
    tok = trained[1]
    ids = chat_prompt(tok, MESSAGES)
    records, text = reference(trained, ids, max_tokens=20)
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=20, temperature=0,
                                       logprobs=True, top_logprobs=2)
    msg = r.choices[0].message
    assert msg.content == text
    assert [t.token for t in r.choices[0].logprobs.content] == [tok.decode([x.token]) for x in records]
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == records[-1].generation_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_streamed_chat_equals_generate(client, trained):
    ids = chat_prompt(trained[1], MESSAGES)
    records, text = reference(trained, ids, max_tokens=20)
    stream = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_completion_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    content, roles, finish, usage = [], [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            roles += [c.delta.role] if c.delta.role else []
            content.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(content) == text
    assert roles == ["assistant"]
    assert finish == records[-1].finish_reason
    assert usage.prompt_tokens == len(ids) and usage.completion_tokens == records[-1].generation_tokens


def test_repeated_prompt_reports_cached_tokens(client):
    long_messages = [{"role": "user", "content": "class Config:\n" + "    x = 1\n" * 60}]
    first = client.chat.completions.create(model=MODEL_ID, messages=long_messages, max_tokens=4, temperature=0)
    second = client.chat.completions.create(model=MODEL_ID, messages=long_messages, max_tokens=4, temperature=0)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens_details.cached_tokens > 0


def scrape(url: str) -> dict:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_health_and_metrics_count_a_request(server, client):
    import httpx

    health = httpx.get(server.url + "/health", timeout=TIMEOUT).json()
    assert {k: health[k] for k in ("status", "model", "queue_depth")} == {"status": "ok", "model": MODEL_ID,
                                                                          "queue_depth": 0}
    assert set(health["cache"]) == {"cut", "batch", "quantize", "kinds"}  # the cache protocol's answers
    before = scrape(server.url)
    r = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=5, temperature=0)
    r2 = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=5, temperature=0)
    after = scrape(server.url)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("mlxseek_requests_total", endpoint="/v1/completions", status="200") == 2
    assert grew("mlxseek_tokens_total", kind="generated") == r.usage.completion_tokens + r2.usage.completion_tokens
    assert grew("mlxseek_tokens_total", kind="prompt") == 2 * r.usage.prompt_tokens
    assert grew("mlxseek_time_to_first_token_seconds_count", endpoint="completions") == 2
    hit = r2.usage.prompt_tokens_details.cached_tokens > 0
    assert grew("mlxseek_prefix_cache_requests_total", outcome="hit") == hit
    assert after[("mlxseek_queue_depth", ())] == 0
    assert any(name.startswith("mlxseek_engine_") for name, _ in after)  # engine.stats() exported
