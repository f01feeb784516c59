"""What every kind of update rule shares: scored on supervised suites against tuned Adam, hashed
by the functional fingerprint of update rules, replayed and exported against tuned optax
baselines. ``update_rule_kind`` fills those fields of a ``Kind``; a kind gives the rest (its
config sections, rule, driver, conformance cases) and overrides what it does differently."""

from __future__ import annotations

from typing import Any

from lab.core import hashing
from lab.core.fitness import suite_scorer
from lab.core.kind import Kind
from lab.core.optimizers import spec_for
from lab.core.replay import readme_tables, replay, replay_update_rule
from lab.core.target import Target


def export_update_rule(target: Target, store, suite: str, seeds: int) -> dict:
    """``Kind.export`` of an update rule: its held-out scores against the tuned baselines."""
    return {"heldout": replay(target, suite, seeds, store=store)}


def update_rule_kind(**fields: Any) -> Kind:
    """A ``Kind`` whose candidates are update rules (``lab.core.rule.UpdateRule``)."""
    shared = {"make_scorer": suite_scorer, "fingerprint": hashing.fingerprint,
              "describe_function": hashing.describe_function, "replay": replay_update_rule,
              "export": export_update_rule, "readme": readme_tables,
              "check_baseline": spec_for}
    return Kind(**{**shared, **fields})
