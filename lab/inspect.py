"""`lab inspect`: a run's best candidates, or one candidate: readable form, hash, equals,
closest, scores, lineage; for a run also a PNG of fitness over generations; for a learned rule
its features, a summary of its behaviour and a PNG of it (``lab.rules.learned_view``); for a
drift objective its constraints, distances to PPO-clip and DPO and a PNG of its surface
D(r, A) (``lab.rl.view``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lab import treeio
from lab.console import log
from lab.hashing import describe_function
from lab.rules import source_of
from lab.store import Store, StoreError
from lab.targets import Target, resolve

# The inner problem a learned rule's effective step is measured on (its default budget).
BEHAVIOUR_TASK = "digits_mlp"


def function_info(target: Target, store: Store | None) -> dict:
    """Fingerprints a candidate (and stores the fingerprint with it when it is stored)."""
    info = describe_function(target.rule, target.genome)
    if store is not None and target.store_hash is not None:
        store.set_fingerprint(target.store_hash, treeio.tree_to_npz(info["fingerprint"]))
    return info


def _lineage(store: Store, hash_: str | None, limit: int = 20) -> list[str]:
    out = []
    while hash_ and len(out) < limit:
        try:
            row = store.candidate(hash_)
        except StoreError:
            break
        hash_ = row.get("parent")
        if hash_:
            out.append(hash_)
    return out


def candidate_doc(target: Target, store: Store | None) -> dict:
    info = function_info(target, store)
    doc = {"target": target.text, "label": target.label, "kind": target.rule.kind,
           "name": target.rule.name, "readable": target.rule.describe(target.genome),
           "hash": info["hash"], "equals": info["equals"], "closest": info["closest"],
           "lr": target.lr, "fitness": target.fitness, "store_key": target.store_hash,
           "run": target.run["id"] if target.run else None, "rank": target.rank}
    if store is not None and target.store_hash is not None:
        doc["scores"] = [{"context": e["context"], "fitness": e["fitness"],
                          "diverged": e["diverged"], "hits": e["hits"],
                          "run": e["first_run"], "generation": e["first_generation"]}
                         for e in store.evaluations_for(target.store_hash)]
        doc["lineage"] = _lineage(store, target.store_hash)
    if target.artifact is not None:
        doc["artifact"] = str(target.artifact)
    doc.update(_text_forms(target))
    if target.rule.kind == "learned":
        doc.update(_learned_behaviour(target, store, info["hash"]))
    if target.rule.kind == "drift":
        doc.update(_drift_view(target, store, info))
    return doc


def _drift_view(target: Target, store: Store | None, info: dict) -> dict:
    """``features``, ``constraints`` (checked on the grid), ``distances`` to the known
    objectives, ``surface`` (drift at a few points) and ``plot`` (the PNG of D(r, A))."""
    from lab.plots import drift_surface
    from lab.rl import view
    surf = view.surface(target.rule, target.genome)
    doc = {"features": list(target.rule.features), "constraints": info["constraints"],
           "distances": info["distances"], "surface": view.summary(surf), "plot": None}
    for path in _plot_paths(target, store, info["hash"], "surface"):
        try:
            doc["plot"] = str(drift_surface(surf, path, f"{target.label} ({target.rule.name})"))
            break
        except OSError as e:  # e.g. a read-only artifact folder: try the next place
            log(f"inspect: cannot write {path} ({e})")
    return doc


def _learned_behaviour(target: Target, store: Store | None, hash_: str) -> dict:
    """``features``, ``behaviour`` (update against gradient at a few momentum values, effective
    step over a training run of ``BEHAVIOUR_TASK``, tuned Adam's lr) and ``plot`` (the PNG)."""
    from lab.plots import learned_behaviour
    from lab.rules import learned_view as view
    from lab.rules.learned import features_of
    from tasks import get_task
    task = get_task(BEHAVIOUR_TASK)
    steps = view.effective_step(target.rule, target.genome, task, lr=target.lr)
    mid = task.steps // 2
    # probe the update at the gradient and parameter scales the run sees at mid-training
    scale, p_scale = (float(x) if np.isfinite(x) and x > 0 else 1.0
                      for x in (steps["rms_grad"][mid], steps["rms_param"][mid]))
    curves = view.delta_vs_gradient(target.rule, target.genome, lr=target.lr, step=mid,
                                    horizon=task.steps, scale=scale, p_scale=p_scale)
    reference = view.adam_reference(task, task.steps, steps["seeds"])
    doc = {"features": list(features_of(target.rule).names),
           "behaviour": view.summary(curves, steps, reference), "plot": None}
    for path in _plot_paths(target, store, hash_):
        try:
            doc["plot"] = str(learned_behaviour(
                curves, steps, path, f"{target.label} ({target.rule.name})",
                None if reference is None else reference["lr"]))
            break
        except OSError as e:  # e.g. a read-only artifact folder: try the next place
            log(f"inspect: cannot write {path} ({e})")
    return doc


def _plot_paths(target: Target, store: Store | None, hash_: str,
                what: str = "behaviour") -> list[Path]:
    """Where a learned rule's behaviour PNG (a drift's surface PNG) goes, in order of
    preference: beside its artifact, in its run's folder, in ``<store folder>/inspect/``."""
    name = f"{what}-{hash_[:16]}.png"
    paths = []
    if target.artifact is not None:
        paths.append(Path(target.artifact) / f"{what}.png")
    if store is not None:
        if target.run is not None:
            paths.append(store.run_dir(target.run["id"]) / name)
        paths.append(store.path.parent / "inspect" / name)
    return paths


def _text_forms(target: Target) -> dict:
    """``source`` (parses back to the same program) and ``simplified`` (dead code out,
    constants folded) for kinds with a text form."""
    source = source_of(target.rule, target.genome)
    if source is None:
        return {}
    from lab.rules.program import program_of, simplify, to_source
    p = program_of(target.genome)
    q = simplify(p)
    return {"source": source, "simplified": to_source(q), "statements": len(p),
            "live_statements": len(q)}


def run_doc(run: dict, store: Store, top: int) -> dict:
    from lab.plots import fitness_over_generations
    gens = store.generations(run["id"])
    best = []
    for rank in range(min(top, len(store.best_members(run["id"], k=top)))):
        t = resolve(f"{run['id']}:{rank}", store)
        best.append({"rank": rank, **candidate_doc(t, store)})
    plot = None
    if gens:
        plot = str(fitness_over_generations(gens, store.run_dir(run["id"]) / "fitness.png",
                                            f"{run['name']} ({run['id']})"))
    hits = sum(g["hits"] or 0 for g in gens)
    total = hits + sum(g["misses"] or 0 for g in gens)
    return {"run": {k: run[k] for k in ("id", "name", "kind", "status", "best", "generations",
                                        "config_hash", "code_version", "context")},
            "hash": best[0]["hash"] if best else None,
            "best": best, "suite": run["config"].get("suite"),
            "cache": {"hits": hits, "lookups": total, "hit_rate": hits / total if total else None},
            "cache_hit_rate": hits / total if total else 0.0,
            "generations": [{k: g[k] for k in ("idx", "best", "mean", "hit_rate", "seconds",
                                               "candidates_per_s", "diverged")} for g in gens],
            "plot": plot, **_run_reports(store, run["id"])}


def _run_reports(store: Store, run_id: str) -> dict:
    """What a program search wrote after its generations (finalists, ablation, funnel,
    meta-validation) and the time its cache saved."""
    out = {}
    folder = store.run_dir(run_id)
    report = folder / "finalists.json"
    if report.exists():
        out["after_search"] = json.loads(report.read_text())
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        saved = [json.loads(ln).get("time_saved_s") for ln in metrics.read_text().splitlines()]
        if any(s is not None for s in saved):
            out["cache_time_saved_s"] = float(sum(s or 0.0 for s in saved))
    return out


def inspect_target(text: str, store: Store | None, top: int = 5) -> dict:
    """The document ``lab inspect TARGET --json`` prints."""
    plain = not re.match(r"^[a-z]+:", text) and not re.search(r":\d+$", text)
    if plain and store is not None:
        try:
            run = store.get_run(text)
        except StoreError:
            run = None
        if run is not None:
            return run_doc(run, store, top)
    return candidate_doc(resolve(text, store), store)
