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
