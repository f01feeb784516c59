"""matplotlib (Agg) PNGs: fitness over generations, loss curves per task, a learned rule's
behaviour, a drift objective's surface, return curves per environment."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FITNESS_LABEL = "fitness (log loss ratio vs tuned Adam; lower is better)"


def fitness_over_generations(generations: list[dict], path: Path, title: str,
                             ylabel: str = FITNESS_LABEL) -> Path:
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
    return _save(fig, path)


def loss_curves(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per task: the mean training-loss curve of every rule (log scale)."""
    return _panels(rows, path, title, "", log=True)


def _panels(rows: list[dict], path: Path, title: str, ylabel: str, log: bool) -> Path:
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


def drift_surface(view: dict, path: Path, title: str) -> Path:
    """Heatmaps of D(r, A) (one per progress slice, from ``lab.rl.view.surface``) beside
    PPO-clip's and DPO's, and D against r at A = -1 and +1 for all three."""
    slices = view["slices"]
    panels = len(slices) + len(view["known"]) + 1
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4))
    r, a = view["r"], view["a"]
    vmax = max(max(float(s["values"].max()) for s in slices),
               max(float(k["values"].max()) for k in view["known"].values()), 1e-6)
    extent = (r[0], r[-1], a[0], a[-1])
    pairs = [(f"candidate, n/N = {s['progress']:g}", s["values"]) for s in slices] + \
        [(name, k["values"]) for name, k in view["known"].items()]
    for ax, (label, values) in zip(axes, pairs, strict=False):
        im = ax.imshow(values.T, origin="lower", aspect="auto", extent=extent, vmin=0.0,
                       vmax=vmax, cmap="viridis")
        ax.set_xlabel("ratio r")
        ax.set_ylabel("advantage A")
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes[len(pairs) - 1], label="drift D")
    ax = axes[-1]
    mid = slices[len(slices) // 2]
    for name, values, style in [("candidate", mid["values"], "-")] + \
            [(n, k["values"], "--") for n, k in view["known"].items()]:
        for av, color in ((-1.0, "tab:red"), (1.0, "tab:blue")):
            j = int(abs(a - av).argmin())
            ax.plot(r, values[:, j], style, color=color, alpha=1.0 if style == "-" else 0.5,
                    label=f"{name} A={av:+g}")
    ax.set_xlabel("ratio r")
    ax.set_ylabel("drift D")
    ax.set_title("slices at A = -1 and +1", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, path, title)


def return_curves(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per environment: the mean return over training of every objective."""
    return _panels(rows, path, title, "mean episode return", log=False)


def _save(fig, path: Path, title: str | None = None) -> Path:
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
