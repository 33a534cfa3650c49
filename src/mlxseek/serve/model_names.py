"""The names clients may send as `model`, each with the thinking mode it selects.

DeepSeek's API names its modes as models: `deepseek-chat` answers without reasoning and
`deepseek-reasoner` with it (api-docs.deepseek.com, "Reasoning Model"); `deepseek-v4-flash` and
`deepseek-v4-pro` leave the choice to the request's `thinking` switch. Serving the same names lets a
program written for DeepSeek's API run unchanged against a local model. A name's default applies only
where the chat format has a thinking toggle, and a request's explicit switch always wins.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..errors import ServeError

# name -> thinking default (True: reasoning on, False: off, None: the chat format's own default)
DEEPSEEK_NAMES: dict[str, Optional[bool]] = {
    "deepseek-chat": False, "deepseek-reasoner": True, "deepseek-v4-flash": None, "deepseek-v4-pro": None,
}
MODES = {"thinking": True, "chat": False, "default": None}


def parse_alias(spec: str) -> tuple[str, Optional[bool]]:
    """"NAME=thinking" / "NAME=chat" / "NAME=default" -> (NAME, True / False / None)."""
    name, sep, mode = spec.partition("=")
    name, mode = name.strip(), mode.strip()
    if not sep or not name or mode not in MODES:
        raise ServeError(f"--model-alias {spec!r}: write NAME=thinking, NAME=chat or NAME=default "
                         "(e.g. --model-alias my-reasoner=thinking)")
    return name, MODES[mode]


def model_names(model_ids: Iterable[str], *, aliases: Iterable[str] = (), deepseek: bool = True) -> dict:
    """Every served name and its thinking default: the model ids first (no default), then DeepSeek's
    names (when `deepseek`), then the aliases, a later entry overriding an earlier one's default."""
    names: dict[str, Optional[bool]] = {}
    for name in model_ids:
        if not name or not name.strip():
            raise ServeError("--model-id: a model name must not be empty")
        names[name.strip()] = None
    if deepseek:
        names.update(DEEPSEEK_NAMES)
    names.update(parse_alias(spec) for spec in aliases)
    if not names:
        raise ServeError("--model-id: give at least one name for the served model")
    return names


def check_name(served, name: str, *, code: Optional[str] = "model_not_found") -> None:
    """A 404 naming `model` when `name` is not one of the served names."""
    from .api_errors import ApiError

    if name not in served.names:
        listed = ", ".join(f"'{n}'" for n in served.names)
        raise ApiError(404, f"model: '{name}' is not served here; GET /v1/models lists {listed}", param="model",
                       code=code)


def model_cards(served) -> list[dict]:
    """One /v1/models entry per served name: OpenAI's fields plus Anthropic's (type, display_name,
    created_at), so both SDKs can list them."""
    from datetime import datetime, timezone

    created = datetime.fromtimestamp(served.created, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return [{"id": name, "object": "model", "created": served.created, "owned_by": "mlxseek", "type": "model",
             "display_name": name, "created_at": created} for name in served.names]
