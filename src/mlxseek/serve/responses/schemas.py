"""Pydantic request model of the OpenAI Responses API (POST /v1/responses), the fields mlxseek serves.

Input items and tools are kept loose (dicts checked in `convert`) where the API has many item and tool
types: clients such as Codex send hosted tools (web_search, local_shell, custom) and item kinds a local
model cannot act on, and those are skipped with a logged warning rather than refused.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..text_checks import reject_surrogates

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Model(BaseModel):
    model_config = _STRICT


class Reasoning(_Model):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    summary: Optional[str] = None


class TextFormatIn(_Model):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


class TextOptions(_Model):
    format: Optional[TextFormatIn] = None
    verbosity: Optional[str] = None


class ResponsesRequest(_Model):
    _text = model_validator(mode="before")(classmethod(lambda cls, data: reject_surrogates(data)))
    model: str = Field(min_length=1)
    input: Union[str, list[dict[str, Any]]] = Field(min_length=1)
    instructions: Optional[str] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    reasoning: Optional[Reasoning] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
    stream: bool = False
    store: Optional[bool] = None
    previous_response_id: Optional[str] = None
    text: Optional[TextOptions] = None
    metadata: Optional[dict[str, Any]] = None
