"""What one app serves: the loaded model, its tokenizer and engine, the chat style and the limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .limits import Limits
from .metrics import Metrics


@dataclass
class ServedModel:
    model: Any
    tokenizer: Any
    engine: Any
    model_id: str
    style: Optional[str]          # chat format style (mlxseek.formats.STYLES); None: no chat endpoint
    limits: Limits
    metrics: Metrics
    log_prompts: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    # every name clients may send as `model` -> the thinking mode it selects (model_names.py); model_id first
    names: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = {self.model_id: None, **self.names}

    def thinking_for(self, name: str) -> Optional[bool]:
        """The thinking mode the served name `name` selects, where this chat format has a toggle (None: the
        format's default). deepseek-chat / deepseek-reasoner select off / on, as on DeepSeek's API."""
        from ..formats.style import THINKING

        if self.style is None or THINKING[self.style] != "toggle":
            return None
        return self.names.get(name)

    @property
    def context_length(self) -> int:
        return int(self.engine.context_length)

    @property
    def vocab_size(self) -> int:
        cfg = getattr(self.model, "config", None) or getattr(self.model, "args", None)
        size = getattr(cfg, "vocab_size", None) or getattr(self.model, "vocab_size", None)
        return int(size) if size else len(self.tokenizer.get_vocab())

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])
