"""Fitness and scorers: the ``Scorer`` protocol, the evaluation context that keys the cache, and
the supervised scorer (``SuiteScorer``).

Supervised fitness is the per-task log loss ratio against tuned Adam, clipped; a suite's is the
mean over tasks: ``clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C)`` with ``ref`` the
mean over seeds of tuned Adam's final loss at the same budget; a diverged candidate scores ``+C``
(finite, so means and ranks stay defined). Lower is better everywhere, as in evosax 0.3, which
minimizes. Other domains (RL returns) bring their own scorer with the same protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from lab.core.evaluate import EVALUATOR_VERSION, evaluate, make_train, task_keys
from lab.core.rule import UpdateRule, population_size
from tasks.base import Task

CLIP = 5.0
EPS = 1e-8
META_LOSS = "log_final_loss_ratio_vs_tuned_adam"


def normalized_score(loss: np.ndarray, diverged: np.ndarray, ref: float,
                     floor: float = 0.0) -> np.ndarray:
    """``clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C)``; diverged or non-finite
    losses score +C. Elementwise over any shape."""
    loss = np.asarray(loss, np.float64)
    bad = np.asarray(diverged, bool) | ~np.isfinite(loss)
    with np.errstate(all="ignore"):
        f = np.log((np.maximum(loss - floor, 0.0) + EPS) / (max(ref - floor, 0.0) + EPS))
    return np.where(bad, CLIP, np.clip(np.nan_to_num(f, nan=CLIP), -CLIP, CLIP))


def suite_fitness(per_task: Sequence[np.ndarray], worst_task: float = 0.0) -> np.ndarray:
    """A suite's [pop] fitness from its tasks' [pop] fitnesses: their mean, plus ``worst_task`` x
    the largest of them above zero (the task most behind the reference), so a rule that fails
    one task pays for it beyond that task's share of the mean."""
    f = np.asarray(per_task, np.float64)
    mean = f.mean(axis=0)
    return mean + worst_task * np.maximum(f.max(axis=0), 0.0) if worst_task else mean


def task_fitness(final_loss: np.ndarray, diverged: np.ndarray, ref: float,
                 floor: float = 0.0) -> np.ndarray:
    """[pop, seeds] final losses -> [pop] fitness of the mean over seeds (diverged on any seed
    -> +CLIP)."""
    with np.errstate(all="ignore"):  # diverged seeds (inf, nan) score +C below
        loss = np.mean(np.asarray(final_loss, np.float64), axis=-1)
    return normalized_score(loss, np.any(np.asarray(diverged), axis=-1), ref, floor)


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Everything a score depends on besides the candidate: hashed into the cache key."""

    suite: str
    suite_version: str
    budget: int
    seeds: int
    lr: float
    lr_grid: tuple[float, ...]
    meta_loss: str = META_LOSS
    evaluator: str = EVALUATOR_VERSION
    refs: str = ""            # digest of the reference losses the fitness divides by
    generation: int | None = None
    slots: str = ""
    stream: int = 0
    lr_multipliers: tuple[float, ...] = ()  # per-candidate grid on lr, the best counts
    lr_per_task: bool = False  # the best multiplier per task counts (else the best on the mean)
    repeat: int = 0  # the j-th evaluation of a candidate (fresh data for each j)
    scale: int = 1  # budget multiplier (the funnel's larger runs)
    task_lr: str = ""  # digest of per-task factors on ``lr`` (``anchored_lrs``); "" if none
    worst_task: float = 0.0  # weight of the worst task in the suite's fitness (``suite_fitness``)
    task_seeds: str = ""  # digest of the tasks scored on other than ``seeds`` seeds; "" if none

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        # absent when unused, so that earlier context keys (and their cached scores) hold
        for key, unused in (("lr_multipliers", ()), ("lr_per_task", False), ("repeat", 0),
                            ("scale", 1), ("task_lr", ""), ("worst_task", 0.0),
                            ("task_seeds", "")):
            if doc[key] == unused:
                del doc[key]
        return doc

    def key(self) -> str:
        doc = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:24]

    def for_generation(self, generation: int, slots: np.ndarray, stream: int = 0) -> EvalContext:
        slot_id = hashlib.sha256(np.asarray(slots, np.int32).tobytes()).hexdigest()[:8]
        return dataclasses.replace(self, generation=generation, slots=slot_id, stream=stream)


class Scorer(Protocol):
    """Scores a batch of genomes of one family on a suite.

    Attributes:
      context: the evaluation context (its ``key()`` keys the cache with the candidate's hash).
      tasks: the suite's tasks; ``trains``: their train functions by task name.
      zero, label: what fitness 0 is, and the fitness axis' label (logs and plots).
      worst_task: the weight of the worst task in ``score``'s suite fitness (``suite_fitness``).

    ``seeds_of(name)`` is the number of seeds task ``name`` is scored on.
    """

    context: EvalContext
    tasks: list
    trains: dict
    zero: str
    label: str
    worst_task: float

    def score(self, genomes: Any, generation: int | None = None,
              slots: np.ndarray | None = None, stream: int = 0) -> dict[str, Any]:
        """``{"fitness": [pop], "tasks": {name: per-task metrics [pop, seeds, ...]}, ...}``;
        ``generation=None``: the fixed evaluation seeds, else that generation's keys with
        members of equal ``slots`` sharing them."""

    def row_metrics(self, result: dict, i: int) -> dict:
        """Per-task metrics of member ``i`` of a ``score`` result, JSON-able."""


FITNESS_LABEL = "fitness (log loss ratio vs tuned Adam; lower is better)"


class SuiteScorer:
    """Scores populations of one rule family on one supervised suite: one compiled function
    per task.

    Args:
      suite: suite name (for the context).
      tasks: the suite's tasks.
      rule: the rule family (its genome is what varies).
      budget: inner steps (0 = each task's default).
      seeds: seeds per candidate.
      refs: task name -> tuned Adam reference final loss at this budget and seed count.
      lr: outer learning rate.
      mesh, chunk, unroll: evaluator settings.
      task_lr: task name -> factor on ``lr`` for that task (``anchored_lrs``); None: ``lr``
        on every task.
      worst_task: weight of the worst task in the suite's fitness (``suite_fitness``).
      task_seeds: task name -> seeds on that task instead of ``seeds`` (the references are at
        that count); names outside the suite are ignored.
    """

    def __init__(self, suite: str, suite_version: str, tasks: list[Task], rule: UpdateRule,
                 budget: int, seeds: int, refs: dict[str, float], lr: float = 1.0,
                 mesh: Mesh | None = None, chunk: int = 0, unroll: int = 1,
                 lr_grid: tuple[float, ...] = (), scale: int = 1,
                 task_lr: dict[str, float] | None = None, worst_task: float = 0.0,
                 task_seeds: dict[str, int] | None = None):
        self.tasks, self.rule, self.seeds, self.refs = tasks, rule, seeds, refs
        self.task_seeds, other = seed_counts(tasks, seeds, task_seeds)
        self.mesh, self.chunk = mesh, chunk
        self.budget, self.scale, self.worst_task = budget, scale, worst_task
        factor = task_lr or {}
        self.lrs = {t.name: lr * factor.get(t.name, 1.0) for t in tasks}
        self.trains = {t.name: make_train(t, rule, self.steps(t), self.lrs[t.name], unroll)
                       for t in tasks}
        self.context = EvalContext(suite, suite_version, budget, seeds, lr, tuple(lr_grid),
                                   refs=values_digest(refs), scale=scale,
                                   task_lr=values_digest(task_lr) if task_lr else "",
                                   worst_task=worst_task,
                                   task_seeds=values_digest(other) if other else "")
        self.zero, self.label = "tuned Adam", FITNESS_LABEL

    def steps(self, task: Task) -> int:
        """Inner steps on ``task``: the budget (0: the task's default) times ``scale``."""
        return (self.budget or task.steps) * self.scale

    def seeds_of(self, name: str) -> int:
        """Seeds task ``name`` is scored on."""
        return self.task_seeds[name]

    def score(self, genomes: Any, generation: int | None = None,
              slots: np.ndarray | None = None, stream: int = 0) -> dict[str, Any]:
        """Evaluates a population on every task.

        Returns:
          ``{"fitness": [pop], "tasks": {name: {"fitness": [pop], "final_loss": [pop, seeds],
          "eval_loss", "mean_loss", "curve": [pop, seeds, K], "diverged"}}, "seconds": float}``.
        """
        pop = population_size(genomes)
        keys = seed_keys(self.task_seeds, pop, generation, slots, stream)
        start, per_task = time.perf_counter(), {}
        for task in self.tasks:
            m = evaluate(self.trains[task.name], genomes, keys[self.task_seeds[task.name]],
                         self.mesh, self.chunk)
            m["fitness"] = task_fitness(m["final_loss"], m["diverged"], self.refs[task.name],
                                        task.floor)
            per_task[task.name] = m
        fitness = suite_fitness([m["fitness"] for m in per_task.values()], self.worst_task)
        return {"fitness": fitness, "tasks": per_task, "seconds": time.perf_counter() - start}

    def row_metrics(self, result: dict, i: int) -> dict:
        return row_metrics(result, i)


def seed_counts(tasks, seeds: int, task_seeds: dict[str, int] | None
                ) -> tuple[dict[str, int], dict[str, int]]:
    """``(seeds by task name, the tasks whose count is not seeds)`` for ``task_seeds``
    (``Config.task_seeds``: counts by name; names outside ``tasks`` are ignored)."""
    counts = {t.name: int((task_seeds or {}).get(t.name, seeds)) for t in tasks}
    return counts, {k: v for k, v in counts.items() if v != seeds}


def seed_keys(counts: dict[str, int], population: int, generation: int | None = None,
              slots: np.ndarray | None = None, stream: int = 0) -> dict:
    """``task_keys`` for each seed count in ``counts`` (by count): a task on n seeds trains on
    the first n of any larger count's keys, so its seeds are the same ones whatever the
    count."""
    return {n: task_keys(n, population, generation, slots, stream)
            for n in sorted(set(counts.values()))}


def values_digest(values: dict) -> str:
    """12 hex digits of a mapping's sorted items (the context's digests of references, rates)."""
    return hashlib.sha256(json.dumps(sorted(values.items())).encode()).hexdigest()[:12]


def anchored_lrs(adam_lrs: dict[str, float]) -> dict[str, float]:
    """Per-task factors on a search's outer learning rate that follow tuned Adam's: task t's
    ``adam_lr[t]`` over their geometric mean. A search scored with them runs each task near its
    tuned rate (the references' is tuned per task, over five decades) while the outer rate and
    its multiplier grid set the overall scale: one rate for every task rewards rules that adapt
    their step to a task's gradient scale, which a per-task tuned comparison does not."""
    if not adam_lrs:
        return {}
    bad = sorted(k for k, v in adam_lrs.items() if not (v is not None and v > 0))
    if bad:
        raise ValueError(f"anchored learning rates: no tuned Adam learning rate for "
                         f"{', '.join(bad)}")
    mean = float(np.exp(np.mean(np.log([float(v) for v in adam_lrs.values()]))))
    return {k: float(v) / mean for k, v in adam_lrs.items()}


def row_metrics(result: dict, i: int) -> dict:
    """Per-task metrics of candidate i of a ``SuiteScorer`` result, JSON-able (losses per
    seed, the curve averaged over seeds)."""
    out = {}
    for name, m in result["tasks"].items():
        with np.errstate(all="ignore"):  # a diverged seed's curve holds inf or nan
            curve = np.asarray(m["curve"][i]).mean(axis=0).tolist()
        out[name] = {"fitness": float(m["fitness"][i]),
                     "final_loss": [float(x) for x in m["final_loss"][i]],
                     "eval_loss": [float(x) for x in m["eval_loss"][i]],
                     "curve": curve, "diverged": bool(m["diverged"][i].any())}
    return out


def suite_scorer(cfg, rule: UpdateRule, store=None, mesh: Mesh | None = None,
                 budget: int | None = None, scale: int = 1,
                 anchor: bool = False, worst_task: float = 0.0) -> SuiteScorer:
    """The supervised scorer of a run config (``suite``, ``budget``, ``seeds``, ``task_seeds``,
    ``rule.lr``, ``evaluator``) for ``rule``; ``budget`` and ``scale`` change the inner steps (the
    references are tuned Adam's at those steps); ``anchor``: each task's outer rate scaled by
    ``anchored_lrs`` of tuned Adam's rates at those steps; ``worst_task``: ``suite_fitness``'s
    weight of the worst task."""
    import tasks as registry
    from lab.core.references import LR_GRID, References
    budget = cfg.budget if budget is None else budget
    refs = References(store, mesh)
    suite = registry.get_suite(cfg.suite)
    counts, _ = seed_counts(suite, cfg.seeds, cfg.task_seeds)
    tuned = {t.name: refs.get(t, "adam", (budget or t.steps) * scale, counts[t.name])
             for t in suite}
    ref_loss = {k: float(v["value"]) for k, v in tuned.items()}
    task_lr = anchored_lrs({k: v["lr"] for k, v in tuned.items()}) if anchor else None
    return SuiteScorer(cfg.suite, registry.suite_version(cfg.suite), suite, rule, budget,
                       cfg.seeds, ref_loss, lr=cfg.rule.lr, mesh=mesh, chunk=cfg.evaluator.chunk,
                       unroll=cfg.evaluator.unroll, lr_grid=LR_GRID, scale=scale,
                       task_lr=task_lr, worst_task=worst_task, task_seeds=cfg.task_seeds)
