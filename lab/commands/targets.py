"""Targets accepted by ``inspect``, ``replay`` and ``export`` (DESIGN.md, "The contract").

* a run id (a unique prefix, or a run name: its latest run) -> the run's best candidate;
* ``RUN:RANK`` -> the run's k-th best candidate (0 = best);
* ``PREFIX:REST`` for a kind that registers a prefix: ``baseline:NAME(key=value, ...)`` with
  optax keyword names, ``program:PATH`` (a program text file), ...;
* a path to an artifact folder (``discovered/NAME``);
* ``hash:HEX`` -> any stored candidate (its store key, or its functional hash, by prefix).
"""

from __future__ import annotations

import re
from pathlib import Path

from lab import treeio
from lab.commands.artifacts import load_artifact
from lab.core.hashing import digest
from lab.core.kind import by_prefix, get, registry
from lab.core.store import Store, StoreError
from lab.core.target import Target


def needs_store(text: str) -> bool:
    """Whether resolving ``text`` reads the store (a kind's prefix target does not)."""
    m = re.match(r"^([a-z_]+):", text.strip())
    return not (m and by_prefix(m.group(1)) is not None)


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


def _need_store(store: Store | None, text: str) -> Store:
    if store is None:
        raise ValueError(f"{text}: needs a store (--store PATH or LAB_STORE)")
    return store


def _from_candidate(store: Store, row: dict, text: str, run: dict | None = None,
                    rank: int | None = None) -> Target:
    rule = get(row["kind"]).rule_from_name(row["name"])
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
    m = re.match(r"^([a-z_]+):(.*)$", text, re.S)
    if m and m.group(1) == "hash":
        return _hash(m.group(2), store)
    kind = by_prefix(m.group(1)) if m else None
    if kind is not None:
        return kind.resolve(m.group(2))
    path = Path(text)
    if path.is_dir() or (path / "rule.json").exists():
        return load_artifact(path)
    m = re.match(r"^(.+):(\d+)$", text)
    store = _need_store(store, text)
    prefixes = ", ".join(f"{k.prefix}:..." for k in registry().values() if k.prefix)
    try:
        if m:
            return _from_run(store, m.group(1), int(m.group(2)), text)
        return _from_run(store, text, 0, text)
    except StoreError as e:
        raise ValueError(f"unknown target {text!r}: {e} (other forms: {prefixes}, hash:HEX, "
                         "RUN:RANK, an artifact folder)") from None
