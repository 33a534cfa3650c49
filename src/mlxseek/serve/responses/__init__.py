"""The OpenAI Responses API (POST /v1/responses): request items -> chat turns, the reply -> output items."""

from .api import router

__all__ = ["router"]
