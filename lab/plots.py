"""matplotlib (Agg) PNGs: fitness over generations, curves per task; ``save`` and ``panels`` for the
kinds' own plots (a learned rule's behaviour, a drift's surface)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fitness_over_generations(generations: list[dict], path: Path, title: str,
                             ylabel: str = "fitness (lower is better)") -> Path:
    """Best, mean and best-so-far fitness per generation."""
    g = [r["idx"] for r in generations]
    best = [r["best"] for r in generations]
    mean = [r["mean"] for r in generations]
    so_far, running = [], float("inf")
    for b in best:
        running = min(running, b if b is not None else running)
        so_far.append(running)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(g, mean, label="mean", color="tab:gray")
    ax.plot(g, best, label="best", color="tab:blue")
    ax.plot(g, so_far, label="best so far", color="tab:green", linestyle="--")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def loss_curves(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per task: the mean training-loss curve of every rule (log scale)."""
    return panels(rows, path, title, "", log=True)


def panels(rows: list[dict], path: Path, title: str, ylabel: str, log: bool) -> Path:
    """One panel per ``task`` of ``rows``, one line per ``rule`` (its ``curve``)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(3, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for r in (r for r in rows if r["task"] == task):
            ys = [float("nan") if y is None or (log and y <= 0) else y for y in r["curve"]]
            ax.plot(range(1, len(ys) + 1), ys, label=r["rule"], marker=".")
        if log:
            ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training segment")
        if ylabel:
            ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return save(fig, path, title)


def save(fig, path: Path, title: str | None = None) -> Path:
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
