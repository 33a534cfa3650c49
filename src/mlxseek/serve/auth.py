"""API key check: `Authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Optional


def presented_key(headers: dict[bytes, bytes]) -> Optional[bytes]:
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key")


def key_ok(expected: Optional[str], headers: dict[bytes, bytes]) -> bool:
    if expected is None:
        return True
    got = presented_key(headers)
    # compare_digest on bytes of any length: no early exit that would leak the key's prefix by timing
    return got is not None and hmac.compare_digest(got, expected.encode("utf-8"))
