"""Tuned baselines: the one definition of "tuned" for the whole lab.

The learning rate is picked from ``10 ** linspace(-5, 0, 16)`` by mean final loss over the seeds
(the fixed evaluation seeds of ``lab.fitness.task_keys``). ``tasks/references.json`` ships the tuned
Adam, AdamW and Lion results per (task, budget, seeds), versioned with the tasks; anything missing
is computed once (the whole grid is one population evaluation) and cached in the store.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from lab.evaluate import EVALUATOR_VERSION, evaluate, make_train
from lab.fitness import SEED_BASE, task_keys
from lab.rules.base import stack_genomes
from lab.rules.baselines import make_baseline
from tasks import task_version
from tasks.base import Task

LR_GRID = tuple(float(x) for x in 10.0 ** np.linspace(-5, 0, 16))
OPTIMIZERS = ("adam", "adamw", "lion")
FORMAT = 1


def grid_id() -> str:
    doc = json.dumps({"grid": LR_GRID, "evaluator": EVALUATOR_VERSION, "seed_base": SEED_BASE})
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def tune(task: Task, optimizer: str, budget: int, seeds: int, mesh: Mesh | None = None) -> dict:
    """Tunes ``optimizer``'s learning rate on ``task``: one population evaluation of the grid.

    Returns:
      ``{"lr", "final_loss" (mean over seeds), "losses" (per seed), "grid_losses"}``.
    """
    rule = make_baseline(optimizer)
    genomes = stack_genomes([make_baseline(optimizer, {"learning_rate": lr}).genome
                             for lr in LR_GRID])
    train = make_train(task, rule, budget or task.steps)
    m = evaluate(train, genomes, task_keys(seeds, len(LR_GRID)), mesh)
    mean = np.mean(m["final_loss"].astype(np.float64), axis=1)
    mean = np.where(np.any(m["diverged"], axis=1) | ~np.isfinite(mean), np.inf, mean)
    best = int(np.argmin(mean))
    return {"lr": LR_GRID[best], "final_loss": float(mean[best]),
            "losses": [float(x) for x in m["final_loss"][best]],
            "grid_losses": [None if not np.isfinite(x) else float(x) for x in mean]}


def _entry_key(task: str, version: str, budget: int, seeds: int, optimizer: str) -> tuple:
    return (task, version, int(budget), int(seeds), optimizer)


@functools.lru_cache(maxsize=1)
def shipped_doc() -> dict:
    """The packaged ``tasks/references.json`` as a document ({} when absent)."""
    try:
        text = resources.files("tasks").joinpath("references.json").read_text()
    except FileNotFoundError:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"tasks/references.json: not valid JSON (line {e.lineno}): "
                         f"{e.msg}") from None


@functools.lru_cache(maxsize=1)
def shipped() -> dict[tuple, dict]:
    """The entries of the packaged ``tasks/references.json`` that match this code's versions."""
    doc = shipped_doc()
    return parse(json.dumps(doc), "tasks/references.json") if doc else {}


def parse(text: str, where: str) -> dict[tuple, dict]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if doc.get("format") != FORMAT or doc.get("grid_id") != grid_id():
        return {}
    return {_entry_key(e["task"], e["task_version"], e["budget"], e["seeds"], e["optimizer"]): e
            for e in doc.get("entries", [])}


class References:
    """Looks up tuned baselines: shipped file first, then the store's cache, else computes."""

    def __init__(self, store=None, mesh: Mesh | None = None):
        self.store, self.mesh = store, mesh

    def get(self, task: Task, optimizer: str, budget: int, seeds: int) -> dict[str, Any]:
        budget = int(budget or task.steps)
        version = task_version(task)
        hit = shipped().get(_entry_key(task.name, version, budget, seeds, optimizer))
        if hit is not None:
            return hit
        ctx = f"{version}-{grid_id()}"
        if self.store is not None:
            row = self.store.get_ref(task.name, budget, seeds, optimizer, ctx)
            if row is not None:
                return {"lr": row["lr"], "final_loss": row["final_loss"],
                        "losses": row["losses"]}
        result = tune(task, optimizer, budget, seeds, self.mesh)
        if self.store is not None:
            self.store.put_ref(task.name, budget, seeds, optimizer, ctx, result["lr"],
                               result["final_loss"], result["losses"])
        return result

    def adam_loss(self, task: Task, budget: int, seeds: int) -> float:
        return float(self.get(task, "adam", budget, seeds)["final_loss"])


def build(tasks: list[Task], seeds: tuple[int, ...] = (2,), optimizers=OPTIMIZERS,
          path: Path | None = None, mesh: Mesh | None = None, progress=None,
          rl_tasks: list | None = None) -> dict:
    """Regenerates the references file for ``tasks`` at their default budgets (and, for
    ``rl_tasks``, PPO-clip's and the random policy's returns: section ``rl``). Entries of the
    other section that the file at ``path`` already holds are kept."""
    old = {}
    if path is not None and Path(path).exists():
        try:
            old = json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            old = {}
    entries = []
    for task in tasks:
        for n in seeds:
            for opt in optimizers:
                r = tune(task, opt, task.steps, n, mesh)
                entries.append({"task": task.name, "task_version": task_version(task),
                                "budget": task.steps, "seeds": n, "optimizer": opt, **r})
                if progress is not None:
                    progress(task.name, opt, n, r)
    rl = []
    for task in rl_tasks or []:
        from lab.rl.scoring import RLReferences, compute_reference
        ctx = RLReferences().context(task)
        for n in seeds:
            for which in ("ppo_clip", "random"):
                r = compute_reference(task, which, task.steps, n, mesh)
                rl.append({"task": task.name, "context": ctx, "budget": task.steps,
                           "seeds": n, "which": which, **r})
                if progress is not None:
                    progress(task.name, which, n, {"lr": float("nan"),
                                                   "final_loss": r["final_return"]})
    if not tasks and old.get("format") == FORMAT:
        entries = old.get("entries", [])
    if not rl_tasks:
        rl = old.get("rl", [])
    doc = {"format": FORMAT, "grid_id": grid_id(), "evaluator": EVALUATOR_VERSION,
           "lr_grid": list(LR_GRID), "seed_base": SEED_BASE, "entries": entries, "rl": rl}
    if path is not None:
        tmp = Path(path).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        tmp.replace(path)
        shipped_doc.cache_clear()
        shipped.cache_clear()
    return doc
