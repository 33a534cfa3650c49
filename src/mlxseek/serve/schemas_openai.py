"""Pydantic request models of the OpenAI Chat Completions and Completions APIs (the fields mlxseek serves).

Strict types (a string is not a number, 1 is not `true`) so a malformed field is a 400 naming it; unknown
fields are ignored, because clients send many optional ones (user, metadata, parallel_tool_calls, ...).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .text_checks import check_text

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


class TextPart(_Model):
    type: Literal["text"]
    text: str


class FunctionCall(_Model):
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCallIn(_Model):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None
    name: Optional[str] = None
    prefix: Optional[bool] = None  # DeepSeek's chat prefix completion: continue this (last, assistant) message


class FunctionDef(_Model):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str = Field(min_length=1)


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Model):
    include_usage: bool = False


class ThinkingToggle(_Model):
    # DeepSeek's API: "thinking": {"type": "enabled" | "disabled"}
    type: Literal["enabled", "disabled"]


class _Sampling(_Model):
    _text = model_validator(mode="before")(classmethod(lambda cls, data: check_text(data)))
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
    stop: Union[str, list[str], None] = Field(default=None)
    n: int = 1


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["auto", "none", "required"], NamedToolChoice, None] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    thinking: Optional[ThinkingToggle] = None
    reasoning_effort: Optional[str] = Field(default=None, max_length=32)
    response_format: Optional[dict[str, Any]] = None  # text | json_object | json_schema (serve/structured.py)
    parallel_tool_calls: bool = True


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str]]
    suffix: Optional[str] = None  # FIM: the text after the hole (DeepSeek's /beta/completions)
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    echo: bool = False
