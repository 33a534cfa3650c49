"""Pydantic request models of the Anthropic Messages API (the fields mlxseek serves)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .text_checks import check_text

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


class TextBlock(_Model):
    type: Literal["text"]
    text: str


class ThinkingBlock(_Model):
    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None


class RedactedThinkingBlock(_Model):
    type: Literal["redacted_thinking"]
    data: str = ""


class ToolUseBlock(_Model):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Model):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: Union[str, list[TextBlock], None] = None
    is_error: bool = False


Block = Annotated[
    Union[TextBlock, ThinkingBlock, RedactedThinkingBlock, ToolUseBlock, ToolResultBlock],
    Field(discriminator="type"),
]


class Message(_Model):
    # "system" mid-conversation: Claude Code (2.1.33x) sends its environment notes so; rendered as the
    # chat format renders later system messages (DeepSeek's templates fold them into the system prompt)
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[Block]]


class ToolDef(_Model):
    # client tools have no type (or "custom"); server tools (web_search_20250305, ...) carry a versioned type
    # and no input_schema, and are skipped. Extras (cache_control, strict, defer_loading, ...) are ignored.
    type: Optional[str] = None
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    input_schema: Optional[dict[str, Any]] = None


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False


class Thinking(_Model):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Optional[int] = Field(default=None, ge=0)


class CountTokensRequest(_Model):
    _text = model_validator(mode="before")(classmethod(lambda cls, data: check_text(data)))
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    tools: Optional[list[ToolDef]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[Thinking] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Optional[list[str]] = None
    stream: bool = False
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
