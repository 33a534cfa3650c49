"""What a parsed model reply is made of: reasoning, content and complete tool calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call the model wrote; `arguments` is a JSON object as a string."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        """The call in OpenAI's Chat Completions shape."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ReplyDelta:
    """What one `ReplyParser.feed` call adds: reasoning text, content text, and newly completed tool calls."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass
class Reply:
    """A whole reply. `malformed` is set when the model wrote a tool call that could not be parsed
    (unclosed tag, arguments that are not JSON, an unknown tool name): its text is kept in `content`."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed: bool = False


@dataclass(frozen=True)
class ReplyFormat:
    """How one reply is parsed, decided once where its prompt is rendered: the chat `style`; `thinking`:
    the prompt leaves the model inside a reasoning block; `tools` (OpenAI schemas) the prompt rendered
    (a call to another name is malformed); `continuation`: the prompt ends inside the reply itself (chat
    prefix completion); `answer`: the start of the answer the prompt already holds (a content prefix),
    which a grammar continues from. Generation parses its records with it and the constraint reads
    `thinking` and `answer` from it, so a server that renders the prompt passes it down instead of
    parsing the stream again."""

    style: str
    thinking: bool = False
    tools: Optional[list] = field(default=None, compare=False)
    continuation: bool = False
    answer: str = ""
