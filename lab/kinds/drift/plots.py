"""The drift kind's plots: a drift's surface D(r, A), return curves per environment."""

from __future__ import annotations

from pathlib import Path

from lab.plots import panels, plt, save


def drift_surface(view: dict, path: Path, title: str) -> Path:
    """Heatmaps of D(r, A) (one per progress slice, from ``lab.kinds.drift.views.surface``) beside
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
    return save(fig, path, title)


def return_curves(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per environment: the mean return over training of every objective."""
    return panels(rows, path, title, "mean episode return", log=False)
