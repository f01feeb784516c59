"""Console output: rich on stderr when it is a terminal, plain lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys

from rich.console import Console

_STDERR: Console | None = None


def stderr() -> Console:
    global _STDERR
    if _STDERR is None:
        _STDERR = Console(stderr=True, highlight=False, soft_wrap=True)
    return _STDERR


def log(message: str) -> None:
    """One line on stderr."""
    stderr().print(message, markup=False)


def is_terminal() -> bool:
    return sys.stderr.isatty()
