"""`mlxseek` command line: a click group of thin wrappers over keyword-only library functions.

Each command lives in its own module here and registers itself on `main` (cli/group.py); library errors
(`MlxseekError`) become one-line click errors with a non-zero exit, never tracebacks. The commands are
listed here explicitly: a module that fails to import fails `mlxseek --help` loudly.
"""

from . import bench, chat, convert, distributed, estimate, eval, generate, info, serve  # noqa: F401  (registration)
from .group import library_errors, main

__all__ = ["library_errors", "main"]
