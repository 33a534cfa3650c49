"""The `mlxseek` click group and the one error translation every command shares."""

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
