"""Scoring drift objectives on an RL suite: fitness choices, PPO references, constraint rejection.

``DriftScorer`` is a ``lab.core.fitness.Scorer``, so the core's ES driver
(``lab.core.es.ESDriver``), cache and store run a drift search as they run any other continuous
one. Before any RL run, every member is checked on the drift grid
(``lab.kinds.drift.objectives.check``); a violating member is rejected: it is not trained, it
scores the worst fitness ``+C`` and its reason is recorded. The valid members are packed to the
front, so with ``evaluator.chunk`` set, chunks that would only hold rejected members are not run.

Fitness (``search.fitness``), lower is better as everywhere in the lab:

* ``final_return``: minus the mean over environments (and seeds) of the final return;
* ``mean_return``: minus the mean of the mean return over training (the area under the learning
  curve: for environments such as CartPole where the final return saturates);
* ``ppo_normalized`` (default): the mean over environments of ``1 - (R - R_random) / (R_ppo -
  R_random)`` on the final return, clipped to +-C: 0 = PPO-clip at the same budget and seeds,
  1 = a uniformly random policy, negative = better than PPO (``normalized_return``: where PPO
  barely beats random, the denominator has a floor, so a higher return always scores lower).

References (the ``rl`` family of ``lab.core.references``): PPO-clip's and the random policy's mean
final return per (environment, budget, seeds) on the fixed evaluation seeds; shipped in
``tasks/references.json``, else computed once and cached in the store.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lab.core.evaluate import evaluate, task_keys
from lab.core.fitness import CLIP, EvalContext, seed_counts, seed_keys, suite_fitness, values_digest
from lab.core.references import Family, References, register_family
from lab.core.rule import population_size, stack_genomes
from lab.kinds.drift.objectives import Objective, check, ppo_clip
from lab.kinds.drift.ppo import RL_VERSION, make_train, random_returns
from tasks import task_version
from tasks.rl import EnvTask

FITNESS = ("ppo_normalized", "final_return", "mean_return")
MIN_SCALE = 0.1  # the normalizing gap is at least this fraction of the returns' magnitude


def scale(ppo: float, random: float) -> float:
    """The denominator of normalized scores: ``R_ppo - R_random``, but at least ``MIN_SCALE``
    times the larger magnitude of the two (and 1e-3), so that a score keeps its direction (a
    higher return always scores lower) where PPO-clip barely beats a random policy, or does
    not (very short budgets)."""
    return max(ppo - random, MIN_SCALE * max(abs(ppo), abs(random)), 1e-3)


def normalized_return(returns, ppo: float, random: float) -> np.ndarray:
    """``clip((R_ppo - R) / scale, -C, C)`` elementwise, ``scale`` = ``R_ppo - R_random`` where
    PPO-clip clearly beats a random policy (then this is ``1 - (R - R_random) / (R_ppo -
    R_random)``): 0 = PPO-clip, 1 = random policy, lower is better; non-finite returns score
    +C."""
    returns = np.asarray(returns, np.float64)
    with np.errstate(all="ignore"):
        s = (ppo - returns) / scale(ppo, random)
    return np.where(np.isfinite(s), np.clip(s, -CLIP, CLIP), CLIP)


def worst(fitness: str, ref: dict) -> float:
    """The fitness of a diverged or rejected member: +C for ``ppo_normalized``; for raw returns
    minus the return that normalizes to +C (finite, so means, ranks and the store stay
    defined)."""
    if fitness == "ppo_normalized":
        return CLIP
    return -(ref["ppo"] - CLIP * scale(ref["ppo"], ref["random"]))


def task_fitness(m: dict, fitness: str, ref: dict) -> np.ndarray:
    """[pop] fitness of one environment from its ``[pop, seeds]`` metrics; a member with any
    diverged seed scores ``worst``."""
    bad = np.any(np.asarray(m["diverged"]), axis=-1)
    if fitness == "ppo_normalized":
        with np.errstate(all="ignore"):
            r = np.mean(np.asarray(m["final_return"], np.float64), axis=-1)
        f = normalized_return(r, ref["ppo"], ref["random"])
    else:
        key = "final_return" if fitness == "final_return" else "mean_return"
        with np.errstate(all="ignore"):
            f = -np.mean(np.asarray(m[key], np.float64), axis=-1)
    w = worst(fitness, ref)
    return np.where(bad | ~np.isfinite(f), w, f)


def level_fitness(full: dict, ppo: np.ndarray, random: np.ndarray) -> np.ndarray:
    """[pop] normalized regret of each member on its own level (``ppo``, ``random``: [pop]
    references); a member with a diverged seed scores +C."""
    with np.errstate(all="ignore"):
        r = np.mean(np.asarray(full["final_return"], np.float64), axis=-1)
    f = np.array([normalized_return(r[i], ppo[i], random[i]) for i in range(r.shape[0])],
                 np.float64)
    bad = np.any(np.asarray(full["diverged"]), axis=-1)
    return np.where(bad | ~np.isfinite(f), CLIP, f)


def reference_context(task: EnvTask) -> str:
    return f"rl-{task_version(task)}-{RL_VERSION}"


def reference_pair(refs: References, task: EnvTask, budget: int, seeds: int) -> dict:
    """``{"ppo", "random"}`` mean final returns: what normalized scores divide by."""
    return {"ppo": refs.value(task, "ppo_clip", budget, seeds),
            "random": refs.value(task, "random", budget, seeds)}


def compute_reference(task: EnvTask, which: str, budget: int, seeds: int,
                      mesh: Mesh | None = None) -> dict:
    """PPO-clip (eps 0.2) or the random policy on the fixed evaluation seeds:
    ``{"value": mean final return, "values": per seed}``."""
    keys = task_keys(seeds, 1)
    if which == "random":
        returns = random_returns(task, budget, keys[0])
    elif which == "ppo_clip":
        o = ppo_clip()
        m = evaluate(make_train(task, o, budget), stack_genomes([o.genome]), keys, mesh)
        returns = np.asarray(m["final_return"][0], np.float64)
    else:
        raise ValueError(f"unknown RL reference {which!r} (ppo_clip or random)")
    return {"value": float(np.mean(returns)), "values": [float(x) for x in returns]}


RL = register_family(Family("rl", "rl", "final_return", ("ppo_clip", "random"),
                            reference_context, compute_reference))


class DriftScorer:
    """Scores populations of one drift family on one RL suite (one compiled function per
    environment): a ``lab.core.fitness.Scorer``."""

    def __init__(self, suite: str, suite_version: str, tasks: list[EnvTask],
                 objective: Objective, budget: int, seeds: int, refs: dict[str, dict],
                 fitness: str = "ppo_normalized", mesh: Mesh | None = None, chunk: int = 0,
                 scale: int = 1, worst_task: float = 0.0,
                 task_seeds: dict[str, int] | None = None):
        if fitness not in FITNESS:
            raise ValueError(f"unknown RL fitness {fitness!r} (one of {', '.join(FITNESS)})")
        self.tasks, self.rule, self.seeds, self.refs = tasks, objective, seeds, refs
        self.fitness, self.chunk, self.budget, self.scale = fitness, chunk, budget, scale
        self.worst_task = worst_task
        self.task_seeds, other = seed_counts(tasks, seeds, task_seeds)
        self.mesh = mesh
        self.trains = {t.name: make_train(t, objective, self.steps(t)) for t in tasks}
        self.context = EvalContext(suite, suite_version, budget, seeds, 0.0, (),
                                   meta_loss=f"rl-{fitness}", evaluator=f"rl-{RL_VERSION}",
                                   refs=values_digest(refs), scale=scale, worst_task=worst_task,
                                   task_seeds=values_digest(other) if other else "")
        self.zero = ("PPO-clip" if fitness == "ppo_normalized" else
                     f"minus the {fitness.replace('_', ' ')}")
        self.label = f"fitness ({fitness}; lower is better, 0 = {self.zero})"

    def steps(self, task: EnvTask) -> int:
        return int((self.budget or task.steps) * self.scale)

    def seeds_of(self, name: str) -> int:
        """Seeds environment ``name`` is scored on."""
        return self.task_seeds[name]

    def score(self, genomes: Any, generation: int | None = None,
              slots: np.ndarray | None = None, stream: int = 0,
              levels: dict[str, tuple] | None = None) -> dict[str, Any]:
        """Checks, then trains every valid member on every environment.

        ``levels`` (a curriculum's, ``lab.kinds.drift.curriculum``): by environment name,
        ``(level train, overrides [pop], ppo [pop], random [pop])``: each member trains on its
        own level and scores its regret there (``level_fitness``); other environments as they
        are.

        Returns:
          ``{"fitness": [pop], "tasks": {name: {"fitness": [pop], "final_return": [pop, seeds],
          "mean_return", "episodes", "curve": [pop, seeds, K], "diverged"}}, "rejected": [pop]
          bool, "reasons": [pop] str, "seconds"}``; rejected members hold NaN returns.
        """
        start = time.perf_counter()
        pop = population_size(genomes)
        genomes = jax.tree.map(np.asarray, genomes)
        valid, reasons = check(self.rule, genomes)
        keys = seed_keys(self.task_seeds, pop, generation, slots, stream)
        order = np.flatnonzero(valid)
        per_task = {}
        for task in self.tasks:
            level = (levels or {}).get(task.name)
            train, inputs = self.trains[task.name], genomes
            if level is not None:
                train, inputs = level[0], (genomes, level[1])
            n = self.task_seeds[task.name]
            m = self.evaluate_valid(train, inputs, keys[n], order, pop) if order.size else None
            full = scatter(m, order, pop, n)
            full["fitness"] = (task_fitness(full, self.fitness, self.refs[task.name])
                               if level is None else level_fitness(full, level[2], level[3]))
            full["fitness"] = np.where(valid, full["fitness"],
                                       worst(self.fitness, self.refs[task.name]))
            per_task[task.name] = full
        fitness = suite_fitness([m["fitness"] for m in per_task.values()], self.worst_task)
        return {"fitness": fitness, "tasks": per_task, "rejected": ~valid, "reasons": reasons,
                "seconds": time.perf_counter() - start}

    def row_metrics(self, result: dict, i: int) -> dict:
        return row_metrics(result, i)

    def evaluate_valid(self, train, genomes, keys, order, pop):
        """``train`` on the valid members (``order``), packed to the front and padded back to
        ``pop`` rows (one compiled shape); chunks of padding only are skipped. ``genomes`` is
        whatever ``train`` takes first, every leaf ``[pop, ...]`` (a level train's
        ``(genome, overrides)``)."""
        n = order.size
        if self.chunk > 0:
            size = self.chunk
            rows = int(np.ceil(n / size)) * size
        else:
            rows = pop
        idx = np.concatenate([order, np.repeat(order[-1:], rows - n)])
        packed = jax.tree.map(lambda x: x[idx], genomes)
        m = evaluate(train, packed, keys[idx], self.mesh, self.chunk)
        return {k: v[:n] for k, v in m.items()}


def drift_scorer(cfg, objective: Objective, store=None, mesh: Mesh | None = None,
                 budget: int | None = None, scale: int = 1) -> DriftScorer:
    """The scorer of a run config on an RL suite: PPO with each member's drift on the suite's
    environments, normalized by PPO-clip's and a random policy's returns (``search.fitness``,
    default ``ppo_normalized``); ``budget`` and ``scale`` change the environment steps (the
    references are PPO-clip's and the random policy's at those steps); ``search.worst_task``,
    where the search has it, weighs the worst environment (``suite_fitness``)."""
    import tasks as registry
    budget = cfg.budget if budget is None else budget
    refs = References(store, mesh)
    suite = registry.get_suite(cfg.suite)
    counts, _ = seed_counts(suite, cfg.seeds, cfg.task_seeds)
    pairs = {t.name: reference_pair(refs, t, (budget or t.steps) * scale, counts[t.name])
             for t in suite}
    return DriftScorer(cfg.suite, registry.suite_version(cfg.suite), suite, objective,
                       budget, cfg.seeds, pairs, getattr(cfg.search, "fitness", FITNESS[0]),
                       mesh, cfg.evaluator.chunk, scale, getattr(cfg.search, "worst_task", 0.0),
                       cfg.task_seeds)


def scatter(m: dict | None, order: np.ndarray, pop: int, seeds: int) -> dict:
    """Metrics of the evaluated members back at their rows; rejected rows NaN (diverged)."""
    shapes = {"final_return": (seeds,), "mean_return": (seeds,), "episodes": (seeds,),
              "diverged": (seeds,)}
    if m is not None:
        shapes["curve"] = m["curve"].shape[2:]
        shapes["curve"] = (seeds, *shapes["curve"])
    else:
        shapes["curve"] = (seeds, 1)
    out = {}
    for k, shape in shapes.items():
        fill = True if k == "diverged" else np.nan
        arr = np.full((pop, *shape), fill, bool if k == "diverged" else np.float64)
        if m is not None:
            arr[order] = m[k]
        out[k] = arr
    return out


def row_metrics(result: dict, i: int) -> dict:
    """Per-environment metrics of member i, JSON-able (``lab.core.fitness.row_metrics`` for RL)."""
    out = {}
    for name, m in result["tasks"].items():
        with warnings.catch_warnings():  # a rejected member's curve is all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = np.nanmean(np.asarray(m["curve"][i], np.float64), axis=0).tolist()
        out[name] = {"fitness": float(m["fitness"][i]),
                     "final_return": [float(x) for x in m["final_return"][i]],
                     "mean_return": [float(x) for x in m["mean_return"][i]],
                     "curve": curve, "diverged": bool(m["diverged"][i].any())}
        if result.get("rejected") is not None and result["rejected"][i]:
            out[name]["rejected"] = result["reasons"][i]
    return out

