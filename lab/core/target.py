"""One candidate, resolved from any target form (``lab.commands.targets``): the record every
kind's views, replay and export receive."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Target:
    """One candidate: its rule family, genome and outer learning rate.

    Attributes:
      text: what the user typed.
      rule, genome: the candidate (``rule.kind`` names its kind in ``lab.core.kind``).
      lr: the outer learning rate it is meant to run with (``Ctx.lr``).
      label: a short name for tables and plots.
      run: the run it comes from (a store row), if any; ``rank`` its rank there.
      store_hash: its key in the store's candidates table, if stored.
      fitness: its training fitness, if it comes from a run.
      artifact: the artifact folder it was loaded from, if any.
      trained_on: the suite it was searched on, where an artifact's ``metrics.json`` says
        (a run's is in its config).
      curriculum: the level curriculum it was meta-trained on (``uniform``, ``regret``), where
        an artifact's ``metrics.json`` says (a run's is in its config).
    """

    text: str
    rule: Any
    genome: Any
    lr: float
    label: str
    run: dict | None = None
    rank: int | None = None
    store_hash: str | None = None
    fitness: float | None = None
    artifact: Path | None = None
    trained_on: str | None = None
    curriculum: str | None = None


def plot_paths(target: Target, store, hash_: str, what: str) -> list[Path]:
    """Where an inspect plot of ``target`` goes (``what``: behaviour, surface, ...), in order of
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


def write_plot(target: Target, store, hash_: str, what: str, draw) -> str | None:
    """``draw(path)`` at the first of ``plot_paths`` that can be written; its path, or None."""
    from lab.console import log
    for path in plot_paths(target, store, hash_, what):
        try:
            return str(draw(path))
        except OSError as e:  # e.g. a read-only artifact folder: try the next place
            log(f"inspect: cannot write {path} ({e})")
    return None
