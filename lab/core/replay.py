"""Held-out evaluation: a candidate against tuned optax baselines, per task, with intervals.

The normalized score of one seed is the fitness formula without the mean over seeds:
``clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C)``, ``ref`` tuned Adam's mean final
loss at the same budget and seeds; 0 = tuned Adam, negative = better. Rows give the mean over
seeds and a 95% Student-t interval.

The speedup of a row is ``steps / steps_to_adam``: ``steps`` is the horizon (tuned Adam's
budget) and ``steps_to_adam`` the first step at which the row's loss curve reaches ``ref`` for
good (at or below it from that step to the end of the run). The curve is the training loss of
every step, averaged over the seeds, then smoothed by a trailing mean over a tenth of the run
(fewer steps at the start): the window of ``final_loss`` itself, so the curve at step s is the
final loss the row would report had it stopped there, and at the last step it is the row's mean
final loss. Tuned Adam therefore ends at ``ref`` and has a speedup of 1 (at most a little more,
where its last steps already sit at ``ref``); "for good" keeps one noisy dip below ``ref`` on a
plateau from counting. "At or below" means a normalized score of at most ``REACH_TOL``, which
absorbs float differences between this run and the reference's. Speedup and steps_to_adam are
None where the curve does not end at or below ``ref`` or a seed diverged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import tasks as task_registry
from lab.console import log
from lab.core.evaluate import evaluate, make_train, task_keys
from lab.core.fitness import normalized_score
from lab.core.kind import HELDOUT_BASELINES, ReplayRequest
from lab.core.optimizers import make_baseline
from lab.core.references import References
from lab.core.rule import stack_genomes
from lab.core.target import Target
from lab.tables import interval_text


def interval(x: np.ndarray) -> tuple[float | None, float | None]:
    """95% Student-t interval of the mean (None with fewer than two seeds)."""
    n = len(x)
    if n < 2:
        return None, None
    from scipy import stats
    half = float(stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return float(np.mean(x) - half), float(np.mean(x) + half)


# Log loss ratio under which a curve counts as having reached tuned Adam's final loss: tuned Adam
# replayed here and in the (batched, maybe shipped) reference differ by float error only.
REACH_TOL = 1e-3
# Segment means of the mean loss curve kept in a row (for plots and JSON).
ROW_CURVE_POINTS = 64


def smoothed(losses: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (fewer at the start): ``[steps] -> [steps]``."""
    losses = np.asarray(losses, np.float64)
    csum = np.concatenate([[0.0], np.cumsum(losses)])
    end = np.arange(1, len(losses) + 1)
    start = np.maximum(0, end - int(window))
    return (csum[end] - csum[start]) / (end - start)


def speedup(losses: np.ndarray, diverged: np.ndarray, ref: float,
            floor: float = 0.0) -> tuple[int | None, float | None]:
    """(steps_to_adam, speedup) of one row, as the module docstring defines them.

    Args:
      losses: ``[seeds, steps]`` training loss of every step.
      diverged: ``[seeds]`` bool.
      ref: tuned Adam's mean final loss at ``steps``.
      floor: the task's loss floor.
    """
    losses = np.asarray(losses, np.float64)
    steps = losses.shape[-1]
    if np.any(diverged) or not np.all(np.isfinite(losses)):
        return None, None
    curve = smoothed(losses.mean(axis=0), max(1, steps // 10))
    reached = normalized_score(curve, np.zeros(steps, bool), ref, floor) <= REACH_TOL
    if not reached[-1]:
        return None, None
    above = np.flatnonzero(~reached)
    first = int(above[-1]) + 2 if above.size else 1  # 1-based step after the last miss
    return first, steps / first


def _segments(curve: np.ndarray, points: int) -> list[float]:
    """Equal-segment means of ``curve`` (``points`` of them at most; the tail that does not fill
    a segment is left out, as in ``make_train``)."""
    points = min(points, len(curve))
    seg = len(curve) // points
    return curve[: seg * points].reshape(points, seg).mean(axis=1).tolist()


def _row(task, rule_label: str, m: dict, ref: float, lr: float | None) -> dict:
    scores = normalized_score(m["final_loss"][0], m["diverged"][0], ref, task.floor)
    lo, hi = interval(scores)
    losses = np.asarray(m["curve"][0], np.float64)  # [seeds, steps]: one point per step
    to_adam, fast = speedup(losses, m["diverged"][0], ref, task.floor)
    with np.errstate(all="ignore"):  # a diverged seed's curve holds inf or nan
        mean_curve = losses.mean(axis=0)
    return {"task": task.name, "family": task.family, "rule": rule_label,
            "steps": int(losses.shape[-1]),
            "score": float(np.mean(scores)), "ci95": [lo, hi],
            "scores": [float(s) for s in scores],
            "final_loss": float(np.mean(m["final_loss"][0])),
            "eval_loss": float(np.mean(m["eval_loss"][0])),
            "diverged": bool(np.any(m["diverged"][0])), "lr": lr,
            "speedup": fast, "steps_to_adam": to_adam,
            "curve": _segments(mean_curve, ROW_CURVE_POINTS)}


def replay_train(task, rule, steps: int, lr: float = 1.0):
    """A train function whose ``curve`` is the loss of every step."""
    return make_train(task, rule, steps, lr, curve_points=steps)


# tuned(task, rule, genome, lr, steps, keys, mesh) -> (metrics [1, seeds, ...], tuned lr)
Tuner = Callable[..., tuple[dict, float]]

# Multipliers of a candidate's own learning rate tried by ``--tune-lr``: the baselines' grid's
# step (a third of a decade, ``references.LR_GRID``) over five and a third decades centred on the
# candidate's rate, which is one of them (17 points; the baselines' grid spans five in 16).
TUNE_MULTIPLIERS = tuple(float(x) for x in 10.0 ** (np.arange(-8, 9) / 3))


def tune_over(task, rule, population, lr: float, steps: int, keys, mesh) -> tuple[dict, float]:
    """A kind's ``Tuner`` body: ``population`` is the candidate at each of ``TUNE_MULTIPLIERS``
    times its rate (leading axis, in that order), run in one call; returns the best one's
    metrics by mean final loss over the seeds (the rule the references use) and its rate."""
    n = len(TUNE_MULTIPLIERS)
    m = evaluate(replay_train(task, rule, steps, lr), population, jnp.repeat(keys, n, 0), mesh)
    loss = np.where(m["diverged"].any(-1), np.inf, m["final_loss"].mean(-1))
    best = int(np.argmin(loss))
    return {k: v[best:best + 1] for k, v in m.items()}, lr * TUNE_MULTIPLIERS[best]


def log_rate_tuner(leaf: str, absolute: bool = False) -> Tuner:
    """The ``Tuner`` of a kind whose step is linear in ``exp(genome[leaf])`` (a learned rule's
    ``log_step``, an optax optimizer's log learning rate): each multiplier of
    ``TUNE_MULTIPLIERS`` is the shift ``log(multiplier)`` of that leaf. The tuned row's rate is
    the multiplier times the candidate's outer rate, as a program's is, and with ``absolute``
    (the leaf is the learning rate itself) times ``exp`` of the leaf: the rate the optimizer ran
    at, as the tuned baselines' rows give theirs."""
    def tune(task, rule, genome, lr: float, steps: int, keys, mesh) -> tuple[dict, float]:
        if leaf not in genome:
            raise ValueError(f"--tune-lr: {rule.name} has no {leaf!r} in its genome to scale "
                             f"(it has {', '.join(sorted(genome))})")
        n = len(TUNE_MULTIPLIERS)
        pop = {k: np.repeat(np.asarray(v)[None], n, 0) for k, v in genome.items()}
        pop[leaf] = (pop[leaf] + np.log(TUNE_MULTIPLIERS)).astype(np.float32)
        m, rate = tune_over(task, rule, pop, lr, steps, keys, mesh)
        return m, rate * float(np.exp(genome[leaf])) if absolute else rate
    return tune


def replay_update_rule(target: Target, req: ReplayRequest, form: tuple | None = None,
                       tuner: Tuner | None = None) -> dict:
    """``Kind.replay`` of update-rule kinds: ``replay`` with the request's settings.

    Args:
      form: ``(rule, genome)`` to run for the target (e.g. a program's compiled path); default:
        the target's own.
      tuner: how the kind tunes the target's learning rate per task (``--tune-lr``); kinds
        without one refuse the flag.
    """
    if req.tune_lr and tuner is None:
        raise ValueError("--tune-lr: tuning the learning rate per task is not available for "
                         f"kind {target.rule.kind!r}")
    return replay(target, req.suite, req.seeds, req.baselines, req.store, req.mesh, req.plot,
                  tuner if req.tune_lr else None, req.horizon_scale, form)


def replay(target: Target, suite: str = "heldout", seeds: int = 5,
           baselines: Sequence[str] = HELDOUT_BASELINES, store=None,
           mesh: Mesh | None = None, plot: Path | None = None, tuner: Tuner | None = None,
           horizon_scale: int = 1, form: tuple | None = None) -> dict:
    """Runs ``target`` and the tuned ``baselines`` on every task of ``suite``.

    With a ``tuner`` (programs), a second row per task gives the target with its learning rate
    tuned per task too (picked by mean final loss over the same seeds, as the baselines' are):
    the like-for-like comparison with tuned baselines.

    With ``horizon_scale`` K, every task runs for K times its default steps (the target sees
    that horizon in ``Ctx.horizon``), and the baselines and ``ref`` (tuned Adam) are tuned at
    that budget: on the grid on first use, cached in ``store``.

    Returns:
      ``{"target", "suite", "seeds", "horizon_scale", "rows": [...], "summary": {rule: mean
      score}, "intervals", "differences" (``suite_statistics``: the target's rows against each
      baseline, seed by seed), "plot"}``; one row per (task, rule) with ``steps``, ``score``
      (mean normalized score), ``ci95``, losses, ``speedup`` and ``steps_to_adam`` (module
      docstring; None where never reached), ``curve`` (up to ``ROW_CURVE_POINTS`` segment means
      over the run).
    """
    if int(horizon_scale) != horizon_scale or horizon_scale < 1:
        raise ValueError(f"horizon_scale={horizon_scale}: must be a whole number >= 1")
    horizon_scale = int(horizon_scale)
    tune_lr = tuner is not None
    refs = References(store, mesh)
    rows = []
    label = target.label
    cand_rule, cand_genome = form or (target.rule, target.genome)
    for task in task_registry.get_suite(suite):
        steps = horizon_scale * task.steps
        keys = task_keys(seeds, 1)
        ref = refs.adam_loss(task, steps, seeds)
        m = evaluate(replay_train(task, cand_rule, steps, target.lr), stack_genomes([cand_genome]),
                     keys, mesh)
        rows.append(_row(task, label, m, ref, None))
        if tune_lr:
            mt, lr = tuner(task, cand_rule, cand_genome, target.lr, steps, keys, mesh)
            rows.append(_row(task, f"{label} (lr tuned)", mt, ref, lr))
        for name in baselines:
            tuned = refs.get(task, name, steps, seeds)
            rule = make_baseline(name, {"learning_rate": tuned["lr"]})
            mb = evaluate(replay_train(task, rule, steps), stack_genomes([rule.genome]), keys, mesh)
            rows.append(_row(task, f"tuned {name}", mb, ref, tuned["lr"]))
        mine = rows[-1 - len(baselines) - int(tune_lr):len(rows) - len(baselines)]
        log(f"replay {task.name} ({steps} steps): "
            + ", ".join(f"{r['rule']} {r['score']:+.3f} speedup {_x(r['speedup'])}"
                        for r in mine))
    summary = {}
    for r in rows:
        summary.setdefault(r["rule"], []).append(r["score"])
    targets = [label] + ([f"{label} (lr tuned)"] if tune_lr else [])
    doc = {"target": target.text, "label": label, "suite": suite, "tune_lr": tune_lr,
           "suite_version": task_registry.suite_version(suite), "seeds": seeds,
           "horizon_scale": horizon_scale,
           "rows": rows, "summary": {k: float(np.mean(v)) for k, v in summary.items()},
           **suite_statistics(rows, targets, [f"tuned {n}" for n in baselines]), "plot": None}
    if plot is not None:
        from lab.plots import loss_curves
        title = f"{label} on {suite}" + (f", {horizon_scale}x steps" if horizon_scale > 1 else "")
        doc["plot"] = str(loss_curves(rows, plot, title))
    return doc


def suite_statistics(rows: list[dict], targets: Sequence[str], baselines: Sequence[str]
                     ) -> dict:
    """The suite means' 95% intervals over seeds and the paired differences of ``targets`` from
    ``baselines``: every rule ran on the same seeds (the same keys) of the same tasks, so seed i's
    suite mean is the mean over tasks of its scores, and a target's difference from a baseline is
    taken seed by seed before its interval.

    Returns:
      ``{"intervals": {rule: [lo, hi]}, "differences": {target: {baseline: {"mean", "ci95",
      "worse", "better"}}}}`` (a difference below zero is the target's win; intervals None
      under two seeds; ``worse`` / ``better``: the tasks where the target's mean score lies
      above / below the baseline's interval on that task, so one task's large gain cannot hide
      another's loss).
    """
    per_seed: dict[str, list] = {}
    per_task: dict[tuple[str, str], np.ndarray] = {}
    for r in rows:
        per_seed.setdefault(r["rule"], []).append(r["scores"])
        per_task[r["rule"], r["task"]] = np.asarray(r["scores"], np.float64)
    means = {k: np.mean(np.asarray(v, np.float64), axis=0) for k, v in per_seed.items()}

    def beyond(t: str, b: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"worse": [], "better": []}
        for (rule, task), scores in per_task.items():
            lo, hi = interval(per_task.get((b, task), np.zeros(0)))
            if rule != t or lo is None:
                continue
            if np.mean(scores) > hi:
                out["worse"].append(task)
            elif np.mean(scores) < lo:
                out["better"].append(task)
        return out

    return {"intervals": {k: list(interval(x)) for k, x in means.items()},
            "differences": {t: {b: {"mean": float(np.mean(means[t] - means[b])),
                                    "ci95": list(interval(means[t] - means[b])),
                                    **beyond(t, b)}
                                for b in baselines if b in means}
                            for t in targets if t in means}}


def _x(speed: float | None) -> str:
    return "never" if speed is None else f"{speed:.2f}x"


def readme_tables(metrics: dict) -> list[str]:
    """The artifact README's tables of an update rule's replays (every ``heldout*`` section of
    its ``metrics.json``): ``Kind.readme`` of update-rule kinds."""
    lines = []
    for key, held in metrics.items():
        if not (key.startswith("heldout") and isinstance(held, dict) and held.get("rows")):
            continue
        scale = held.get("horizon_scale", 1)
        lines += ["", f"## Held-out scores ({held['suite']}, {held['seeds']} seeds"
                  + (f", horizons {scale}x the tasks'" if scale != 1 else "") + ")", "",
                  "Normalized score: log final-loss ratio vs tuned Adam; lower is better, 0 = "
                  "tuned Adam. 95% interval over seeds. Speedup: tuned Adam's steps over the "
                  "steps this rule needs to reach tuned Adam's final loss.", "",
                  "| task | rule | score | 95% interval | final loss | speedup |",
                  "|---|---|---|---|---|---|"]
        for r in held["rows"]:
            lines.append(f"| {r['task']} | {r['rule']} | {r['score']:+.3f} | "
                         f"{interval_text(r['ci95'], missing='n/a')} | {_g(r['final_loss'])} | "
                         f"{_x(r.get('speedup'))} |")
        lines += statistics_tables(held)
    return lines


def statistics_tables(held: dict) -> list[str]:
    """The README tables of a replay's ``suite_statistics`` (suite means with their intervals,
    paired differences with the tasks outside the baseline's interval); none without them."""
    lines = []
    if held.get("intervals"):
        lines += ["", "Suite means (each seed's mean over the tasks; 95% interval over "
                  "seeds):", "", "| rule | mean | 95% interval |", "|---|---|---|"]
        lines += [f"| {k} | {v:+.3f} | "
                  f"{interval_text(held['intervals'].get(k), missing='n/a')} |"
                  for k, v in held["summary"].items()]
    if held.get("differences"):
        lines += ["", "Paired differences of the suite mean (same seeds and tasks; below "
                  "zero, the first rule is better), and the tasks where the rule's score "
                  "lies outside the baseline's interval:", "",
                  "| rule | baseline | difference | 95% interval | better on | worse on |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t} | {b} | {d['mean']:+.3f} | {interval_text(d['ci95'], missing='n/a')} | "
                  f"{_tasks(d.get('better'))} | {_tasks(d.get('worse'))} |"
                  for t, diffs in held["differences"].items() for b, d in diffs.items()]
    return lines


def _g(x) -> str:
    # None: not finite (JSON has no inf); before the JSON is written it may still be inf
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _tasks(names) -> str:
    return "n/a" if names is None else ", ".join(names) or "none"
