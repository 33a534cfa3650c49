"""Multi-turn chat over one reusable prompt cache.

The cache holds the conversation as the model saw it: the rendered prompt and the model's own reply
tokens. A new turn renders the whole conversation with the chat template and feeds only the text the
cache lacks (with DeepSeek's template: `<｜User｜>{text}<｜Assistant｜>`, after closing the previous
reply with `<｜end▁of▁sentence｜>` when the model did not emit it). When the template rewrites earlier
text, the cache is trimmed back to the longest common token prefix and re-fed from there.
With a known chat format (the tokenizer's `chat_style`) the conversation is rendered by
`mlxseek.formats.render_chat`, with thinking on/off and tools; replies keep their reasoning and tool calls,
and `send_tool_result` answers a call.
"""

from __future__ import annotations

from typing import Generator, Optional

from mlx_lm.models.cache import trim_prompt_cache

from ..errors import ChatFormatError, GenerationError
from ..formats import render_chat
from ..loading.tokenizer import apply_chat_template
from .steps import make_prompt_cache
from .stream import GenerationResponse, stream_generate


class ChatSession:
    """A conversation with `model`: `send(text)` streams the reply; `reset()` forgets everything.

    `thinking` and `tools` (OpenAI schemas) go to the chat format (`chat_style`, default the tokenizer's).
    Keyword arguments (max_tokens, sampler, logits_processors, stop, ...) go to `stream_generate`.
    """

    def __init__(self, model, tokenizer, *, system: Optional[str] = None, thinking: Optional[bool] = None,
                 tools: Optional[list[dict]] = None, chat_style: Optional[str] = None, **generate_kwargs):
        if tokenizer is None:
            raise GenerationError("chat needs a tokenizer: the model folder has no tokenizer.json/tokenizer.model")
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.style = chat_style or getattr(tokenizer, "chat_style", None)
        if self.style is None and (thinking is not None or tools):
            raise ChatFormatError("thinking/tools need a known chat format: this checkpoint has no chat template; "
                                  "pass chat_style= (v3, r1, v3.1, v3.2 or v4)")
        self.thinking, self.tools = thinking, tools
        self.generate_kwargs = generate_kwargs
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.cache = make_prompt_cache(self.model)
        self.cached: list[int] = []  # token ids the cache holds, in order
        self._unfed: list[int] = []  # reply tokens (and the closing EOS) the cache still lacks
        self._n_fed = 0  # messages the cache (plus _unfed) already holds
        self.pending_calls: list[str] = []  # ids of the last reply's tool calls not yet answered

    @property
    def tokens(self) -> list[int]:
        """The conversation as token ids, as the model has seen it plus what the next turn feeds first."""
        return self.cached + self._unfed

    def _render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.style is None:
            return apply_chat_template(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)
        return render_chat(messages, style=self.style, tools=self.tools, thinking=self.thinking,
                           add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _new_tokens(self) -> list[int]:
        """Tokens to feed for the latest user message; trims the cache if the history changed."""
        full = self._render(self.messages)
        if self.cached:
            before = self._render(self.messages[: self._n_fed], add_generation_prompt=False)
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
        yield from self._reply(overrides)

    def send_tool_result(self, call_id: str, result: str, **overrides) -> Generator[GenerationResponse, None, None]:
        """Answer tool call `call_id` with `result`; once every call of the last reply is answered, stream
        the model's next reply (until then this yields nothing)."""
        if call_id not in self.pending_calls:
            raise ChatFormatError(f"tool call {call_id!r} is not awaiting a result (pending: "
                                  f"{', '.join(self.pending_calls) or 'none'})")
        self.pending_calls.remove(call_id)
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        if not self.pending_calls:
            yield from self._reply(overrides)

    def _reply(self, overrides: dict) -> Generator[GenerationResponse, None, None]:
        try:
            new = self._new_tokens()
            stream = stream_generate(self.model, self.tokenizer, new, prompt_cache=self.cache, chat_style=self.style,
                                     tools=self.tools, **{**self.generate_kwargs, **overrides})
            first = next(stream)
        except Exception:
            self.messages.pop()  # nothing was generated: the turn never happened
            raise
        records = []
        try:
            for r in _chain(first, stream):
                records.append(r)
                yield r
        finally:
            self._after_turn(new, [r.token for r in records], records)

    def _after_turn(self, fed: list[int], tokens: list[int], records: list[GenerationResponse]) -> None:
        history = self.cached + fed + tokens
        held = self.cache[0].offset  # the decode loop feeds each token before the caller sees it
        self.cached, self._unfed = history[:held], history[held:]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not tokens or tokens[-1] not in self.tokenizer.eos_token_ids):
            self._unfed.append(eos)  # the template closes every reply with EOS; the cache must too
        self.messages.append(self._assistant_message(records))
        self._n_fed = len(self.messages)

    def _assistant_message(self, records: list[GenerationResponse]) -> dict:
        if self.style is None:
            return {"role": "assistant", "content": "".join(r.text for r in records)}
        calls = [c for r in records for c in r.tool_calls]
        content = "".join(r.content for r in records)
        if calls and self.style == "v3":
            content = ""  # the V3 template renders content or calls, never both; the cache keeps the real text
        msg = {"role": "assistant", "content": content or (None if calls else "")}
        if reasoning := "".join(r.reasoning for r in records):
            msg["reasoning_content"] = reasoning
        if calls:
            msg["tool_calls"] = [c.to_openai() for c in calls]
        self.pending_calls = [c.id for c in calls]
        return msg


def _chain(first, rest):
    yield first
    yield from rest
