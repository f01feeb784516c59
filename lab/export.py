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


def export(text: str, name: str, out: Path, store: Store, seeds: int = 5,
           suite: str = "heldout") -> Path:
    """Resolves ``text``, replays it on ``suite`` against tuned baselines, writes the folder."""
    target = resolve(text, store)
    info = function_info(target, store)
    log(f"export {target.label}: hash {info['hash']}, replaying on {suite} ({seeds} seeds)")
    held = replay(target, suite, seeds, store=store)
    run = None
    if target.run is not None:
        run = {"id": target.run["id"], "name": target.run["name"],
               "config_hash": target.run["config_hash"],
               "code_version": target.run["code_version"], "rank": target.rank,
               "fitness": target.fitness, "suite": target.run["config"].get("suite")}
    metrics = {"heldout": held, "run": run, "code_version": __version__,
               "target": target.text}
    return write_artifact(out, name, target, info, metrics)
