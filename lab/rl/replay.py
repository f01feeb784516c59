"""Held-out evaluation of a drift objective: PPO with it against PPO-clip and DPO, per environment.

Every rule trains on the same seeds (the fixed evaluation keys). A row gives the mean final
return with a 95% Student-t interval over seeds, the mean return over training, and the
PPO-normalized score of each seed, ``1 - (R - R_random) / (R_ppo - R_random)`` (0 = PPO-clip's
mean final return on these seeds, 1 = a uniformly random policy, lower is better), with its own
interval. The summary is the mean normalized score per rule over the environments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

import tasks as task_registry
from lab.console import log
from lab.evaluate import evaluate
from lab.fitness import task_keys
from lab.replay import interval
from lab.rl.objectives import objective_from_name
from lab.rl.ppo import CURVE_POINTS, make_train, random_returns
from lab.rl.scoring import normalized_return
from lab.rules.base import stack_genomes
from lab.targets import Target

BASELINES = ("ppo_clip", "dpo")


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
    if target.rule.kind != "drift":
        raise ValueError(f"suite {suite!r} is an RL suite: it replays drift objectives, not "
                         f"kind {target.rule.kind!r}")
    from lab.rl.scoring import rl_mesh
    mesh = rl_mesh(mesh)
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
            from lab.rl.objectives import ppo_clip
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
           "summary": {k: float(np.mean(v)) for k, v in summary.items()}, "plot": None}
    if plot is not None:
        from lab.plots import return_curves
        doc["plot"] = str(return_curves(rows, plot, f"{target.label} on {suite}"))
    return doc
