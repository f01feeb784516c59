"""Search spaces: what a program search needs to know about its programs' signature.

The evolution (``evolution``), its stages after the search (``finalize``) and the driver
(``search``) are the same for every signature; a ``Space`` gives them the rest:

* ``rule``: the family the scorers evaluate (a population of genomes is one vmap);
* ``genome(p, length, multiplier)``: the interpreter genome a program is scored as;
* ``keys(genomes)``: ``(fingerprint, hash, cache key)`` per genome, batched: the signature's own
  fingerprint procedure, the one every representation of the signature shares;
* ``admissible(programs)``: a reason per program ("" when it may be scored): a drift is checked
  against the Mirror-Learning constraints on the grid before any PPO run;
* ``scorer(cfg, rule, store, mesh, budget, scale)``: the run's scorer, or one like it at another
  budget;
* ``grid``: multipliers of the learning rate each program is scored at (the best counts);
* ``row``: the ``kind`` and family ``name`` its candidates are stored under, so that ``lab
  inspect``, ``replay`` and ``export`` treat them as every candidate of that kind.

``UPDATE`` programs are update rules on the supervised suites (kind ``program``); ``DRIFT``
programs are PPO objectives on the RL suites, stored as kind ``drift``, family ``program``;
``SCHEDULE`` programs are learning-rate schedules of Adam on the supervised suites, stored as kind
``program``, family ``schedule(adam)`` (an update rule: Adam's step times the schedule);
``JOINT`` programs are update rules with their schedule (they read the horizon ``T``), scored
as update rules are and stored as kind ``program``, family ``joint``, keyed by the joint
fingerprint over a whole run (``hashing.run_fingerprints``: the update-rule probe at two
horizons).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lab.core import hashing
from lab.core.fitness import Scorer
from lab.kinds.program.ir import Program, simplify
from lab.kinds.program.programs import genome_of, joint_rule, program_rule
from lab.kinds.program.signatures import DRIFT, JOINT, SCHEDULE, UPDATE, Signature


class UpdateSpace:
    """Update rules (``g, w, lr, t, m, v -> update, m, v``), scored against tuned Adam."""

    sig: Signature = UPDATE
    row = ("program", "program")

    def __init__(self, cfg):
        self.rule = program_rule()
        self.grid = tuple(float(m) for m in cfg.search.lr_grid)

    def genome(self, p: Program, length: int, multiplier: float = 1.0) -> dict:
        return genome_of(simplify(p), length, multiplier)

    def keys(self, genomes: list) -> list[tuple[np.ndarray, str, str]]:
        return hashing.fingerprints(self.rule, genomes)

    def admissible(self, programs: list[Program], length: int) -> list[str]:
        return [""] * len(programs)

    def scorer(self, cfg, rule, store=None, mesh=None, budget: int | None = None,
               scale: int = 1):
        from lab.core.fitness import suite_scorer
        return suite_scorer(cfg, rule, store, mesh, budget, scale, cfg.search.lr_anchor,
                            cfg.search.worst_task)


class DriftSpace:
    """Drift programs (``r, A, progress -> drift``), PPO objectives scored against PPO-clip; the
    constraints are checked on the grid first and a violator is never trained."""

    sig: Signature = DRIFT
    row = ("drift", "program")
    grid = (1.0,)  # PPO's settings are each environment's own: no learning-rate grid

    def __init__(self, cfg):
        from lab.kinds.drift.objectives import programs
        self.rule = programs()

    def genome(self, p: Program, length: int, multiplier: float = 1.0) -> dict:
        if multiplier != 1.0:
            raise ValueError("a drift program has no learning rate to scale")
        return genome_of(simplify(p), length)

    def keys(self, genomes: list) -> list[tuple[np.ndarray, str, str]]:
        from lab.kinds.drift.objectives import fingerprints
        return [(fp, h, h) for fp, h in fingerprints(self.rule, genomes)]

    def admissible(self, programs: list[Program], length: int) -> list[str]:
        from lab.kinds.drift.objectives import check
        if not programs:
            return []
        genomes = [self.genome(p, length) for p in programs]
        batch = _padded_stack(genomes, _bucket(len(genomes)))
        return list(check(self.rule, batch)[1][:len(programs)])

    def scorer(self, cfg, rule, store=None, mesh=None, budget: int | None = None,
               scale: int = 1):
        from lab.kinds.drift.scoring import drift_scorer
        return drift_scorer(cfg, rule, store, mesh, budget, scale)


class ScheduleSpace:
    """Schedules (``t, T -> multiplier``) of Adam's step, scored against tuned Adam at every
    multiplier of the learning-rate grid, as update rules are; keyed by the schedule's curve (the
    fingerprint optax's schedules share). A schedule negative, zero everywhere, or beyond
    ``schedules.MAX_MULTIPLIER`` on the grid is not scored."""

    sig: Signature = SCHEDULE

    def __init__(self, cfg):
        from lab.kinds.program.schedules import schedule_rule
        self.rule = schedule_rule(cfg.rule.max_len + 1)
        self.row = ("program", self.rule.name)
        self.grid = tuple(float(m) for m in cfg.search.lr_grid)

    def genome(self, p: Program, length: int, multiplier: float = 1.0) -> dict:
        return genome_of(simplify(p), length, multiplier)

    def keys(self, genomes: list) -> list[tuple[np.ndarray, str, str]]:
        from lab.kinds.program.schedules import fingerprints
        return [(fp, h, h) for fp, h in fingerprints(genomes)]

    def admissible(self, programs: list[Program], length: int) -> list[str]:
        from lab.kinds.program.schedules import problems
        return problems([self.genome(p, length) for p in programs]) if programs else []

    def scorer(self, cfg, rule, store=None, mesh=None, budget: int | None = None,
               scale: int = 1):
        from lab.core.fitness import suite_scorer
        return suite_scorer(cfg, rule, store, mesh, budget, scale, cfg.search.lr_anchor,
                            cfg.search.worst_task)


class JointSpace(UpdateSpace):
    """Update rules with their schedule (``g, w, lr, t, T, m, v -> update, m, v``), scored
    against tuned Adam as update rules are; keyed by the joint fingerprint."""

    sig: Signature = JOINT
    row = ("program", JOINT.name)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.rule = joint_rule()

    def keys(self, genomes: list) -> list[tuple[np.ndarray, str, str]]:
        return hashing.run_fingerprints(self.rule, genomes)


SPACES = {UPDATE.name: UpdateSpace, DRIFT.name: DriftSpace, SCHEDULE.name: ScheduleSpace,
          JOINT.name: JointSpace}


def space_of(cfg) -> Any:
    """The space of a ``kind: program`` config (``rule.signature``)."""
    return SPACES[cfg.rule.signature](cfg)


def _bucket(n: int) -> int:
    """A padded batch size (powers of two from 16): few compiled shapes for any count."""
    return max(16, 1 << (n - 1).bit_length())


def _padded_stack(genomes: list, size: int) -> dict:
    padded = genomes + [genomes[-1]] * (size - len(genomes))
    return {k: np.stack([np.asarray(g[k]) for g in padded]) for k in padded[0]}


def scorer_at(cfg, setup, space, budget: int, scale: int = 1, rule=None,
              seeds: int = 0) -> Scorer:
    """A scorer like the run's at another budget, or ``scale`` times its budget (references at
    that budget), or for another rule family (the hurdle, the funnel, the ES on constants), or
    on ``seeds`` seeds (0: the run's; references on as many; a task of ``task_seeds`` on the
    larger of its count and ``seeds``)."""
    if seeds and seeds != cfg.seeds:
        cfg = dataclasses.replace(cfg, seeds=seeds, task_seeds={
            k: max(n, seeds) for k, n in cfg.task_seeds.items()})
    return space.scorer(cfg, rule or setup.rule, setup.store, setup.mesh, budget, scale)


def short_scorer(cfg, setup, space=None) -> Scorer | None:
    """The hurdle's short-run scorer (None without a hurdle)."""
    s = cfg.search
    if not s.hurdle:
        return None
    budget = s.hurdle_budget or cfg.budget // 5
    if budget <= 0:
        raise ValueError("search.hurdle_budget: set it (or budget) when search.hurdle > 0: the "
                         "short run needs a number of inner steps")
    return scorer_at(cfg, setup, space or space_of(cfg), budget)
