"""`lab export RUN[:RANK] --name NAME`: an artifact folder with held-out scores."""

from __future__ import annotations

from pathlib import Path

from lab import __version__
from lab.artifacts import write_artifact
from lab.console import log
from lab.inspect import function_info
from lab.replay import replay
from lab.store import Store
from lab.targets import resolve

LONGER = 4  # a learned rule is also replayed at this multiple of every task's horizon


def export(text: str, name: str, out: Path, store: Store, seeds: int | None = None,
           suite: str | None = None) -> Path:
    """Resolves ``text``, replays it on ``suite`` against tuned baselines (a drift objective:
    against PPO-clip and DPO on ``rl-heldout``, 8 seeds by default), writes the folder."""
    import tasks
    target = resolve(text, store)
    drift = target.rule.kind == "drift"
    suite = suite or ("rl-heldout" if drift else "heldout")
    seeds = seeds or (8 if drift else 5)
    if drift != tasks.is_rl_suite(suite):
        raise ValueError(f"suite {suite!r}: a {target.rule.kind} candidate is scored on "
                         + ("an RL suite" if drift else "a supervised suite"))
    info = function_info(target, store)
    log(f"export {target.label}: hash {info['hash']}, replaying on {suite} ({seeds} seeds)")
    train = None
    if drift:
        from lab.rl.replay import replay_rl
        held = replay_rl(target, suite, seeds)
        run_suite = (target.run or {}).get("config", {}).get("suite")
        if run_suite and tasks.is_rl_suite(run_suite) and run_suite != suite:
            log(f"export {target.label}: replaying on its training suite {run_suite}")
            train = replay_rl(target, run_suite, seeds)
    else:
        # a program is also replayed with its learning rate tuned per task, like the baselines
        held = replay(target, suite, seeds, store=store, tune_lr=target.rule.kind == "program")
    longer = None
    if target.rule.kind == "learned":  # and at horizons 4x the tasks' (speedup vs tuned Adam)
        log(f"export {target.label}: replaying on {suite} at {LONGER}x the horizons")
        longer = replay(target, suite, seeds, baselines=("adam",), store=store,
                        horizon_scale=LONGER)
    run = None
    if target.run is not None:
        run = {"id": target.run["id"], "name": target.run["name"],
               "config_hash": target.run["config_hash"],
               "code_version": target.run["code_version"], "rank": target.rank,
               "fitness": target.fitness, "suite": target.run["config"].get("suite")}
    metrics = {"heldout": held, "run": run, "code_version": __version__,
               "target": target.text}
    if longer is not None:
        metrics[f"heldout_x{LONGER}"] = longer
    if train is not None:  # the same comparison on the environments it was trained on
        metrics["train"] = train
    if target.run is not None:
        metrics["search"] = search_summary(store, target.run["id"])
    return write_artifact(out, name, target, info, metrics)


def search_summary(store: Store, run_id: str) -> dict:
    """The search behind a candidate: generations, evaluations, cache hit rate, time saved, and
    what the search wrote after its generations (finalists, ablation, funnel, validation)."""
    import json
    gens = store.generations(run_id)
    hits = sum(g["hits"] or 0 for g in gens)
    misses = sum(g["misses"] or 0 for g in gens)
    out = {"generations": len(gens), "children_generated": hits + misses,
           "functions_evaluated": misses,
           "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
           "seconds": float(sum(g["seconds"] or 0.0 for g in gens))}
    folder = store.run_dir(run_id)
    if (folder / "metrics.jsonl").exists():
        lines = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        out["cache_time_saved_s"] = float(sum(ln.get("time_saved_s") or 0.0 for ln in lines))
    if (folder / "finalists.json").exists():
        out["after_search"] = json.loads((folder / "finalists.json").read_text())
    return out
