"""Held-out evaluation of a drift objective: PPO with it against PPO-clip and DPO, per environment.

Every rule trains on the same seeds (the fixed evaluation keys). A row gives the mean final
return with a 95% Student-t interval over seeds, the mean return over training, and the
PPO-normalized score of each seed, ``1 - (R - R_random) / (R_ppo - R_random)`` (0 = PPO-clip's
mean final return on these seeds, 1 = a uniformly random policy, lower is better), with its own
interval. The summary is the mean normalized score per rule over the environments, with the
suite statistics of update rules (``lab.core.replay.suite_statistics``): each rule's mean with
its interval over seeds, and the target's paired difference from each baseline objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

import tasks as task_registry
from lab.console import log
from lab.core.evaluate import evaluate, task_keys
from lab.core.kind import ReplayRequest
from lab.core.replay import interval, statistics_tables, suite_statistics
from lab.core.rule import stack_genomes
from lab.core.target import Target
from lab.kinds.drift.objectives import objective_from_name, ppo_clip
from lab.kinds.drift.ppo import CURVE_POINTS, make_train, random_returns
from lab.kinds.drift.scoring import normalized_return
from lab.tables import interval_text

BASELINES = ("ppo_clip", "dpo")
LEVELS_HELDOUT = "rl-levels-heldout"  # levels (tasks.levels) whose seeds no search draws


def _metrics(task, objective, genome, seeds: int, mesh, budget: int) -> dict:
    m = evaluate(make_train(task, objective, budget, CURVE_POINTS), stack_genomes([genome]),
                 task_keys(seeds, 1), mesh)
    return {k: np.asarray(v[0]) for k, v in m.items()}


def _row(task, label: str, m: dict, ppo: float, random: float) -> dict:
    finals = np.asarray(m["final_return"], np.float64)
    scores = normalized_return(finals, ppo, random)
    with np.errstate(all="ignore"):
        curve = np.nanmean(np.asarray(m["curve"], np.float64), axis=0)
    lo, hi = interval(finals)
    slo, shi = interval(scores)
    return {"task": task.name, "env": task.env_id, "rule": label,
            "steps": int(task.updates(None) * task.batch_size),
            "final_return": float(np.mean(finals)), "ci95": [lo, hi],
            "returns": [float(x) for x in finals],
            "mean_return": float(np.mean(m["mean_return"])),
            "score": float(np.mean(scores)), "score_ci95": [slo, shi],
            "scores": [float(x) for x in scores],
            "diverged": bool(np.any(m["diverged"])),
            "curve": [float(x) if np.isfinite(x) else None for x in curve]}


def replay_rl(target: Target, suite: str = "rl-heldout", seeds: int = 8,
              baselines: Sequence[str] = BASELINES, mesh: Mesh | None = None,
              plot: Path | None = None) -> dict:
    """Trains PPO with ``target``'s drift and with each baseline objective on every environment
    of ``suite`` (same seeds); returns ``{"target", "suite", "seeds", "rows", "summary",
    "random", "plot"}`` (module docstring)."""
    rows, randoms = [], {}
    for task in task_registry.get_suite(suite):
        budget = task.steps
        random = float(np.mean(random_returns(task, budget, task_keys(seeds, 1)[0])))
        randoms[task.name] = random
        runs = [(target.label, target.rule, target.genome)]
        runs += [(name, o, o.genome) for name, o in
                 ((b, objective_from_name(b)) for b in baselines)]
        ms = [(label, _metrics(task, o, g, seeds, mesh, budget)) for label, o, g in runs]
        ppo_m = next((m for label, m in ms if label == "ppo_clip"), None)
        if ppo_m is None:
            ppo_m = _metrics(task, ppo_clip(), ppo_clip().genome, seeds, mesh, budget)
        ppo = float(np.mean(ppo_m["final_return"]))
        mine = [_row(task, label, m, ppo, random) for label, m in ms]
        rows += mine
        log(f"replay {task.name} ({mine[0]['steps']} env steps, {seeds} seeds): "
            + ", ".join(f"{r['rule']} {r['final_return']:.3g} (score {r['score']:+.3f})"
                        for r in mine))
    summary: dict[str, list[float]] = {}
    for r in rows:
        summary.setdefault(r["rule"], []).append(r["score"])
    doc = {"target": target.text, "label": target.label, "suite": suite,
           "suite_version": task_registry.suite_version(suite), "seeds": seeds,
           "horizon_scale": 1, "rows": rows, "random": randoms,
           "summary": {k: float(np.mean(v)) for k, v in summary.items()},
           **suite_statistics(rows, [target.label], list(baselines)), "plot": None}
    if plot is not None:
        from lab.kinds.drift.plots import return_curves
        doc["plot"] = str(return_curves(rows, plot, f"{target.label} on {suite}"))
    return doc


def replay_drift(target: Target, req: ReplayRequest) -> dict:
    """``Kind.replay`` of the drift kind: ``replay_rl`` with the request's settings."""
    if req.horizon_scale != 1 or req.tune_lr:
        raise ValueError("--horizon-scale and --tune-lr apply to update rules, not to drift "
                         "objectives")
    return replay_rl(target, req.suite, req.seeds, req.baselines, req.mesh, req.plot)


def export(target: Target, store, suite: str, seeds: int) -> dict:
    """Replayed on ``suite``; where it was meta-trained on another RL suite, on that one; and
    where it was meta-trained on a curriculum of levels, on levels no search samples
    (``LEVELS_HELDOUT``)."""
    import tasks
    out = {"heldout": replay_rl(target, suite, seeds)}
    config = (target.run or {}).get("config", {})
    run_suite = config.get("suite") or target.trained_on
    if run_suite and tasks.is_rl_suite(run_suite) and run_suite != suite:
        log(f"export {target.label}: replaying on its training suite {run_suite}")
        out["train"] = replay_rl(target, run_suite, seeds)
    curriculum = config.get("search", {}).get("curriculum") or target.curriculum or "fixed"
    if curriculum != "fixed" and suite != LEVELS_HELDOUT:
        log(f"export {target.label}: meta-trained on a {curriculum} curriculum, replaying on "
            f"unseen levels ({LEVELS_HELDOUT})")
        out["levels"] = replay_rl(target, LEVELS_HELDOUT, seeds)
    return out


def readme_tables(metrics: dict) -> list[str]:
    """The artifact README's part for a drift objective: the surface plot and the replay
    tables (``heldout``, ``train``, ``levels``)."""
    lines = ["", "The closest known objective is by relative RMS gap between drift surfaces; "
             "`lab inspect` draws `surface.png` (D(r, A) beside PPO-clip's and DPO's)."]
    for key, title in (("train", "Training-suite scores"), ("heldout", "Held-out scores"),
                       ("levels", "Unseen levels")):
        held = metrics.get(key)
        if isinstance(held, dict) and held.get("rows"):
            lines += _table(held, title)
    return lines


def _table(held: dict, title: str) -> list[str]:
    where = {"Training-suite scores": "the environments it was meta-trained on (fixed "
                                      "evaluation seeds, not the search's)",
             "Unseen levels": "levels of its training environments that no search samples "
                              "(their seeds lie above every seed a curriculum draws)"}.get(
        title, "environments the search never saw")
    lines = ["", f"## {title} ({held['suite']}, {held['seeds']} seeds)", "",
             f"PPO trained with each objective on {where}. Final "
             "return: mean over seeds with a 95% interval. Score: 1 - (R - R_random) / "
             "(R_PPO-clip - R_random); lower is better, 0 = PPO-clip, 1 = a random policy.", "",
             "| environment | objective | env steps | final return | 95% interval | "
             "mean return | score |", "|---|---|---|---|---|---|---|"]
    for r in held["rows"]:
        ci = interval_text(r["ci95"], "{:.4g}", "n/a")
        lines.append(f"| {r['task']} | {r['rule']} | {r['steps']} | {r['final_return']:.4g} | "
                     f"{ci} | {r['mean_return']:.4g} | {r['score']:+.3f} |")
    if held.get("intervals"):
        return lines + statistics_tables(held)
    return lines + ["", "Mean score: " + ", ".join(f"{k} {v:+.3f}" for k, v in
                                                   held["summary"].items())]
