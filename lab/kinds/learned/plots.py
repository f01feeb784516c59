"""The learned kind's plot: a rule's update against the gradient and its step over a run."""

from __future__ import annotations

from pathlib import Path

from lab.plots import plt, save


def learned_behaviour(curves: dict, steps: dict, path: Path, title: str,
                      adam_lr: float | None = None) -> Path:
    """Two panels: a learned rule's update against the gradient (one curve per momentum value,
    from ``views.delta_vs_gradient``) and its effective step over an inner training run
    (log scale, from ``views.effective_step``), with tuned Adam's learning rate."""
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
    return save(fig, path, title)
