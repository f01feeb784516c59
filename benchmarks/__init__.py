"""Benchmarks behind ``lab bench NAME [--json]``.

Each benchmark is a module with ``run(...) -> dict`` (strict-JSON-able, plain numbers),
``main(argv) -> int``, ``GATED`` (the figures gates read: plain numbers) and ``SMALL`` (arguments
for a run of seconds, the tests'); with ``--json`` its main prints exactly one strict JSON
document on stdout and everything else on stderr. Modules are imported lazily, so listing
benchmarks costs nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

# name -> module path; the module defines ``main(argv: list[str]) -> int``.
BENCHMARKS: dict[str, str] = {
    "lopt": "benchmarks.lopt",
    "population": "benchmarks.population",
    "programs": "benchmarks.programs",
    "rl": "benchmarks.rl",
    "scaling": "benchmarks.scaling",
}


def run_benchmark(name: str, argv: list[str]) -> int:
    """Runs benchmark ``name`` with command-line arguments ``argv``; returns its exit status.

    Raises:
      ValueError: for an unknown name, naming the closest and the known benchmarks.
    """
    if name not in BENCHMARKS:
        from lab.names import hint
        raise ValueError(f"unknown benchmark {name!r}{hint(name, BENCHMARKS)} "
                         f"(known benchmarks: {', '.join(sorted(BENCHMARKS))})")
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(list(argv)) or 0)


def emit(result: dict, as_json: bool, table: Callable[[dict], None]) -> None:
    """One strict JSON document on stdout (``--json``), else the human table."""
    if as_json:
        sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
        sys.stdout.flush()
    else:
        table(result)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
