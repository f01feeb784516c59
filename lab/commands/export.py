"""`lab export RUN[:RANK] --name NAME`: an artifact folder with held-out scores."""

from __future__ import annotations

from pathlib import Path

from lab import __version__
from lab.commands.artifacts import provenance, write_artifact
from lab.commands.inspection import function_info, search_summary
from lab.commands.targets import resolve
from lab.console import log
from lab.core.kind import get
from lab.core.store import Store


def export(text: str, name: str, out: Path, store: Store, seeds: int | None = None,
           suite: str | None = None) -> Path:
    """Resolves ``text``, replays it on ``suite`` (default: its kind's held-out suite) against
    the kind's baselines (``Kind.export``), and writes the folder."""
    import tasks
    target = resolve(text, store)
    kind = get(target.rule.kind)
    suite = suite or kind.replay_suite
    seeds = seeds or kind.replay_seeds
    tasks.get_suite(suite)
    if tasks.domain_of(suite) != kind.domain:
        raise ValueError(f"suite {suite!r}: a {kind.name} candidate is scored on the "
                         f"{kind.domain} suites, not on {tasks.domain_of(suite)} ones")
    info = function_info(target, store)
    log(f"export {target.label}: hash {info['hash']}, replaying on {suite} ({seeds} seeds)")
    metrics = kind.export(target, store, suite, seeds)
    run = None
    if target.run is not None:
        run = {"id": target.run["id"], "name": target.run["name"],
               "config_hash": target.run["config_hash"],
               "code_version": target.run["code_version"], "rank": target.rank,
               "fitness": target.fitness, "suite": target.run["config"].get("suite")}
    metrics = {**metrics, "run": run, "code_version": __version__, "target": target.text}
    if target.run is not None:
        metrics["search"] = search_summary(store, target.run["id"])
    elif target.artifact is not None:  # an artifact exported again (more seeds, baselines)
        metrics.update(provenance(Path(target.artifact)))
    return write_artifact(out, name, target, info, metrics)
