"""Console output: rich on stderr when it is a terminal, plain lines otherwise (CI, pipes).

Over several processes only process 0 logs; the others print warnings and errors alone, each
naming its process (``lab.core.hosts``)."""

from __future__ import annotations

import sys

from rich.console import Console

from lab.core import hosts

_STDERR: Console | None = None


def stderr() -> Console:
    global _STDERR
    if _STDERR is None:
        _STDERR = Console(stderr=True, highlight=False, soft_wrap=True)
    return _STDERR


def log(message: str) -> None:
    """One line on stderr (process 0's alone over several processes)."""
    if hosts.is_leader():
        stderr().print(message, markup=False)


def is_terminal() -> bool:
    return sys.stderr.isatty()
