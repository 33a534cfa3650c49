"""Multi-turn chat over one reusable prompt cache.

The cache holds the conversation as the model saw it: the rendered prompt and the model's own reply
tokens. A new turn renders the whole conversation with the chat template and feeds only the text the
cache lacks (with DeepSeek's template: `<｜User｜>{text}<｜Assistant｜>`, after closing the previous
reply with `<｜end▁of▁sentence｜>` when the model did not emit it). When the template rewrites earlier
text, the cache is trimmed back to the longest common token prefix and re-fed from there.
"""

from __future__ import annotations

from typing import Generator, Optional

from mlx_lm.models.cache import trim_prompt_cache

from ..errors import GenerationError
from ..loading.tokenizer import apply_chat_template
from .stream import GenerationResponse, make_prompt_cache, stream_generate


class ChatSession:
    """A conversation with `model`: `send(text)` streams the reply; `reset()` forgets everything.

    Keyword arguments (max_tokens, sampler, logits_processors, stop, ...) go to `stream_generate`.
    """

    def __init__(self, model, tokenizer, *, system: Optional[str] = None, **generate_kwargs):
        if tokenizer is None:
            raise GenerationError("chat needs a tokenizer: the model folder has no tokenizer.json/tokenizer.model")
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.generate_kwargs = generate_kwargs
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.cache = make_prompt_cache(self.model)
        self.cached: list[int] = []  # token ids the cache holds, in order
        self._unfed: list[int] = []  # reply tokens (and the closing EOS) the cache still lacks

    @property
    def tokens(self) -> list[int]:
        """The conversation as token ids, as the model has seen it plus what the next turn feeds first."""
        return self.cached + self._unfed

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _new_tokens(self) -> list[int]:
        """Tokens to feed for the latest user message; trims the cache if the history changed."""
        full = apply_chat_template(self.tokenizer, self.messages)
        if self.cached:
            before = apply_chat_template(self.tokenizer, self.messages[:-1], add_generation_prompt=False)
            if full.startswith(before):
                return self._unfed + self._encode(full[len(before):])
        ids, have = self._encode(full), self.tokens
        common = 0
        while common < min(len(ids), len(self.cached)) and ids[common] == have[common]:
            common += 1
        trim_prompt_cache(self.cache, len(self.cached) - common)
        self.cached = self.cached[:common]
        return ids[common:]

    def send(self, text: str, **overrides) -> Generator[GenerationResponse, None, None]:
        """Stream the reply to user message `text`; the reply joins the history when the stream ends
        (or is abandoned)."""
        self.messages.append({"role": "user", "content": text})
        try:
            new = self._new_tokens()
            stream = stream_generate(self.model, self.tokenizer, new, prompt_cache=self.cache,
                                     **{**self.generate_kwargs, **overrides})
            first = next(stream)
        except Exception:
            self.messages.pop()  # nothing was generated: the turn never happened
            raise
        reply, tokens = "", []
        try:
            for r in _chain(first, stream):
                reply += r.text
                tokens.append(r.token)
                yield r
        finally:
            self._after_turn(new, tokens, reply)

    def _after_turn(self, fed: list[int], tokens: list[int], reply: str) -> None:
        history = self.cached + fed + tokens
        held = self.cache[0].offset  # the decode loop feeds each token before the caller sees it
        self.cached, self._unfed = history[:held], history[held:]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not tokens or tokens[-1] not in self.tokenizer.eos_token_ids):
            self._unfed.append(eos)  # the template closes every reply with EOS; the cache must too
        self.messages.append({"role": "assistant", "content": reply})


def _chain(first, rest):
    yield first
    yield from rest
