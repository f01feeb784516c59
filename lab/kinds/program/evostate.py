"""The program search's checkpoint: an ``Evolution``'s state as numpy arrays (what the core's
loop saves with orbax) and back, so that a resumed run retraces an uninterrupted one."""

from __future__ import annotations

from collections import deque

import numpy as np

from lab.core.checkpoints import (
    array_to_strings,
    generator_state,
    set_generator_state,
    strings_to_array,
)
from lab.kinds.program.evolution import Evolution, Member
from lab.kinds.program.ir import Program, symbolic_hash


def state(evo: Evolution, generation: int) -> dict:
    """The search state after ``generation`` as numpy arrays (an orbax checkpoint).

    ``members``: the population in order, then the best so far: stacked genotypes
    (``op, a, b, k: [P + 1, L]``, ``out``, ``n``), ``key`` and ``parent`` (rows of ``hashes``,
    every key the state names as ASCII bytes; -1: none), ``fitness``, ``born``.
    ``met``: which hashes the run has met. ``failed``: which hashes the hurdle cut, at what
    fitness. Then the hurdle's windows (padded), counters and the generator.
    """
    members, failed = [*evo.population, evo.best], evo.cache.failed
    names = list(dict.fromkeys([m.key for m in members] + list(failed) +
                               [m.parent for m in members if m.parent is not None] +
                               sorted(evo.met)))
    row = {k: i for i, k in enumerate(names)}
    length = max(len(m.program) for m in members)
    genomes = [m.program.to_arrays(length) for m in members]
    return {
        "generation": np.asarray(generation, np.int64),
        "members": {**{f: np.stack([g[f] for g in genomes]) for f in genomes[0]},
                    "key": np.asarray([row[m.key] for m in members], np.int32),
                    "parent": np.asarray([row.get(m.parent, -1) for m in members], np.int32),
                    "fitness": np.asarray([m.fitness for m in members], np.float64),
                    "born": np.asarray([m.born for m in members], np.int64)},
        "hashes": strings_to_array(names),
        "met": np.asarray([k in evo.met for k in names]),
        "failed": {"cut": np.asarray([k in failed for k in names]),
                   "fitness": np.asarray([failed.get(k, np.nan) for k in names], np.float64)},
        "window": _padded(evo.window), "full_window": _padded(evo.full_window),
        "since_best": np.asarray(evo.since_best, np.int64),
        "restarts": np.asarray(evo.restarts, np.int64), "rng": generator_state(evo.rng)}


def restore(evo: Evolution, tree: dict) -> int:
    """Puts the search where ``state`` found it; returns the next generation."""
    names, m = array_to_strings(tree["hashes"]), tree["members"]

    def member(i: int) -> Member:
        genome = {f: m[f][i] for f in ("op", "a", "b", "k", "out", "n")}
        parent = int(m["parent"][i])
        return Member(Program.from_arrays(genome, evo.start.name, evo.start.sig),
                      names[int(m["key"][i])],
                      float(m["fitness"][i]), int(m["born"][i]),
                      names[parent] if parent >= 0 else None)
    *population, evo.best = [member(i) for i in range(len(m["key"]))]
    evo.population = deque(population)
    evo.since_best, evo.restarts = int(tree["since_best"]), int(tree["restarts"])
    for window, saved in ((evo.window, tree["window"]),
                          (evo.full_window, tree["full_window"])):
        window.clear()
        window.extend(saved["values"][:int(saved["size"])].tolist())
    cut = tree["failed"]
    evo.cache.failed.update({k: float(f) for k, f, c in zip(
        names, cut["fitness"], cut["cut"], strict=True) if c})
    set_generator_state(evo.rng, tree["rng"])
    first = int(tree["generation"]) + 1
    met = tree.get("met")  # absent from checkpoints older than the field: what they hold
    evo.met = ({k for k, flag in zip(names, met, strict=True) if flag} if met is not None
                else {x.key for x in [*population, evo.best]})
    for p in population:
        evo.cache.symbolic.setdefault(symbolic_hash(p.program), (p.key, None))
    return first


def _padded(window: deque) -> dict[str, np.ndarray]:
    """A bounded deque of floats as ``values: [maxlen] float64`` (NaN-padded) and ``size``."""
    values = list(window) + [np.nan] * (window.maxlen - len(window))
    return {"values": np.asarray(values, np.float64), "size": np.asarray(len(window), np.int64)}
