"""An agent-like session over HTTP with the official openai SDK, for V3.2, V4 and V4.1: a system prompt with
tool schemas, then a history that only grows (the model's replies, the tool calls the agent makes and their
results). From turn 2 at least 75% of each prompt comes from the prefix cache (usage
`prompt_tokens_details.cached_tokens`); every reply equals a server's with the prefix cache off fed the same
history, also after a restart that finds the cache in the disk tier only; and the session's turns sent as 4
concurrent requests (`max_batch` 4) get their solo replies.

The fixtures ship no tokenizer: each gets a small character-level BPE with DeepSeek's special tokens, as
many ids as the model's vocabulary, whose decode(encode(text)) is the text (so a re-rendered history
tokenizes as it did when it was sent)."""

from __future__ import annotations

import json
import random
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_helpers import deadline, running_server

import mlxseek
from mlxseek.formats.tokens import BOS, DSML, EOS, SPECIAL_TEXTS

FIXTURES = Path(__file__).parent / "fixtures"
TURNS, REPLY = 4, 4
TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file of the repository and return its text.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "relative path"}},
                       "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "run_tests", "description": "Run the test suite, or one test file, and return the failures.",
        "parameters": {"type": "object", "properties": {"target": {"type": "string"},
                                                        "verbose": {"type": "boolean"}}}}},
]
SYSTEM = ("You are a coding agent working in a Python repository. Call the tools to read files and run the "
          "tests; change as little as you can and explain each change in one sentence.")
TASK = "The parser drops the last line of a file. Fix it."
RESULT = "def parse(text):\n    return text.splitlines()[:-1]\n"


@pytest.fixture(scope="module", autouse=True)
def _bounded():
    with deadline(600):  # a hang guard only: the module takes 15-50 s on two shared cores
        yield


def rendered_sessions() -> list[str]:
    """A two-turn session with a tool call and its result, as V3.2 and V4 render it (the tokenizer's corpus)."""
    call = {"id": "c", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "src/mod1.py"}'}}
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK},
               {"role": "assistant", "content": "ok", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c", "content": RESULT}]
    return [mlxseek.render_chat(history, tools=TOOLS, style=style) for style in ("v3.2", "v4")]


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A character-level BPE of exactly `vocab` ids: DeepSeek's special tokens first (BOS 0, EOS 1, as the
    fixtures' configs say), then the printable ASCII characters, then merges learnt from the session's own
    text (short prompts) and seeded words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = [BOS, EOS] + [s for s in SPECIAL_TEXTS if s not in (BOS, EOS) and DSML not in s] + [DSML]
    chars = string.ascii_letters + string.digits + string.punctuation + " \n"
    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(2, 9))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, initial_alphabet=list(chars),
                                  limit_alphabet=len(chars), show_progress=False)
    tok.train_from_iterator([" ".join(words), chars, *rendered_sessions() * 20], trainer)
    assert tok.get_vocab_size() == vocab
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "add_bos_token": False}))


def checkpoint(name: str, folder: Path) -> Path:
    """The fixture `name` with a tokenizer, in `folder` (its weights linked, not copied)."""
    folder.mkdir()
    if name == "v41":
        from engram_fixture import engram_config
        from v41_checkpoint import write_official
        from v41_fixture import TINY, mlx_lm_model, ours_from

        tiny = {**TINY, "vocab_size": 1024}  # room for the tokenizer's merges: short prompts
        write_official(folder, ours_from(mlx_lm_model(tiny), engram_config(tiny)), tiny)
    else:
        for f in (FIXTURES / name).iterdir():
            if f.name != "golden.npz":
                (folder / f.name).symlink_to(f.resolve())
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config", cfg)  # V4.1's config is composite
    write_tokenizer(folder, text["vocab_size"])
    if "engram_compressed_vocab_size" in text:  # Engram hashes through this tokenizer's normalised ids
        from tokenizers import Tokenizer

        from mlxseek.layers.v41.compressed_vocab import compressed_token_map

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        text["engram_compressed_vocab_size"] = compressed_token_map(tok, text["vocab_size"])[1]
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(api, messages: list[dict]):
    r = api.chat.completions.create(model="agent", messages=messages, tools=TOOLS, max_tokens=REPLY,
                                    temperature=0)
    msg = r.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]
    return (msg.content, calls, r.usage.completion_tokens), r.usage


def session(api) -> tuple[list[list[dict]], list, list]:
    """TURNS turns of an agent loop: each reply goes back into the history with the tool call the agent
    makes next and its result. Returns each turn's messages, replies and usage."""
    rng = random.Random(5)
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    sent, replies, usage = [], [], []
    for turn in range(TURNS):
        sent.append([dict(m) for m in history])
        reply, u = ask(api, history)
        replies.append(reply)
        usage.append(u)
        call = {"id": f"call_{turn}", "type": "function",
                "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/mod{rng.randrange(99)}.py"})}}
        history += [{"role": "assistant", "content": reply[0] or "", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"],
                     "content": RESULT}]
    return sent, replies, usage


class Recorder:
    """The engine, recording how many rows shared the forward of each token it streams."""

    def __init__(self, engine):
        self.engine, self.batch_sizes = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def generate(self, tokens, params):
        async for event in self.engine.generate(tokens, params):
            self.batch_sizes.append(event.batch_size)
            yield event


def cached_share(usage) -> list[float]:
    return [u.prompt_tokens_details.cached_tokens / u.prompt_tokens for u in usage]


@pytest.mark.parametrize("name", ["v32", "v4_flash", "v41"])
def test_agent_session_over_http_is_cached_exact_restartable_and_batches(name, tmp_path):
    model, tok = mlxseek.load(checkpoint(name, tmp_path / name), dtype="float32", engram_memory_gb=0.01)
    disk = str(tmp_path / "prefix")
    with running_server(model, tok, model_id="agent", prompt_cache_bytes=0) as (server, _):
        sent, reference, usage = session(client(server))
    assert all(s == 0 for s in cached_share(usage))  # the reference really is uncached
    with running_server(model, tok, model_id="agent", prompt_cache_dir=disk) as (server, engine):
        warm_sent, warm, usage = session(client(server))
        assert engine.stats()["prefix_cache_enabled"]
    assert warm_sent == sent and warm == reference
    assert all(s >= 0.75 for s in cached_share(usage)[1:]), cached_share(usage)
    # A restart: the RAM tier holds nothing (1 byte), the disk tier all; then the turns as 4 concurrent rows.
    recorder = None

    def record(engine):
        nonlocal recorder
        recorder = Recorder(engine)
        return recorder

    with running_server(model, tok, model_id="agent", prompt_cache_dir=disk, prompt_cache_bytes=1,
                        max_batch=4, wrap=record) as (server, engine):
        api = client(server)
        again, usage = zip(*(ask(api, m) for m in sent))
        assert list(again) == reference
        assert all(s >= 0.75 for s in cached_share(usage)[1:]), cached_share(usage)
        assert max(recorder.batch_sizes) == 1
        with ThreadPoolExecutor(4) as pool:
            together = [r for r, _ in pool.map(lambda m: ask(api, m), sent)]
        stats = engine.stats()
    assert together == reference
    assert max(recorder.batch_sizes) > 1  # the concurrent requests did share forwards
    assert stats["disk_hits"] >= TURNS - 1 and stats["disk_rejected"] == 0
