"""The reply is parsed once: the server decides the reply's format (style, tools, whether the prompt opens
reasoning, prefix continuation) where it renders the prompt, the engine's generation records parse the reply
with it, and the HTTP layer only reads the events. "Does the prompt open thinking" is that one decision for
the parser and for the constraint alike, not re-read off the prompt's last tokens."""

import openai
import pytest
from scripted_model import ScriptedModel
from serve_helpers import deadline
from test_serve_tools import CONTENT, REASONING, REPLIES, TOOL, scripted_server

import mlxseek
from mlxseek.formats import ReplyFormat, ReplyParser, render_chat
from mlxseek.formats.constraints import tool_call_grammar
from mlxseek.generation.constraint import make_constraint

TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def bounded():
    with deadline(300):
        yield


@pytest.fixture
def parsers(monkeypatch):
    """Counts the ReplyParsers built (the server runs in this process)."""
    built = []
    init = ReplyParser.__init__

    def counting(self, *args, **kwargs):
        built.append(kwargs.get("thinking"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(ReplyParser, "__init__", counting)
    return built


@pytest.mark.parametrize("stream", [False, True])
def test_one_parser_per_request_and_the_reply_is_whole(tokenizer, parsers, stream):
    with scripted_server("v3.1", tokenizer) as (srv, _):
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        kw = dict(model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[TOOL],
                  max_tokens=200, extra_body={"chat_template_kwargs": {"thinking": True}})
        if stream:
            reasoning, calls = "", []
            for chunk in client.chat.completions.create(stream=True, **kw):
                delta = chunk.choices[0].delta if chunk.choices else None
                reasoning += getattr(delta, "reasoning_content", None) or "" if delta else ""
                calls += (delta.tool_calls or []) if delta else []
            names = [c.function.name for c in calls if c.function and c.function.name]
        else:
            msg = client.chat.completions.create(**kw).choices[0].message
            reasoning, names = msg.reasoning_content, [c.function.name for c in msg.tool_calls]
    assert parsers == [True]  # one parser, told by the rendered prompt that reasoning is open
    assert reasoning == REASONING and names == ["get_weather"]


def test_the_callers_reply_format_wins_over_the_prompt_tokens(tokenizer):
    """A served prompt restored from the prefix cache reaches generation as its uncached tail only: the
    tail's tokens cannot say whether reasoning is open, the rendered prompt's format can."""
    text, _ = REPLIES["v3.1"]
    model = ScriptedModel(tokenizer.encode(text, add_special_tokens=False), len(tokenizer.get_vocab()))
    tail = tokenizer.encode("Paris", add_special_tokens=False)  # no <think> among these tokens
    for fmt, reasoning in [(None, ""), (ReplyFormat("v3.1", thinking=True, tools=[TOOL]), REASONING)]:
        recs = list(mlxseek.stream_generate(model, tokenizer, tail, max_tokens=200, chat_style="v3.1",
                                            tools=[TOOL], reply=fmt))
        assert "".join(r.reasoning for r in recs) == reasoning
        content = "".join(r.content for r in recs)
        assert content == CONTENT if reasoning else content.startswith(REASONING)  # read as the answer
        assert [c.name for r in recs for c in r.tool_calls] == ["get_weather"]


def test_the_constraint_reads_the_same_decision(tokenizer):
    grammar = tool_call_grammar("v3.1", [TOOL])
    prompt = tokenizer.encode(render_chat([{"role": "user", "content": "hi"}], style="v3.1", thinking=True,
                                          tokenizer=tokenizer), add_special_tokens=False)
    vocab = len(tokenizer.get_vocab())
    assert make_constraint(tokenizer, grammar, vocab_size=vocab, prompt_ids=prompt).mask() is None
    assert make_constraint(tokenizer, grammar, vocab_size=vocab, prompt_ids=prompt,
                           in_reasoning=False).mask() is not None  # the caller's decision wins
    assert make_constraint(tokenizer, grammar, vocab_size=vocab, prompt_ids=[0], in_reasoning=True).mask() is None
