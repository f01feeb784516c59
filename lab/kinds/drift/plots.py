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


def draw_regret(history: list[dict], path: Path, title: str) -> Path:
    """One panel per environment: the regret of every level sampled in each generation (fresh
    levels and replays apart), and the mean regret of the level buffer (``lab.kinds.drift.
    curriculum``'s ``metrics.jsonl`` entries)."""
    names = sorted({k for h in history for k in h if k != "generation"})
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.0 * max(1, len(names)), 3.6),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        for replayed, color, label in ((False, "tab:blue", "fresh level"),
                                       (True, "tab:red", "replayed level")):
            xs, ys = [], []
            for h in history:
                entry = h.get(name)
                if entry is None:
                    continue
                for r, rep in zip(entry["regret"], entry["replayed"], strict=True):
                    if r is not None and rep == replayed:
                        xs.append(h["generation"])
                        ys.append(r)
            ax.scatter(xs, ys, s=8, color=color, alpha=0.6, label=label)
        gens = [h["generation"] for h in history if h.get(name, {}).get("buffer_mean")
                is not None]
        means = [h[name]["buffer_mean"] for h in history if h.get(name, {}).get("buffer_mean")
                 is not None]
        if gens:
            ax.plot(gens, means, color="black", label="buffer mean")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("generation")
        ax.set_ylabel("regret (0 = PPO-clip, 1 = random policy)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, path, title)
