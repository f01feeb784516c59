"""The pbt kind's plot: a hyperparameter trajectory over the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lab.plots import plt, save


def draw_trajectory(fields: dict, path: Path, title: str) -> Path:
    """Each hyperparameter that changes over the run (all of them if none does), as steps over
    the fraction of the run, on a log axis
    (linear for a negative constant)."""
    h = {k: np.asarray(v, np.float64) for k, v in fields["hyperparameters"].items()}
    shown = {k: v for k, v in h.items() if np.ptp(v) > 0} or h
    n = fields["intervals"]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    edges = np.arange(n + 1) / n
    for ax, (k, v) in zip(axes[0], shown.items(), strict=True):
        ax.stairs(v, edges, linewidth=2, color="black")
        ax.set_yscale("log" if np.all(v > 0) else "linear")  # a program's constant may be < 0
        ax.set_xlabel("fraction of the run")
        ax.set_ylabel(k)
    return save(fig, path, title)
