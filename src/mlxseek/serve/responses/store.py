"""Stored responses for `previous_response_id`: a bounded in-memory LRU of conversations.

A response is kept when its request did not say `store: false` (the API's default is to store). What is
kept is the conversation so far (earlier turns, this input, this output) as chat messages, never the
instructions, which the API does not carry over to the next response. The oldest entries go first; the
store lives and dies with the server process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

from ..api_errors import ApiError
from .convert import to_messages

DEFAULT_CAPACITY = 256


class ResponseStore:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._items: OrderedDict[str, list[dict]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def history(self, response_id: Optional[str]) -> list[dict]:
        """The conversation up to and including `response_id`'s output; a 400 naming the field if unknown."""
        if response_id is None:
            return []
        with self._lock:
            messages = self._items.get(response_id)
            if messages is not None:
                self._items.move_to_end(response_id)
        if messages is None:
            raise ApiError(400, f"previous_response_id: no stored response '{response_id}' (this server keeps the "
                           f"last {self.capacity} responses in memory, and none across restarts)",
                           param="previous_response_id", code="previous_response_not_found")
        return [dict(m) for m in messages]

    def put(self, response_id: str, conversation: list[dict], output: list[dict]) -> None:
        messages = conversation + to_messages(output)
        with self._lock:
            self._items[response_id] = messages
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
