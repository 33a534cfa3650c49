"""`mlxseek` command line: a click group of thin wrappers over keyword-only library functions.

Each command lives in its own module here and registers itself on `main`; library errors
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
    from ..cpu import blas

    try:
        blas.check()  # MLXSEEK_BLAS naming a library that cannot be used: one line, before any command
    except MlxseekError as e:
        raise click.ClickException(str(e)) from None


def library_errors(fn):
    """Turn typed library errors into clean CLI messages (exit code 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlxseekError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _register() -> None:
    # Import command modules for their @main.command side effect; a module that is not there yet is
    # simply absent from --help.
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_register()
