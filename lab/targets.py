"""Targets accepted by ``inspect``, ``replay`` and ``export`` (DESIGN.md, "The contract").

* a run id (a unique prefix, or a run name: its latest run) -> the run's best candidate;
* ``RUN:RANK`` -> the run's k-th best candidate (0 = best);
* ``baseline:NAME`` or ``baseline:NAME(key=value, ...)`` with optax keyword names;
* ``program:PATH`` -> a program text file (registered by the program kind);
* a path to an artifact folder (``discovered/NAME``);
* ``hash:HEX`` -> any stored candidate (its store key, or its functional hash, by prefix).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import treeio
from lab.hashing import digest
from lab.rules import rule_from_name
from lab.rules.base import UpdateRule
from lab.rules.baselines import baseline_from_target
from lab.store import Store, StoreError


@dataclasses.dataclass
class Target:
    """One candidate, resolved: its rule family, genome and outer learning rate.

    Attributes:
      text: what the user typed.
      rule, genome: the candidate.
      lr: the outer learning rate it is meant to run with (``Ctx.lr``).
      label: a short name for tables and plots.
      run: the run it comes from (a store row), if any; ``rank`` its rank there.
      store_hash: its key in the store's candidates table, if stored.
      fitness: its training fitness, if it comes from a run.
      artifact: the artifact folder it was loaded from, if any.
    """

    text: str
    rule: UpdateRule
    genome: Any
    lr: float
    label: str
    run: dict | None = None
    rank: int | None = None
    store_hash: str | None = None
    fitness: float | None = None
    artifact: Path | None = None


# prefix -> resolver(rest, store); later kinds register theirs (e.g. "program").
PREFIXES: dict[str, Callable[[str, Store | None], Target]] = {}


def register_prefix(prefix: str, resolver: Callable[[str, Store | None], Target]) -> None:
    PREFIXES[prefix] = resolver


def _baseline(rest: str, store: Store | None) -> Target:
    rule = baseline_from_target(rest)
    return Target(f"baseline:{rest}", rule, rule.genome, 1.0, f"baseline:{rest}")


def _program(rest: str, store: Store | None) -> Target:
    from lab.rules.program import MAX_LEN, genome_of, program_rule, read_program
    p = read_program(rest.strip())
    return Target(f"program:{rest}", program_rule(), genome_of(p, max(len(p), MAX_LEN)), 1.0,
                  f"program:{p.name}")


register_prefix("baseline", _baseline)
register_prefix("program", _program)


def _hash(rest: str, store: Store | None) -> Target:
    store = _need_store(store, f"hash:{rest}")
    hexpart = rest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,64}", hexpart):
        raise ValueError(f"hash:{rest}: expected at least 4 hex digits")
    try:
        row = store.candidate(hexpart)
    except StoreError:
        row = _by_function_hash(store, hexpart)
    return _from_candidate(store, row, f"hash:{rest}")


def _by_function_hash(store: Store, prefix: str) -> dict:
    found = [h for h, fp in store.fingerprinted()
             if digest(treeio.tree_from_npz(fp)).startswith(prefix)]
    if len(found) != 1:
        what = "no stored candidate" if not found else f"{len(found)} stored candidates"
        raise ValueError(f"hash:{prefix}: {what} with that hash in {store.path}")
    return store.candidate(found[0])


register_prefix("hash", _hash)


def _need_store(store: Store | None, text: str) -> Store:
    if store is None:
        raise ValueError(f"{text}: needs a store (--store PATH or LAB_STORE)")
    return store


def _from_candidate(store: Store, row: dict, text: str, run: dict | None = None,
                    rank: int | None = None) -> Target:
    rule = rule_from_name(row["kind"], row["name"])
    genome = treeio.tree_from_npz(row["genome"], source=f"candidate {row['hash']}")
    lr = 1.0
    if run is None:
        first = store.first_run(row["hash"])
        if first is not None:
            run = store.get_run(first)
    if run is not None:
        lr = float(run["config"].get("rule", {}).get("lr", 1.0))
    label = f"{run['name']}:{rank}" if run is not None and rank is not None else text
    return Target(text, rule, genome, lr, label, run=run, rank=rank, store_hash=row["hash"],
                  fitness=row.get("fitness"))


def _from_run(store: Store, ref: str, rank: int, text: str) -> Target:
    run = store.get_run(ref)
    rows = store.best_members(run["id"], k=rank + 1)
    if len(rows) <= rank:
        raise ValueError(f"{text}: run {run['id']} has {len(rows)} candidate(s); rank {rank} "
                         "does not exist (ranks start at 0)")
    return _from_candidate(store, rows[rank], text, run, rank)


def resolve(text: str, store: Store | None) -> Target:
    """Resolves any target form to a candidate; ``ValueError`` naming what is wrong otherwise."""
    text = text.strip()
    m = re.match(r"^([a-z]+):(.*)$", text, re.S)
    if m and m.group(1) in PREFIXES:
        return PREFIXES[m.group(1)](m.group(2), store)
    path = Path(text)
    if path.is_dir() or (path / "rule.json").exists():
        from lab.artifacts import load_artifact
        return load_artifact(path)
    m = re.match(r"^(.+):(\d+)$", text)
    store = _need_store(store, text)
    try:
        if m:
            return _from_run(store, m.group(1), int(m.group(2)), text)
        return _from_run(store, text, 0, text)
    except StoreError as e:
        raise ValueError(f"unknown target {text!r}: {e} (other forms: baseline:NAME, "
                         "program:PATH, hash:HEX, RUN:RANK, an artifact folder)") from None
