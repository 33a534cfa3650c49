"""The official anthropic SDK against a live server on the trained tiny V3 checkpoint (v3 chat format):
replies equal mlxseek.generate's greedy output, usage is right, and the streaming event sequence is the
Messages API's."""

import anthropic
import pytest
from serve_helpers import TRAINED, deadline, running_server

import mlxseek

MODEL_ID = "trained_v3"
TIMEOUT = 60
SYSTEM = "You write Python."
# the SDK has no temperature argument (the API still takes the field)
GREEDY = {"temperature": 0}
TURNS = [{"role": "user", "content": "def add(a, b):\n"}]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return mlxseek.load(TRAINED)


@pytest.fixture(scope="module")
def client(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with deadline(600), running_server(model, tok, model_id=MODEL_ID, chat_style="v3") as (srv, _):
        yield anthropic.Anthropic(base_url=srv.url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def reference(model_and_tokenizer, max_tokens):
    from mlxseek.formats import render_chat

    model, tok = model_and_tokenizer
    ids = tok.encode(render_chat([{"role": "system", "content": SYSTEM}] + TURNS, style="v3"),
                     add_special_tokens=False)
    records = list(mlxseek.stream_generate(model, tok, ids, max_tokens=max_tokens))
    return ids, records, "".join(r.text for r in records)


def test_message_equals_generate(client, model_and_tokenizer):
    ids, records, text = reference(model_and_tokenizer, 20)
    m = client.messages.create(model=MODEL_ID, system=SYSTEM, messages=TURNS, max_tokens=20, extra_body=GREEDY)
    assert m.role == "assistant" and m.model == MODEL_ID
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == text
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[records[-1].finish_reason]
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == len(ids)
    assert m.usage.output_tokens == records[-1].generation_tokens


def test_stream_has_the_messages_event_sequence(client, model_and_tokenizer):
    _, records, text = reference(model_and_tokenizer, 20)
    kinds, deltas = [], []
    with client.messages.stream(model=MODEL_ID, system=SYSTEM, messages=TURNS, max_tokens=20,
                                extra_body=GREEDY) as stream:
        for event in stream:
            if event.type in ("text", "thinking", "input_json", "citation", "signature"):
                continue  # the SDK's own convenience events, derived from the raw ones
            kinds.append(event.type)
            if event.type == "content_block_delta":
                deltas.append(event.delta.text)
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]  # the SDK drops "ping" events
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(deltas) == text == final.content[0].text
    assert final.usage.output_tokens == records[-1].generation_tokens


def test_stop_sequence_and_error_shape(client):
    m = client.messages.create(model=MODEL_ID, messages=TURNS, max_tokens=30, extra_body=GREEDY)
    stop = m.content[0].text[2:5]
    cut = client.messages.create(model=MODEL_ID, messages=TURNS, max_tokens=30, extra_body=GREEDY,
                                 stop_sequences=[stop])
    assert stop not in cut.content[0].text and m.content[0].text.startswith(cut.content[0].text)
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-nope", messages=TURNS, max_tokens=5)
    assert e.value.body["type"] == "error" and "model" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL_ID, messages=TURNS, max_tokens=-3)


def test_count_tokens_counts_the_rendered_prompt(client, model_and_tokenizer):
    ids, _, _ = reference(model_and_tokenizer, 1)
    assert client.messages.count_tokens(model=MODEL_ID, system=SYSTEM, messages=TURNS).input_tokens == len(ids)


def test_models_list_and_a_thinking_switch_the_format_cannot_honour(client):
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    # the v3 format has no reasoning mode: an Anthropic client asking for thinking still gets its answer
    m = client.messages.create(model=MODEL_ID, messages=TURNS, max_tokens=5, extra_body=GREEDY,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["text"]
