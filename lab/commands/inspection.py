"""`lab inspect`: a run's best candidates, or one candidate: readable form, hash, equals,
closest (among known rules, and among the store's fingerprinted candidates of its kind), scores,
lineage, and what its kind adds (``Kind.views``: a program's simplified source,
a learned rule's behaviour, a drift's surface); for a run also a PNG of fitness over
generations."""

from __future__ import annotations

import json
import re

import numpy as np

from lab import treeio
from lab.commands.targets import resolve
from lab.core.kind import get
from lab.core.store import Store, StoreError
from lab.core.target import Target


def function_info(target: Target, store: Store | None) -> dict:
    """Fingerprints a candidate (and stores the fingerprint with it when it is stored)."""
    info = get(target.rule.kind).describe_function(target.rule, target.genome)
    if store is not None and target.store_hash is not None:
        store.set_fingerprint(target.store_hash, treeio.tree_to_npz(info["fingerprint"]))
    return info


def in_store(store: Store, kind: str, fp, own: str | None) -> dict:
    """The stored candidates of ``kind`` computing the same function as fingerprint ``fp``
    (``equals``: store hashes, whatever their representation: a drift program and an LPO
    network, a schedule program and another) and the nearest other one (``closest``: hash and
    RMS gap between fingerprints; None when no other is fingerprinted)."""
    from lab.core.hashing import distance, matches
    fp = np.asarray(fp, np.float64)
    equals, best = [], None
    for h, raw in store.fingerprinted(kind):
        if h == own:
            continue
        other = np.asarray(treeio.tree_from_npz(raw), np.float64)
        if other.shape != fp.shape:  # another signature or probe version
            continue
        if matches(fp, other):
            equals.append(h)
        d = distance(fp, other)
        if best is None or d < best[1]:
            best = (h, d)
    return {"equals": equals, "closest": None if best is None else
            {"hash": best[0], "distance": best[1]}}


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
    kind = get(target.rule.kind)
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
    if store is not None:
        doc["store"] = in_store(store, target.rule.kind, info["fingerprint"], target.store_hash)
    if target.artifact is not None:
        doc["artifact"] = str(target.artifact)
    if kind.text is not None:  # parses back to the same candidate
        doc["source"] = kind.text.to_text(target.rule, target.genome)
    doc.update(kind.views(target, store, info))
    return doc


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
    summary = search_summary(store, run["id"])
    total = summary["children_generated"]
    hits = total - summary["functions_evaluated"]
    reports = {k: summary.pop(k) for k in ("after_search", "cache_time_saved_s") if k in summary}
    return {"run": {k: run[k] for k in ("id", "name", "kind", "status", "best", "generations",
                                        "config_hash", "code_version", "context")},
            "hash": best[0]["hash"] if best else None,
            "best": best, "suite": run["config"].get("suite"),
            "cache": {"hits": hits, "lookups": total, "hit_rate": summary["cache_hit_rate"]},
            "cache_hit_rate": summary["cache_hit_rate"] or 0.0,
            "generations": [{k: g[k] for k in ("idx", "best", "mean", "hit_rate", "seconds",
                                               "candidates_per_s", "diverged")} for g in gens],
            "search": summary, "plot": plot, **reports}


# the per-generation counts of a program search's cache hits, by cause (metrics.jsonl)
HIT_CAUSES = ("same_as_parent_symbolic", "same_as_parent_function", "known_function")


def search_summary(store: Store, run_id: str) -> dict:
    """The search behind a run: generations, children generated, functions evaluated (and per
    hour of generation time), cache hit rate, hits by cause and time saved (where the search
    counts them), and what the search wrote after its generations (finalists, ablation,
    funnel, validation)."""
    gens = store.generations(run_id)
    hits = sum(g["hits"] or 0 for g in gens)
    misses = sum(g["misses"] or 0 for g in gens)
    seconds = float(sum(g["seconds"] or 0.0 for g in gens))
    out = {"generations": len(gens), "children_generated": hits + misses,
           "functions_evaluated": misses,
           "functions_per_hour": 3600.0 * misses / seconds if seconds > 0 else None,
           "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
           "seconds": seconds}
    folder = store.run_dir(run_id)
    if (folder / "metrics.jsonl").exists():
        lines = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        out["cache_time_saved_s"] = float(sum(ln.get("time_saved_s") or 0.0 for ln in lines))
        causes = {c: sum(int(ln.get(c) or 0) for ln in lines) for c in HIT_CAUSES
                  if any(c in ln for ln in lines)}
        if causes:
            out["cache_hits_by_cause"] = causes
    if (folder / "finalists.json").exists():
        out["after_search"] = json.loads((folder / "finalists.json").read_text())
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
