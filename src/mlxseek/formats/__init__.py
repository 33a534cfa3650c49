"""Every DeepSeek chat format: rendering conversations (render_chat) and parsing replies (parse_reply,
ReplyParser) for V2/V3/V3-0324 ("v3"), R1 ("r1"), V3.1 ("v3.1"), V3.2 ("v3.2"), V4 ("v4"),
V4-Flash-0731 / V4-Pro-0813 ("v4-0731") and V4.1-Flash ("v4.1").

Pure Python (no MLX): notebooks, the server and the tests use it directly.
"""

from .parser import ReplyParser, parse_reply
from .prefix import PrefixPrompt, prefix_message_index, render_prefix_completion
from .render import render_chat
from .reply import Reply, ReplyDelta, ReplyFormat, ToolCall
from .style import STYLES, detect_style, prompt_opens_thinking, style_of_tokenizer

__all__ = ["STYLES", "PrefixPrompt", "Reply", "ReplyDelta", "ReplyFormat", "ReplyParser", "ToolCall", "detect_style",
           "parse_reply", "prefix_message_index", "prompt_opens_thinking", "render_chat", "render_prefix_completion",
           "style_of_tokenizer"]
