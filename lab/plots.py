"""matplotlib (Agg) PNGs: fitness over generations, loss curves per task, a learned rule's
behaviour."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fitness_over_generations(generations: list[dict], path: Path, title: str) -> Path:
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
    ax.set_ylabel("fitness (log loss ratio vs tuned Adam; lower is better)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def loss_curves(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per task: the mean training-loss curve of every rule (log scale)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(3, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for r in (r for r in rows if r["task"] == task):
            ys = [y if y is not None and y > 0 else float("nan") for y in r["curve"]]
            ax.plot(range(1, len(ys) + 1), ys, label=r["rule"], marker=".")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training segment")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path, title)


def learned_behaviour(curves: dict, steps: dict, path: Path, title: str,
                      adam_lr: float | None = None) -> Path:
    """Two panels: a learned rule's update against the gradient (one curve per momentum value,
    from ``learned_view.delta_vs_gradient``) and its effective step over an inner training run
    (log scale, from ``learned_view.effective_step``), with tuned Adam's learning rate."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    scale = curves.get("scale", 1.0)
    for m, row in zip(curves["momentum"], curves["delta"], strict=True):
        left.plot(curves["g"] / scale, row, label=f"momentum {m / scale:+.3g}")
    left.axhline(0.0, color="black", linewidth=0.5)
    left.axvline(0.0, color="black", linewidth=0.5)
    left.set_xlabel(f"gradient and momentum / the tensor's gradient RMS ({scale:.3g})")
    left.set_ylabel("delta (added to the parameter)")
    left.set_title(f"update at step {curves['step']} of {curves['horizon']} "
                   f"(outer lr {curves['lr']:g})", fontsize=9)
    left.legend(fontsize=8)
    ys = [y if y > 0 else float("nan") for y in steps["step"]]
    right.plot(range(len(ys)), ys, label="learned rule", color="tab:blue")
    if adam_lr is not None:
        right.axhline(adam_lr, color="tab:orange", linestyle="--",
                      label=f"tuned Adam lr {adam_lr:.3g}")
    right.set_yscale("log")
    right.set_xlabel(f"inner step ({steps['task']})")
    right.set_ylabel("RMS(delta) / RMS(Adam direction)")
    right.set_title("effective step size over training", fontsize=9)
    right.legend(fontsize=8)
    return _save(fig, path, title)


def _save(fig, path: Path, title: str | None = None) -> Path:
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
