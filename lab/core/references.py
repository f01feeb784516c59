"""References: what fitness is measured against, one cache for every domain.

A reference is one number per (task, budget, seeds, which) on the fixed evaluation seeds
(``lab.core.evaluate.task_keys``), with its per-seed values, what it measures (``metric``) and a
``context`` that hashes what it depends on (the task's version, the lr grid, the inner loop's
version). A ``Family`` says how one domain's references are computed:

* ``tuned`` (this module): tuned optax baselines for supervised tasks, the one definition of
  "tuned" for the whole lab: the learning rate picked from ``10 ** linspace(-5, 0, 16)`` by mean
  final loss over the seeds (the whole grid is one population evaluation); ``which`` is the
  optimizer (adam, adamw, lion), ``metric`` the final loss;
* other families are registered by the kinds that own their domain (``register_family``): the
  drift kind's ``rl`` family gives PPO-clip's and a random policy's final return.

``tasks/references.json`` ships them (``build`` regenerates it); a lookup tries the shipped file,
then the store's cache, and computes (once, cached in the store) what neither has.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from lab.core.evaluate import EVALUATOR_VERSION, SEED_BASE, evaluate, make_train, task_keys
from lab.core.optimizers import is_baseline, make_baseline
from lab.core.rule import stack_genomes
from tasks import task_version

# 10^(k/3 - 5), k = 0..15: 1e-5 to 1.0, a third of a decade apart. Written out, not computed:
# the grid's digest keys every shipped and stored reference, and numpy 2.4's 10.0 ** linspace(-5,
# 0, 16) gives 1e-05 where earlier numpy gave 9.999999999999999e-06, a new digest that orphaned
# tasks/references.json and re-tuned every reference on first use.
LR_GRID = (9.999999999999999e-06, 2.1544346900318823e-05, 4.641588833612782e-05, 0.0001,
           0.00021544346900318823, 0.00046415888336127773, 0.001, 0.002154434690031882,
           0.004641588833612777, 0.01, 0.021544346900318822, 0.046415888336127774, 0.1,
           0.21544346900318823, 0.46415888336127725, 1.0)
OPTIMIZERS = ("adam", "adamw", "lion")
FORMAT = 2  # of tasks/references.json; format 1 files are read too (``upgrade``)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one domain's references are keyed and computed.

    Attributes:
      name: the family (``tuned``, ``rl``).
      domain: the suites' domain it serves (``tasks.domain_of``).
      metric: what a reference's value is (``final_loss``, ``final_return``).
      which: the references each task has (optimizers; PPO-clip and a random policy).
      context: ``context(task) -> str``, what a value depends on besides (task, budget, seeds).
      compute: ``compute(task, which, budget, seeds, mesh) -> {"value", "values"}`` (and
        ``lr``, ``grid_values`` for tuned optimizers).
      accepts: more references than ``which`` (a predicate on the name), computed on demand.
    """

    name: str
    domain: str
    metric: str
    which: tuple[str, ...]
    context: Callable[[Any], str]
    compute: Callable[..., dict]
    accepts: Callable[[str], bool] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def family_of(which: str) -> Family:
    for f in _FAMILIES.values():
        if which in f.which:
            return f
    for f in _FAMILIES.values():
        if f.accepts is not None and f.accepts(which):
            return f
    known = sorted(w for f in _FAMILIES.values() for w in f.which)
    raise ValueError(f"no reference {which!r} (known: {', '.join(known)}, or any optax or "
                     f"optax.contrib optimizer taking learning_rate)")


def grid_id() -> str:
    doc = json.dumps({"grid": LR_GRID, "evaluator": EVALUATOR_VERSION, "seed_base": SEED_BASE})
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def tune(task, optimizer: str, budget: int, seeds: int, mesh: Mesh | None = None) -> dict:
    """Tunes ``optimizer``'s learning rate on ``task``: one population evaluation of the grid.

    Returns:
      ``{"lr", "value" (mean final loss over seeds), "values" (per seed), "grid_values"}``.
    """
    rule = make_baseline(optimizer)
    genomes = stack_genomes([make_baseline(optimizer, {"learning_rate": lr}).genome
                             for lr in LR_GRID])
    train = make_train(task, rule, budget or task.steps)
    m = evaluate(train, genomes, task_keys(seeds, len(LR_GRID)), mesh)
    mean = np.mean(m["final_loss"].astype(np.float64), axis=1)
    mean = np.where(np.any(m["diverged"], axis=1) | ~np.isfinite(mean), np.inf, mean)
    best = int(np.argmin(mean))
    return {"lr": LR_GRID[best], "value": float(mean[best]),
            "values": [float(x) for x in m["final_loss"][best]],
            "grid_values": [None if not np.isfinite(x) else float(x) for x in mean]}


TUNED = register_family(Family(
    "tuned", "supervised", "final_loss", OPTIMIZERS,
    lambda task: f"{task_version(task)}-{grid_id()}",
    lambda task, which, budget, seeds, mesh: tune(task, which, budget, seeds, mesh),
    accepts=is_baseline))  # any optimizer baseline, tuned on the same grid on first use


def _key(task: str, context: str, budget: int, seeds: int, which: str) -> tuple:
    return (task, context, int(budget), int(seeds), which)


def upgrade(doc: dict) -> dict:
    """A references document in this format: format 1 (``entries`` of tuned optimizers with
    ``task_version``, ``final_loss``, ``losses``; ``rl``: PPO-clip's and a random policy's
    ``final_return``, ``returns``) becomes format 2, every entry kept and each value named by
    its metric."""
    if doc.get("format") != 1:
        return doc
    entries = [{"family": "tuned", "task": e["task"],
                "context": f"{e['task_version']}-{doc.get('grid_id')}",
                "budget": e["budget"], "seeds": e["seeds"], "which": e["optimizer"],
                "metric": "final_loss", "value": e["final_loss"], "values": e["losses"],
                "lr": e["lr"], "grid_values": e.get("grid_losses")}
               for e in doc.get("entries", [])]
    entries += [{"family": "rl", "task": e["task"], "context": e["context"], "budget": e["budget"],
                 "seeds": e["seeds"], "which": e["which"], "metric": "final_return",
                 "value": e["final_return"], "values": e["returns"]}
                for e in doc.get("rl", [])]
    return {**{k: v for k, v in doc.items() if k not in ("entries", "rl")},
            "format": FORMAT, "entries": entries}


def parse(text: str, where: str) -> dict[tuple, dict]:
    """The entries of a references document by (task, context, budget, seeds, which)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON (line {e.lineno}): {e.msg}") from None
    doc = upgrade(doc)
    if doc.get("format") != FORMAT:
        return {}
    return {_key(e["task"], e["context"], e["budget"], e["seeds"], e["which"]): e
            for e in doc.get("entries", [])}


@functools.lru_cache(maxsize=1)
def shipped_text() -> str:
    """The packaged ``tasks/references.json`` ("" when absent)."""
    try:
        return resources.files("tasks").joinpath("references.json").read_text()
    except FileNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def shipped() -> dict[tuple, dict]:
    """The entries of the packaged ``tasks/references.json``."""
    text = shipped_text()
    return parse(text, "tasks/references.json") if text else {}


class References:
    """Looks up references: shipped file first, then the store's cache, else computes."""

    def __init__(self, store=None, mesh: Mesh | None = None):
        self.store, self.mesh = store, mesh

    def get(self, task, which: str, budget: int, seeds: int) -> dict[str, Any]:
        """``{"which", "metric", "value" (mean over seeds), "values" (per seed), "lr"}``."""
        family = family_of(which)
        budget = int(budget or task.steps)
        ctx = family.context(task)
        hit = shipped().get(_key(task.name, ctx, budget, seeds, which))
        if hit is not None:
            return {"which": which, "metric": family.metric, "value": hit["value"],
                    "values": hit["values"], "lr": hit.get("lr")}
        if self.store is not None:
            row = self.store.get_ref(task.name, budget, seeds, which, ctx)
            if row is not None:
                return {"which": which, "metric": row["metric"], "value": row["value"],
                        "values": row["values"], "lr": row["lr"]}
        r = family.compute(task, which, budget, seeds, self.mesh)
        if self.store is not None:
            self.store.put_ref(task.name, budget, seeds, which, ctx, family.metric, r["value"],
                               r["values"], r.get("lr"))
        return {"which": which, "metric": family.metric, "value": r["value"],
                "values": r["values"], "lr": r.get("lr")}

    def value(self, task, which: str, budget: int, seeds: int) -> float:
        return float(self.get(task, which, budget, seeds)["value"])

    def adam_loss(self, task, budget: int, seeds: int) -> float:
        """Tuned Adam's mean final loss: what supervised fitness divides by."""
        return self.value(task, "adam", budget, seeds)


def build(tasks: Iterable, seeds: tuple[int, ...] = (2,), path: Path | None = None,
          mesh: Mesh | None = None, progress=None, which: dict[str, tuple[str, ...]] | None = None,
          scale: int = 1) -> dict:
    """Regenerates the references of ``tasks`` at ``scale`` times their default budgets, each
    task by the family of its domain (``domain(task)``), and writes them to ``path``: the
    entries the file already holds that were not rebuilt (another task, seed count, family or
    which, or another budget of the task's version) are kept.

    Args:
      tasks: (task, domain) pairs.
      which: family name -> the references to build (default: all of the family's); e.g.
        ``{"tuned": ("lamb",)}`` adds tuned LAMB and keeps the other tuned optimizers.
      scale: the budget's multiple: 4 ships the references ``lab replay --horizon-scale 4``
        (and an export's ``heldout_4x``) would otherwise tune on first use.
    """
    if scale < 1:
        raise ValueError(f"horizon scale {scale}: must be at least 1")
    old = {}
    if path is not None and Path(path).exists():
        try:
            old = upgrade(json.loads(Path(path).read_text()))
        except json.JSONDecodeError:
            old = {}
    by_domain = {f.domain: f for f in _FAMILIES.values()}
    entries, rebuilt = [], {}
    for task, domain in tasks:
        if domain not in by_domain:
            raise ValueError(f"no reference family for domain {domain!r} (task {task.name}); "
                             f"known: {', '.join(sorted(by_domain))}")
        family = by_domain[domain]
        built = (which or {}).get(family.name, family.which)
        budget = task.steps * scale
        rebuilt.update({(family.name, w, task.name, n): (budget, family.context(task))
                        for w in built for n in seeds})
        for n in seeds:
            for w in built:
                r = family.compute(task, w, budget, n, mesh)
                entries.append({"family": family.name, "task": task.name,
                                "context": family.context(task),
                                "budget": budget, "seeds": n, "which": w,
                                "metric": family.metric, **r})
                if progress is not None:
                    progress(task.name, w, n, family.metric, r)
    if old.get("format") == FORMAT:  # an entry at another budget stays, unless it is stale
        entries += [e for e in old.get("entries", [])
                    if (at := rebuilt.get((e.get("family"), e.get("which"), e.get("task"),
                                           e.get("seeds")))) is None
                    or (e.get("budget") != at[0] and e.get("context") == at[1])]
    doc = {"format": FORMAT, "grid_id": grid_id(), "evaluator": EVALUATOR_VERSION,
           "lr_grid": list(LR_GRID), "seed_base": SEED_BASE, "entries": entries}
    if path is not None:
        tmp = Path(path).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        tmp.replace(path)
        shipped_text.cache_clear()
        shipped.cache_clear()
    return doc
