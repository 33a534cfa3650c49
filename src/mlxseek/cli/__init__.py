"""`mlxseek` command line: a click group of thin wrappers over keyword-only library functions.

Each command lives in its own module here, listed in COMMAND_MODULES, and registers itself on `main`; library errors
(`MlxseekError`) become one-line click errors with a non-zero exit, never tracebacks.
"""

from __future__ import annotations

import functools

import click

from ..errors import MlxseekError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlxseek")
def main() -> None:
    """Run DeepSeek-family models (V2, V3, R1, V3.1, V3.2, V4) on Apple Silicon with MLX."""


def library_errors(fn):
    """Turn typed library errors into clean CLI messages (exit code 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlxseekError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


# Every command module, by name (each registers its command on `main`). An explicit list: a module that
# fails to import fails `mlxseek --help` loudly instead of silently missing from it.
COMMAND_MODULES = ("bench", "chat", "convert", "distributed", "estimate", "eval", "generate", "info")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


_register()
