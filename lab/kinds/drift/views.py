"""What a drift objective does: its surface D(r, A) at a few training-progress slices beside
PPO-clip's and DPO's, and a few numbers that summarize it (for ``lab inspect``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lab.core.target import Target, write_plot
from lab.kinds.drift.objectives import Objective, dpo, ppo_clip

SURFACE_R = np.exp(np.linspace(np.log(0.5), np.log(2.0), 81))
SURFACE_A = np.linspace(-3.0, 3.0, 61)
SLICES = (0.0, 0.5, 1.0)
PROBES = ((0.7, -1.0), (0.7, 1.0), (1.4, -1.0), (1.4, 1.0))  # (r, A) points in the summary


def _values(objective: Objective, genome, progress: float) -> np.ndarray:
    r, a = np.meshgrid(SURFACE_R, SURFACE_A, indexing="ij")
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), genome)
    return np.asarray(objective.drift(g, jnp.asarray(r, jnp.float32),
                                      jnp.asarray(a, jnp.float32),
                                      jnp.float32(progress)), np.float64)


def surface(objective: Objective, genome) -> dict:
    """``{"r", "a", "slices": [{"progress", "values" [R, A]}], "known": {name: {"values"}}}``;
    one slice unless the drift depends on training progress (TA-LPO, a program reading it)."""
    slices = [{"progress": p, "values": _values(objective, genome, p)} for p in SLICES]
    if all(np.array_equal(s["values"], slices[0]["values"]) for s in slices):
        slices = [{"progress": 0.5, "values": slices[1]["values"]}]
    return {"r": SURFACE_R, "a": SURFACE_A, "slices": slices,
            "known": {name: {"values": _values(o, o.genome, 0.5)}
                      for name, o in (("ppo_clip", ppo_clip()), ("dpo", dpo()))}}


def summary(view: dict) -> dict:
    """Drift at the ``PROBES`` points for the candidate (per slice) and the known objectives,
    and the candidate's largest drift on the surface."""
    r, a = view["r"], view["a"]

    def at(values):
        return {f"r={pr:g},A={pa:+g}": float(values[int(np.abs(r - pr).argmin()),
                                                    int(np.abs(a - pa).argmin())])
                for pr, pa in PROBES}

    return {"candidate": [{"progress": s["progress"], "drift": at(s["values"]),
                           "max": float(s["values"].max())} for s in view["slices"]],
            "known": {name: at(k["values"]) for name, k in view["known"].items()},
            "r_range": [float(r[0]), float(r[-1])], "a_range": [float(a[0]), float(a[-1])]}


def inspect_view(target: Target, store, info: dict) -> dict:
    """What ``lab inspect`` adds for a drift: ``features``, ``constraints`` (checked on the
    grid), ``distances`` to the known objectives, ``surface`` (drift at a few points) and
    ``plot`` (the PNG of D(r, A))."""
    from lab.kinds.drift.plots import drift_surface
    surf = surface(target.rule, target.genome)
    title = f"{target.label} ({target.rule.name})"
    plot = write_plot(target, store, info["hash"], "surface",
                      lambda path: drift_surface(surf, path, title))
    return {"features": list(target.rule.features), "constraints": info["constraints"],
            "distances": info["distances"], "surface": summary(surf), "plot": plot}
