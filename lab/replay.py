"""Held-out evaluation: a candidate against tuned optax baselines, per task, with intervals.

The normalized score of one seed is the fitness formula without the mean over seeds:
``clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C)``, ``ref`` tuned Adam's mean final
loss at the same budget and seeds; 0 = tuned Adam, negative = better. Rows give the mean over
seeds and a 95% Student-t interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
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


# Multipliers of a program's own learning rate tried by ``tune_lr`` (the baselines' grid spans
# five decades in 16 points; this one spans four around the program's rate, in 9).
TUNE_MULTIPLIERS = tuple(float(x) for x in 10.0 ** np.linspace(-2, 2, 9))


def _tuned_program(task, rule, genome, lr: float, keys, mesh) -> tuple[dict, float]:
    """The program at every multiplier of its rate in one call; the best by mean final loss
    over the seeds (the rule the references use)."""
    n = len(TUNE_MULTIPLIERS)
    pop = {**{k: np.repeat(np.asarray(v)[None], n, 0) for k, v in genome.items()},
           "lr": np.asarray(TUNE_MULTIPLIERS, np.float32)}
    m = evaluate(make_train(task, rule, task.steps, lr), pop, jnp.repeat(keys, n, 0), mesh)
    loss = np.where(m["diverged"].any(-1), np.inf, m["final_loss"].mean(-1))
    best = int(np.argmin(loss))
    return {k: v[best:best + 1] for k, v in m.items()}, lr * TUNE_MULTIPLIERS[best]


def replay(target: Target, suite: str = "heldout", seeds: int = 5,
           baselines: Sequence[str] = ("adam", "adamw", "lion"), store=None,
           mesh: Mesh | None = None, plot: Path | None = None, tune_lr: bool = False) -> dict:
    """Runs ``target`` and the tuned ``baselines`` on every task of ``suite``.

    With ``tune_lr`` (programs), a second row per task gives the target with its learning rate
    tuned per task too (``TUNE_MULTIPLIERS`` x its own, picked by mean final loss over the same
    seeds, as the baselines' are): the like-for-like comparison with tuned baselines.

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
        if tune_lr:
            if target.rule.kind != "program":
                raise ValueError("--tune-lr: tuning the learning rate per task is available for "
                                 f"programs, not for kind {target.rule.kind!r}")
            mt, lr = _tuned_program(task, cand_rule, cand_genome, target.lr, keys, mesh)
            rows.append(_row(task, f"{label} (lr tuned)", mt, ref, lr))
        for name in baselines:
            tuned = refs.get(task, name, task.steps, seeds)
            rule = make_baseline(name, {"learning_rate": tuned["lr"]})
            mb = evaluate(make_train(task, rule, task.steps), stack_genomes([rule.genome]),
                          keys, mesh)
            rows.append(_row(task, f"tuned {name}", mb, ref, tuned["lr"]))
        first = rows[-1 - len(baselines) - int(tune_lr)]
        log(f"replay {task.name}: {label} {first['score']:+.3f}"
            + (f", lr tuned {rows[-1 - len(baselines)]['score']:+.3f}" if tune_lr else ""))
    summary = {}
    for r in rows:
        summary.setdefault(r["rule"], []).append(r["score"])
    doc = {"target": target.text, "label": label, "suite": suite, "tune_lr": tune_lr,
           "suite_version": task_registry.suite_version(suite), "seeds": seeds,
           "rows": rows, "summary": {k: float(np.mean(v)) for k, v in summary.items()},
           "plot": None}
    if plot is not None:
        from lab.plots import loss_curves
        doc["plot"] = str(loss_curves(rows, plot, f"{label} on {suite}"))
    return doc
