"""Held-out evaluation: a candidate against tuned optax baselines, per task, with intervals.

The normalized score of one seed is the fitness formula without the mean over seeds:
``clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C)``, ``ref`` tuned Adam's mean final
loss at the same budget and seeds; 0 = tuned Adam, negative = better. Rows give the mean over
seeds and a 95% Student-t interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

import tasks as task_registry
from lab.console import log
from lab.evaluate import evaluate, make_train
from lab.fitness import normalized_score, task_keys
from lab.references import References
from lab.rules.base import stack_genomes
from lab.rules.baselines import make_baseline
from lab.targets import Target


def interval(x: np.ndarray) -> tuple[float | None, float | None]:
    """95% Student-t interval of the mean (None with fewer than two seeds)."""
    n = len(x)
    if n < 2:
        return None, None
    from scipy import stats
    half = float(stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return float(np.mean(x) - half), float(np.mean(x) + half)


def _row(task, rule_label: str, m: dict, ref: float, lr: float | None) -> dict:
    scores = normalized_score(m["final_loss"][0], m["diverged"][0], ref, task.floor)
    lo, hi = interval(scores)
    return {"task": task.name, "family": task.family, "rule": rule_label,
            "score": float(np.mean(scores)), "ci95": [lo, hi],
            "scores": [float(s) for s in scores],
            "final_loss": float(np.mean(m["final_loss"][0])),
            "eval_loss": float(np.mean(m["eval_loss"][0])),
            "diverged": bool(np.any(m["diverged"][0])), "lr": lr,
            "curve": np.asarray(m["curve"][0], np.float64).mean(axis=0).tolist()}


def compiled_form(target: Target):
    """(rule, genome) to replay: a program through its compiled path (live statements traced
    straight-line, as fast as a hand-written optax optimizer); other kinds as they are."""
    if target.rule.kind == "program":
        from lab.rules.program import program_of
        from lab.rules.program.compile import structure_rule
        rule = structure_rule(program_of(target.genome))
        return rule, rule.genome
    return target.rule, target.genome


def replay(target: Target, suite: str = "heldout", seeds: int = 5,
           baselines: Sequence[str] = ("adam", "adamw", "lion"), store=None,
           mesh: Mesh | None = None, plot: Path | None = None) -> dict:
    """Runs ``target`` and the tuned ``baselines`` on every task of ``suite``.

    Returns:
      ``{"target", "suite", "seeds", "rows": [...], "summary": {rule: mean score}, "plot"}``;
      one row per (task, rule) with ``score`` (mean normalized score), ``ci95``, losses, curve.
    """
    refs = References(store, mesh)
    rows = []
    label = target.label
    cand_rule, cand_genome = compiled_form(target)
    for task in task_registry.get_suite(suite):
        keys = task_keys(seeds, 1)
        ref = refs.adam_loss(task, task.steps, seeds)
        train = make_train(task, cand_rule, task.steps, target.lr)
        m = evaluate(train, stack_genomes([cand_genome]), keys, mesh)
        rows.append(_row(task, label, m, ref, None))
        for name in baselines:
            tuned = refs.get(task, name, task.steps, seeds)
            rule = make_baseline(name, {"learning_rate": tuned["lr"]})
            mb = evaluate(make_train(task, rule, task.steps), stack_genomes([rule.genome]),
                          keys, mesh)
            rows.append(_row(task, f"tuned {name}", mb, ref, tuned["lr"]))
        log(f"replay {task.name}: {label} {rows[-1 - len(baselines)]['score']:+.3f}")
    summary = {}
    for r in rows:
        summary.setdefault(r["rule"], []).append(r["score"])
    doc = {"target": target.text, "label": label, "suite": suite,
           "suite_version": task_registry.suite_version(suite), "seeds": seeds,
           "rows": rows, "summary": {k: float(np.mean(v)) for k, v in summary.items()},
           "plot": None}
    if plot is not None:
        from lab.plots import loss_curves
        doc["plot"] = str(loss_curves(rows, plot, f"{label} on {suite}"))
    return doc
