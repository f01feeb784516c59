"""Benchmarks behind ``lab bench NAME [--json]``.

Each benchmark is a module with ``run(...) -> dict`` (strict-JSON-able, plain numbers) and
``main(argv) -> int``; with ``--json`` its main prints exactly one strict JSON document on stdout
and everything else on stderr. Modules are imported lazily, so listing benchmarks costs nothing.
"""

from __future__ import annotations

import difflib
import importlib

# name -> module path; the module defines ``main(argv: list[str]) -> int``.
BENCHMARKS: dict[str, str] = {
    "population": "benchmarks.population",
}


def run_benchmark(name: str, argv: list[str]) -> int:
    """Runs benchmark ``name`` with command-line arguments ``argv``; returns its exit status.

    Raises:
      ValueError: for an unknown name, naming the closest and the known benchmarks.
    """
    if name not in BENCHMARKS:
        known = sorted(BENCHMARKS)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown benchmark {name!r}; {hint}known benchmarks: {', '.join(known)}")
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(list(argv)) or 0)
