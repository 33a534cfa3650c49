"""`mlxseek serve` as a local DeepSeek API, through the official openai SDK with DeepSeek's base URLs (no
`/v1`, and `/beta`): model names selecting thinking, chat prefix completion, FIM, DeepSeek's cache-hit
usage fields. Replies equal mlxseek's own greedy generation on the same rendered text.

The model is the tiny random V3 with DeepSeek's real tokenizer (tests/tiny_model.py): the trained fixture's
small tokenizer has no FIM tokens. The chat format is v3.2, which has a thinking toggle.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from serve_helpers import deadline, running_server

import mlxseek
from mlxseek.formats import ReplyParser, render_chat, render_prefix_completion
from mlxseek.serve.fim import fim_text
from mlxseek.errors import ServeError
from mlxseek.serve.model_names import DEEPSEEK_NAMES, model_names, parse_alias

STYLE = "v3.2"
NAMES = dict(DEEPSEEK_NAMES, **{"my-thinker": True})
TIMEOUT = 60
# long enough to fill two 32-token prefix-cache blocks, short enough for the tiny model's 256-token context
DSH = Path(sys.executable).with_name("dsh")  # deepseek-harness-cli's command, from the test extra
SYSTEM = "You are a careful assistant for a small team of engineers. " * 6


@pytest.fixture(scope="module")
def server(tiny):
    model, tok = tiny
    with deadline(600), running_server(model, tok, model_id="tiny", chat_style=STYLE,
                                       model_names=NAMES) as (srv, engine):
        yield srv, engine


def sdk(server, suffix: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].url + suffix, api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def root(server):
    return sdk(server, "")


@pytest.fixture(scope="module")
def beta(server):
    return sdk(server, "/beta")


def greedy(tiny, text: str, max_tokens: int) -> str:
    model, tok = tiny
    return "".join(r.text for r in mlxseek.stream_generate(model, tok, tok.encode(text, add_special_tokens=False),
                                                           max_tokens=max_tokens))


def parsed(text: str, *, thinking: bool, continuation: bool = False):
    p = ReplyParser(STYLE, thinking=thinking, continuation=continuation)
    p.feed(text)
    p.finish()
    return p.reply


def test_model_names_and_aliases():
    assert parse_alias("r=thinking") == ("r", True) and parse_alias(" c = chat ") == ("c", False)
    assert parse_alias("d=default") == ("d", None)
    names = model_names(["folder", "other"], aliases=["deepseek-chat=thinking", "x=chat"])
    assert list(names) == ["folder", "other", *DEEPSEEK_NAMES, "x"]
    assert names["deepseek-chat"] is True and names["deepseek-reasoner"] is True and names["x"] is False
    assert list(model_names(["folder"], deepseek=False)) == ["folder"]
    for bad in ("noequals", "=thinking", "r=fast"):
        with pytest.raises(ServeError, match="--model-alias"):
            parse_alias(bad)


def test_a_bad_alias_stops_the_server_before_loading():
    from mlxseek.serve import serve

    with pytest.raises(ServeError, match="--model-alias 'fast'"):
        serve(model_path="/no/such/folder", model_aliases=["fast"])


def test_a_name_selects_thinking_only_where_the_format_has_a_toggle():
    from mlxseek.serve import Limits
    from mlxseek.serve.state import ServedModel

    for style, want in (("v3", None), ("r1", None), ("v3.1", True), ("v3.2", True), ("v4", True), (None, None)):
        served = ServedModel(model=None, tokenizer=None, engine=None, model_id="m", style=style, limits=Limits(),
                             metrics=None, names=dict(DEEPSEEK_NAMES))
        assert served.thinking_for("deepseek-reasoner") is want
        assert served.thinking_for("m") is None and list(served.names)[0] == "m"


def test_models_lists_every_name_at_each_base_url(root, beta):
    want = ["tiny", *NAMES]
    assert [m.id for m in root.models.list()] == want
    assert [m.id for m in beta.models.list()] == want
    assert root.models.retrieve("deepseek-reasoner").id == "deepseek-reasoner"
    with pytest.raises(openai.NotFoundError):
        root.models.retrieve("gpt-4o")


def test_chat_without_v1_and_under_beta_equals_generate(tiny, root, beta):
    msgs = [{"role": "user", "content": "Name a prime number."}]
    want = parsed(greedy(tiny, render_chat(msgs, style=STYLE, thinking=False), 12), thinking=False)
    for client in (root, beta):
        r = client.chat.completions.create(model="deepseek-chat", messages=msgs, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == want.content
        assert r.usage.completion_tokens == 12 or r.choices[0].finish_reason == "stop"


def test_streamed_chat_equals_the_whole_reply(root):
    msgs = [{"role": "user", "content": "Count to three."}]
    whole = root.chat.completions.create(model="deepseek-chat", messages=msgs, max_tokens=10, temperature=0)
    stream = root.chat.completions.create(model="deepseek-chat", messages=msgs, max_tokens=10, temperature=0,
                                          stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        pieces += [c.delta.content or "" for c in chunk.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    extra = usage.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == usage.prompt_tokens
    assert extra["prompt_cache_hit_tokens"] == usage.prompt_tokens_details.cached_tokens


def reply(client, model: str, **kw) -> tuple:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Why?"}], max_tokens=8,
                                       temperature=0, **kw)
    m = r.choices[0].message
    return m.model_extra.get("reasoning_content") or "", m.content or ""


def test_model_names_select_thinking_and_the_request_switch_wins(tiny, root):
    msgs = [{"role": "user", "content": "Why?"}]
    want = {}
    for thinking in (True, False):
        r = parsed(greedy(tiny, render_chat(msgs, style=STYLE, thinking=thinking), 8), thinking=thinking)
        want[thinking] = (r.reasoning, r.content)
    assert want[True][0] and want[True] != want[False]  # thinking on: the reply opens inside reasoning
    assert reply(root, "deepseek-reasoner") == want[True]
    assert reply(root, "my-thinker") == want[True]
    assert reply(root, "deepseek-chat") == want[False]
    assert reply(root, "tiny") == want[False]  # the format's default
    assert reply(root, "deepseek-reasoner", extra_body={"thinking": {"type": "disabled"}}) == want[False]
    assert reply(root, "deepseek-chat", extra_body={"thinking": {"type": "enabled"}}) == want[True]


def test_prefix_completion_continues_the_assistant_message(tiny, beta):
    msgs = [{"role": "user", "content": "Write a sort in Python."},
            {"role": "assistant", "content": "```python\n", "prefix": True}]
    text = render_prefix_completion(msgs, style=STYLE, thinking=False).text
    assert text.endswith("</think>```python\n")  # rendered open: no end-of-sentence after the prefix
    want = parsed(greedy(tiny, text, 12), thinking=False, continuation=True)
    r = beta.chat.completions.create(model="deepseek-chat", messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want.content
    assert r.usage.prompt_tokens == len(tiny[1].encode(text, add_special_tokens=False))
    stream = beta.chat.completions.create(model="deepseek-chat", messages=msgs, max_tokens=12, temperature=0,
                                          stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.content


def test_prefix_completion_in_thinking_mode_continues_the_reasoning(tiny, beta):
    msgs = [{"role": "user", "content": "Is 91 prime?"},
            {"role": "assistant", "content": "", "reasoning_content": "Let me divide 91 by 7", "prefix": True}]
    text = render_prefix_completion(msgs, style=STYLE, thinking=True).text
    assert text.endswith("<think>Let me divide 91 by 7")
    want = parsed(greedy(tiny, text, 12), thinking=True, continuation=True)
    r = beta.chat.completions.create(model="deepseek-reasoner", messages=msgs, max_tokens=12, temperature=0)
    message = r.choices[0].message
    assert message.model_extra.get("reasoning_content") == (want.reasoning or None)
    assert (message.content or "") == want.content
    assert want.reasoning  # the reply started inside the reasoning block


def test_a_prefix_message_that_is_not_last_is_a_400_naming_it(server):
    body = {"model": "deepseek-chat", "max_tokens": 4,
            "messages": [{"role": "assistant", "content": "x", "prefix": True}, {"role": "user", "content": "hi"}]}
    r = httpx.post(server[0].url + "/beta/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages.0.prefix"


PRE, SUF = "def area(r):\n    ", "\n    return a\n"


def test_fim_fills_the_middle_like_generate(tiny, root, beta):
    text = fim_text(PRE, SUF)
    n_prompt = len(tiny[1].encode(text, add_special_tokens=False))
    want = greedy(tiny, text, 16)
    for client in (beta, root):
        r = client.completions.create(model="tiny", prompt=PRE, suffix=SUF, max_tokens=16, temperature=0)
        assert r.choices[0].text == want
        assert r.usage.prompt_tokens == n_prompt
    stream = beta.completions.create(model="deepseek-chat", prompt=PRE, suffix=SUF, max_tokens=16, temperature=0,
                                     stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == want


def test_fim_max_tokens_is_capped_at_4k(server):
    body = {"model": "tiny", "prompt": PRE, "suffix": SUF, "max_tokens": 4097}
    r = httpx.post(server[0].url + "/beta/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "4096" in r.json()["error"]["message"]


def test_fim_without_fim_tokens_is_a_400_naming_suffix(trained):
    model, tok = trained
    with running_server(model, tok, model_id="trained", chat_style="v3") as (srv, _):
        r = httpx.post(srv.url + "/beta/completions", timeout=TIMEOUT,
                       json={"model": "trained", "prompt": PRE, "suffix": SUF, "max_tokens": 4})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "suffix" and "FIM" in r.json()["error"]["message"]


def test_usage_fields_agree_with_each_other_and_the_prefix_cache(server, root):
    engine = server[1]
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "First question?"}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Another question?"}]
    root.chat.completions.create(model="deepseek-chat", messages=first, max_tokens=2, temperature=0)
    before = engine.stats()["hit_tokens"]
    r = root.chat.completions.create(model="deepseek-chat", messages=second, max_tokens=2, temperature=0)
    u = r.usage
    hit = u.model_extra["prompt_cache_hit_tokens"]
    assert hit > 0 and hit == engine.stats()["hit_tokens"] - before
    assert hit == u.prompt_tokens_details.cached_tokens
    assert hit + u.model_extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    claude = anthropic.Anthropic(base_url=server[0].url, api_key="unused", timeout=TIMEOUT, max_retries=0)
    m = claude.messages.create(model="deepseek-chat", max_tokens=2, system=SYSTEM,
                               messages=[{"role": "user", "content": "Another question?"}])
    assert m.usage.cache_read_input_tokens == hit  # the same prompt: the same cached blocks
    assert m.usage.input_tokens == u.model_extra["prompt_cache_miss_tokens"]


def wait_for_prefix_cache(engine, seconds: float = 20.0):
    end = time.monotonic() + seconds
    while engine.prefix is None:  # built by the worker thread as it starts
        assert time.monotonic() < end, engine.prefix_reason or "the prefix cache did not come up"
        time.sleep(0.02)
    return engine.prefix


def dsh_doctor(url: str) -> str:
    env = {**os.environ, "DEEPSEEK_API_KEY": "unused", "DEEPSEEK_BASE_URL": url, "COLUMNS": "200",
           "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("DEEPSEEK_MODEL", None)  # its default, deepseek-v4-pro: one of the names served by default
    r = subprocess.run([str(DSH), "doctor"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_dsh_doctor_passes_without_v1_and_sees_the_cache_hit(tiny):
    """deepseek-harness-cli (PyPI), a client written for DeepSeek's API, with only its base URL changed."""
    if not DSH.exists():
        pytest.skip("deepseek-harness-cli is not installed (it is in the test extra)")
    model, tok = tiny
    with running_server(model, tok, model_id="tiny", chat_style=STYLE, model_names=DEEPSEEK_NAMES) as (srv, eng):
        # DeepSeek caches in 64-token units and mlxseek in 32-token blocks; the doctor's prompt is ~12 tokens,
        # so this server uses 4-token blocks to let a repeated prompt hit
        wait_for_prefix_cache(eng).block = 4
        first, second = dsh_doctor(srv.url), dsh_doctor(srv.url)
    assert "harness ready" in first and "deepseek-v4-pro" in first
    hits = [re.search(r"usage\.cache_hit\D+(\d+)/(\d+)", out) for out in (first, second)]
    assert all(hits), second
    assert int(hits[0].group(1)) == 0
    assert 0 < int(hits[1].group(1)) <= int(hits[1].group(2))
