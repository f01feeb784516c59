"""Learning-rate schedules as functions of ``(t, T)``: one fingerprint for every representation.

A schedule is a multiplier of the learning rate at step ``t`` (0-based, optax's ``count``) of a
run of ``T`` steps. Its representations share one fingerprint procedure (``fingerprint``): the
multiplier on a fixed grid of horizons ``T`` and fractions ``t / T``, in float64 on the CPU,
mantissas rounded as every fingerprint in the lab and magnitudes below ``2 ** -30`` read as 0
(``cos(pi)`` computed through float32 constants is 1e-15, not 0). The representations:

* schedule programs (signature ``schedule``, ``def f(t, T): ... return multiplier``), through
  the compiled path or the interpreter (they agree);
* optax's schedules, built for each horizon of the grid (``KNOWN``: constant, linear decay,
  cosine decay, warmup-cosine with a tenth of the run as warmup), and REX, which optax lacks
  (``rex``: ``(1 - z) / (1/2 + (1 - z)/2)``, z = t/T; Chen et al. 2022, arXiv 2107.04197).

``describe`` names the known schedules a fingerprint equals and the closest one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.hashing import digest, matches, relative_distance, round_mantissa
from lab.kinds.program.ir import Program

GRID_T = (100, 1000, 10000)  # horizons (each a multiple of 10: integer warmups, integer t)
GRID_Z = np.linspace(0.0, 1.0, 21)  # fractions t / T (t = z T is an integer step)
FLUSH = 2.0**-30  # |multiplier| below this reads as 0
WARMUP = 0.1  # warmup_cosine: the fraction of the run spent warming up


def grid() -> tuple[np.ndarray, np.ndarray]:
    """``(t, T)`` float64 arrays ``[len(GRID_T), len(GRID_Z)]``, t an integer step."""
    T = np.asarray(GRID_T, np.float64)[:, None] * np.ones_like(GRID_Z)[None]
    return np.round(GRID_Z[None] * T), T


def rex(t, T):
    """REX's multiplier: ``(1 - z) / (1/2 + (1 - z)/2)``, ``z = t / T``."""
    a = 1.0 - t / T
    return a / (0.5 + 0.5 * a)


def _optax(name: str, horizon: int) -> Callable:
    if name == "constant":
        return optax.constant_schedule(1.0)
    if name == "linear":
        return optax.linear_schedule(1.0, 0.0, horizon)
    if name == "cosine":
        return optax.cosine_decay_schedule(1.0, horizon)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, int(WARMUP * horizon), horizon)
    raise ValueError(f"unknown optax schedule {name!r}")


KNOWN = {"constant": "optax.constant_schedule", "linear": "optax.linear_schedule",
         "cosine": "optax.cosine_decay_schedule",
         "warmup_cosine": "optax.warmup_cosine_decay_schedule", "rex": "REX"}


def _finish(values) -> tuple[np.ndarray, str]:
    v = np.asarray(values, np.float64).reshape(-1)
    v = np.where(np.abs(v) < FLUSH, 0.0, v)
    fp = round_mantissa(v)
    return fp, digest(fp)


def fingerprint_fn(fn: Callable) -> tuple[np.ndarray, str]:
    """(fingerprint, hash) of ``fn(t, T) -> multiplier`` (jax, elementwise) on the grid."""
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        t, T = (jnp.asarray(x, jnp.float64) for x in grid())
        return _finish(np.asarray(fn(t, T), np.float64))


def fingerprint_known(name: str) -> tuple[np.ndarray, str]:
    """(fingerprint, hash) of the known schedule ``name`` (optax's built per horizon)."""
    if name == "rex":
        return fingerprint_fn(rex)
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        t, _ = grid()
        rows = [np.asarray([_optax(name, h)(jnp.asarray(int(s))) for s in row], np.float64)
                for h, row in zip(GRID_T, t, strict=True)]
    return _finish(np.stack(rows))


def fingerprint(program: Program, genome=None) -> tuple[np.ndarray, str]:
    """(fingerprint, hash) of a schedule program (its compiled path; ``genome``: its constants
    ``{"k": [n]}`` when other than the program's own)."""
    from lab.kinds.program.compiled import structure_function
    fn, own = structure_function(program)
    g = own if genome is None else genome
    return fingerprint_fn(lambda t, T: fn(g, t, T))


@functools.cache
def known_fingerprints() -> tuple[tuple[str, np.ndarray], ...]:
    return tuple((name, fingerprint_known(name)[0]) for name in KNOWN)


def describe(fp: np.ndarray) -> dict:
    """``{"equals": [names], "closest": {"name", "distance"}}`` against the known schedules
    (distance: RMS gap over the known one's RMS)."""
    known = known_fingerprints()
    dist = {name: relative_distance(fp, k) for name, k in known}
    best = min(dist, key=dist.get)
    return {"equals": [f"{KNOWN[n]}" for n, k in known if matches(fp, k)],
            "closest": {"name": KNOWN[best], "distance": dist[best]}, "distances": dist}
