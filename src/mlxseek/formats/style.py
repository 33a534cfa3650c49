"""Which DeepSeek chat format a checkpoint speaks, and what each format allows."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ChatFormatError
from .tokens import THINK_START

STYLES = ("v3", "r1", "v3.1", "v3.2", "v4", "v4-0731", "v4.1")
# V4's roles (latest_reminder); v4-0731 (V4-Flash-0731, V4-Pro-0813) is V4's encoder re-tiering reasoning
# effort, v4.1 (V4.1-Flash) an encoder of its own (formats/v41.py)
V4_STYLES = ("v4", "v4-0731", "v4.1")
# thinking: None = no reasoning at all, True = always reasons, "toggle" = the caller chooses (default off)
THINKING = {"v3": None, "r1": True, "v3.1": "toggle", "v3.2": "toggle", "v4": "toggle", "v4-0731": "toggle",
            "v4.1": "toggle"}


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ChatFormatError(f"style={style!r} is not a DeepSeek chat format; use one of {', '.join(STYLES)}")
    return style


# V4-family model_type -> (its style, its style when the checkpoint speaks the 0731 encoder). V4.1-Flash ships
# an encoder of its own (tests/fixtures/make_chat_goldens.py V41_EVIDENCE), whatever drafter it carries.
_V4_STYLES = {"deepseek_v4": ("v4", "v4-0731"), "deepseek_v41": ("v4.1", "v4.1")}


def detect_style(*, model_type: str, chat_template: str | None = None, v0731: bool = False) -> str:
    """The chat format of a checkpoint from its config's model_type and the chat template it ships;
    `v0731`: a V4 checkpoint that speaks the 0731 encoder (`is_v4_0731`)."""
    if model_type in _V4_STYLES:
        return _V4_STYLES[model_type][v0731]
    if model_type == "deepseek_v32":
        return "v3.2"
    if model_type not in ("deepseek_v2", "deepseek_v3"):
        raise ChatFormatError(f"model_type {model_type!r} has no DeepSeek chat format; pass style= explicitly "
                              f"({', '.join(STYLES)})")
    template = chat_template or ""
    if "thinking" in template and "<｜tool▁sep｜>' + tool['function']['arguments']" in template:
        return "v3.1"
    if THINK_START in template:
        return "r1"
    return "v3"


def style_of_tokenizer(tokenizer) -> str:
    """The format of the checkpoint a loaded tokenizer came from (its folder's config.json + template)."""
    style = getattr(tokenizer, "chat_style", None)
    if style:
        return check_style(style)
    template = getattr(tokenizer, "chat_template", None)
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    folder = Path(str(getattr(inner, "name_or_path", "") or ""))
    config = folder / "config.json"
    if not config.is_file():
        raise ChatFormatError("cannot tell the chat format from this tokenizer (no config.json beside it); "
                              f"pass style= ({', '.join(STYLES)})")
    model_type = json.loads(config.read_text()).get("model_type", "")
    return detect_style(model_type=model_type, chat_template=template)


def check_thinking(style: str, thinking: bool | None) -> bool:
    """The thinking mode to render, refusing a request the family cannot honour."""
    rule = THINKING[style]
    if rule is None:
        if thinking:
            raise ChatFormatError(f"thinking=True: the {style} format has no reasoning mode; use r1, v3.1, v3.2, "
                                  "v4, v4-0731 or v4.1, or leave thinking unset", field="thinking")
        return False
    if rule is True:
        if thinking is False:
            raise ChatFormatError(f"thinking=False: the {style} format always reasons and has no toggle; "
                                  "leave thinking unset", field="thinking")
        return True
    return bool(thinking)


def prompt_opens_thinking(style: str, thinking: bool | None, *, prompt: str | None = None) -> bool:
    """True when the rendered generation prompt leaves the model inside a reasoning block.

    With `prompt` (the rendered text) the answer is read off its end, which also covers turns after
    tool results; without it, it follows from the style and the thinking mode.
    """
    check_style(style)
    if prompt is not None:
        return prompt.rstrip("\n").endswith(THINK_START)
    return check_thinking(style, thinking)


def style_of_checkpoint(folder: str | Path, *, chat_template: str | None) -> str | None:
    """The chat format of a checkpoint folder, or None when it cannot be told: no config.json, an unknown
    model_type, or a V2/V3-family folder without a chat template (mlxseek's V3/R1 fallback then applies)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    cfg = json.loads(config.read_text())
    model_type = cfg.get("model_type", "")
    if chat_template is None and model_type not in ("deepseek_v32", "deepseek_v4", "deepseek_v41"):
        return None
    try:
        return detect_style(model_type=model_type, chat_template=chat_template, v0731=is_v4_0731(Path(folder), cfg))
    except ChatFormatError:
        return None


def is_v4_0731(folder: Path, config: dict) -> bool:
    """Whether a V4 checkpoint speaks the 0731 encoder. The encoder it ships decides when present (0731's
    defines REASONING_EFFORT_PROMPTS, April's only REASONING_EFFORT_MAX); otherwise the DSpark config keys
    do: V4-Flash-0731 and V4-Pro-0813 are the released checkpoints that carry `dspark_*`, April's has none.
    (The June V4-Flash-DSpark also has them; its encoder is not known here, so an explicit style= wins.)"""
    encoder = folder / "encoding" / "encoding_dsv4.py"
    if encoder.is_file():
        return "REASONING_EFFORT_PROMPTS" in encoder.read_text(encoding="utf-8", errors="replace")
    return any(key.startswith("dspark_") for key in config)
