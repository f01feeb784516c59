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

A schedule is searched for a fixed base rule: ``schedule_rule()`` is Adam (optax's
``scale_by_adam`` defaults) whose step is ``BASE_LR * ctx.lr * lr * schedule(t, T)`` times Adam's
direction, with ``t = ctx.step`` and ``T = ctx.horizon``; its genome is the schedule program's
interpreter arrays and ``lr``, a multiplier of the learning rate (the search's grid). With the
constant seed it is optax.adam exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.hashing import digest, matches, relative_distance, round_mantissa
from lab.core.rule import Ctx, UpdateRule
from lab.kinds.program import interpreted
from lab.kinds.program.ir import Program
from lab.kinds.program.signatures import SCHEDULE

GRID_T = (100, 1000, 10000)  # horizons (each a multiple of 10: integer warmups, integer t)
GRID_Z = np.linspace(0.0, 1.0, 21)  # fractions t / T (t = z T is an integer step)
FLUSH = 2.0**-30  # |multiplier| below this reads as 0
WARMUP = 0.1  # warmup_cosine: the fraction of the run spent warming up
BASE = "adam"  # the base rule a schedule is searched for
BASE_LR = 1e-3  # Adam's default step inside (``lab/kinds/program/seeds/adam.prog`` too)
MAX_MULTIPLIER = 1e3  # a schedule larger than this anywhere on the grid is not scored
FINGERPRINT_BATCH = 64  # genomes per compiled call of ``fingerprints`` (padded)


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


@functools.lru_cache(maxsize=4)
def _grid_values64():
    def one(genome):
        t, T = (jnp.asarray(x, jnp.float64) for x in grid())
        return interpreted.apply(genome, t, T)
    return jax.jit(jax.vmap(one))


def grid_values(genomes: list) -> np.ndarray:
    """``[n, len(GRID_T), len(GRID_Z)]`` float64: schedule program genomes on the grid, batched
    (``FINGERPRINT_BATCH`` per compiled call, padded)."""
    out = []
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        fn = _grid_values64()
        for start in range(0, len(genomes), FINGERPRINT_BATCH):
            part = [{k: v for k, v in g.items() if k != "lr"}
                    for g in genomes[start:start + FINGERPRINT_BATCH]]
            padded = part + [part[-1]] * (FINGERPRINT_BATCH - len(part))
            batch = {k: np.stack([np.asarray(g[k]) for g in padded]) for k in padded[0]}
            out.append(np.asarray(fn(batch), np.float64)[:len(part)])
    return np.concatenate(out)


def fingerprints(genomes: list) -> list[tuple[np.ndarray, str]]:
    """``fingerprint`` of many schedule program genomes, batched (the interpreter's values;
    the ``lr`` multiplier is not part of a schedule's identity)."""
    return [_finish(v) for v in grid_values(genomes)]


def problems(genomes: list) -> list[str]:
    """Per genome, why it is not a schedule worth a training run ("" if it is): not finite,
    negative, zero everywhere, or above ``MAX_MULTIPLIER`` somewhere on the grid."""
    out = []
    for v in grid_values(genomes):
        if not np.all(np.isfinite(v)):
            out.append("not finite on the grid")
        elif v.min() < 0:
            out.append(f"negative ({v.min():.3g}) on the grid")
        elif v.max() == 0:
            out.append("zero everywhere: the rule would not move")
        elif v.max() > MAX_MULTIPLIER:
            out.append(f"larger than {MAX_MULTIPLIER:g} ({v.max():.3g}) on the grid")
        else:
            out.append("")
    return out


@functools.cache
def schedule_rule(length: int = 24) -> UpdateRule:
    """Adam with its step scaled by a schedule program (module docstring): an update rule whose
    genome is the schedule's interpreter arrays plus the ``lr`` multiplier; its default genome
    is the constant schedule (optax.adam at ``BASE_LR * ctx.lr``)."""
    from lab.kinds.program.programs import genome_of, load_seed, program_of
    from lab.kinds.program.text import to_source
    adam = optax.scale_by_adam()

    def init(genome, params):
        return adam.init(params)

    def update(genome, grads, state, params, ctx: Ctx):
        direction, state = adam.update(grads, state, params)
        t = jnp.asarray(ctx.step, jnp.float32)
        multiplier = interpreted.apply(genome, t, jnp.asarray(ctx.horizon, jnp.float32))
        scale = -BASE_LR * ctx.lr * jnp.asarray(genome.get("lr", 1.0), jnp.float32) * multiplier
        delta = jax.tree.map(lambda d: (scale * d).astype(d.dtype), direction)
        return delta, state

    def describe(genome) -> str:
        return (f"# Adam (optax.scale_by_adam) at {BASE_LR:g} x lr, times this schedule\n"
                + to_source(program_of(genome, "schedule", SCHEDULE)))

    return UpdateRule("program", f"schedule({BASE})", init, update,
                      genome_of(load_seed("constant", SCHEDULE.name), length), describe)


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


# ---- inspect: the curve beside optax's --------------------------------------------------------
VIEW_T = 1000  # the horizon the curve is drawn at


def curve(genome, horizon: int = VIEW_T, points: int = 101) -> dict:
    """``{"z", "values", "known": {name: values}}``: the multiplier of a schedule genome at
    ``points`` fractions of a ``horizon``-step run, and the known schedules' (float32, as a run
    computes them)."""
    t = np.round(np.linspace(0.0, 1.0, points) * horizon)
    g = {k: v for k, v in genome.items() if k != "lr"}
    values = np.asarray(interpreted.apply(g, jnp.asarray(t, jnp.float32),
                                          jnp.float32(horizon)), np.float64)
    known = {}
    for name in KNOWN:
        if name == "rex":
            known[name] = rex(t, float(horizon))
        else:
            fn = _optax(name, horizon)
            known[name] = np.asarray([fn(int(s)) for s in t], np.float64)
    return {"z": t / horizon, "values": values, "known": known}


def draw(view: dict, path, title: str):
    """The schedule's multiplier against t / T beside the known schedules."""
    from lab.plots import plt, save
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in view["known"].items():
        ax.plot(view["z"], values, "--", alpha=0.6, label=KNOWN[name])
    ax.plot(view["z"], view["values"], "-", color="black", linewidth=2, label="candidate")
    ax.set_xlabel("t / T")
    ax.set_ylabel("learning-rate multiplier")
    ax.legend(fontsize=7)
    return save(fig, path, title)
