"""The store's SQL: the schema of a new store, the migrations of older ones, and the value
conversions its columns use (``lab.core.store``)."""

from __future__ import annotations

import json
import math
from typing import Any

from lab.jsonio import dumps

SCHEMA = """
CREATE TABLE runs (
  id TEXT PRIMARY KEY, name TEXT, kind TEXT,
  status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
  config TEXT, config_hash TEXT, code_version TEXT, context TEXT, context_json TEXT,
  created REAL, finished REAL, best REAL, best_hash TEXT, generations INTEGER NOT NULL DEFAULT 0);
CREATE INDEX runs_name ON runs(name, created);
CREATE TABLE candidates (
  hash TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, genome BLOB NOT NULL, readable TEXT,
  fingerprint BLOB, parent TEXT, created REAL);
CREATE INDEX candidates_parent ON candidates(parent);
CREATE TABLE members (
  run_id TEXT NOT NULL REFERENCES runs(id), hash TEXT NOT NULL REFERENCES candidates(hash),
  generation INTEGER NOT NULL, fitness REAL, final REAL, selection REAL,
  PRIMARY KEY (run_id, hash));
CREATE INDEX members_fitness ON members(run_id, fitness);
CREATE INDEX members_hash ON members(hash);
CREATE TABLE evaluations (
  hash TEXT NOT NULL, context TEXT NOT NULL, fitness REAL, diverged INTEGER NOT NULL,
  metrics TEXT, hits INTEGER NOT NULL DEFAULT 0, first_run TEXT, first_generation INTEGER,
  created REAL, PRIMARY KEY (hash, context));
CREATE TABLE generations (
  run_id TEXT NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL, best REAL, mean REAL,
  hits INTEGER, misses INTEGER, hit_rate REAL, evaluated INTEGER, seconds REAL,
  candidates_per_s REAL, checkpoint TEXT, created REAL, diverged REAL,
  PRIMARY KEY (run_id, idx));
CREATE TABLE refs (
  task TEXT NOT NULL, budget INTEGER NOT NULL, seeds INTEGER NOT NULL, which TEXT NOT NULL,
  context TEXT NOT NULL, metric TEXT NOT NULL, value REAL, seed_values TEXT, lr REAL,
  created REAL, PRIMARY KEY (task, budget, seeds, which, context));
"""


def real(x: Any) -> float | None:
    """A value for a REAL column (NumPy/JAX scalars too); NaN and Inf become NULL."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def integer(x: Any) -> int | None:
    return None if x is None else int(x)  # sqlite3 cannot bind np.int64


GEN_STATS = {"best": real, "mean": real, "hits": integer, "misses": integer, "hit_rate": real,
             "evaluated": integer, "seconds": real, "candidates_per_s": real,
             "checkpoint": lambda x: None if x is None else str(x),
             "diverged": real}  # fmt: skip
# Earlier schema versions -> the statements that bring a store to the next one.
MIGRATIONS = {
    1: ("ALTER TABLE generations ADD COLUMN diverged REAL",),
    # references name what they measure: version 2 kept RL returns in a ``final_loss`` column
    # (its RL contexts start with "rl-"), with a learning rate of 0
    2: ("CREATE TABLE refs_v3 (task TEXT NOT NULL, budget INTEGER NOT NULL, seeds INTEGER NOT "
        "NULL, which TEXT NOT NULL, context TEXT NOT NULL, metric TEXT NOT NULL, value REAL, "
        "seed_values TEXT, lr REAL, created REAL, PRIMARY KEY (task, budget, seeds, which, "
        "context))",
        "INSERT INTO refs_v3 SELECT task, budget, seeds, optimizer, context, CASE WHEN context "
        "LIKE 'rl-%' THEN 'final_return' ELSE 'final_loss' END, final_loss, losses, CASE WHEN "
        "context LIKE 'rl-%' THEN NULL ELSE lr END, created FROM refs",
        "DROP TABLE refs",
        "ALTER TABLE refs_v3 RENAME TO refs"),
    # a run may rank its finalists by another score than the final one (a program search that
    # selects at a longer horizon): members gain it
    3: ("ALTER TABLE members ADD COLUMN selection REAL",),
}


def to_json(obj: Any) -> str:
    return dumps(obj, indent=None)


def from_json(text: str | None, empty: Any = None) -> Any:
    return json.loads(text) if text else empty
