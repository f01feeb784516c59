"""What population-based training yields: an optax optimizer whose hyperparameters follow a
piecewise-constant trajectory over the run, as an update rule (family ``pbt(NAME)``).

The genome is the optax optimizer's encoded hyperparameters (``lab.core.optimizers``: ``log x``,
decay rates ``log(1 - x)``) per interval: ``{keyword: [G] float32}``. A run of ``T`` steps is cut
into the ``G`` intervals PBT trained in: step ``t`` is in interval ``i = floor(t G / T)`` (steps
``ceil(i T / G)`` to ``ceil((i + 1) T / G) - 1``), so the trajectory is a schedule in fractions of
the run and replays on tasks of any horizon. With one value per keyword it is the optimizer
itself; in general it equals ``optax.inject_hyperparams(factory)`` with one
``optax.piecewise_constant_schedule`` per keyword at the run's horizon (``as_optax``, tested).
"""

from __future__ import annotations

import functools
import re

import jax.numpy as jnp
import numpy as np
import optax

from lab.core.optimizers import BASELINES, decode, make_baseline, parse_baseline
from lab.core.rule import Ctx, UpdateRule

KIND = "pbt"
_FAMILY = re.compile(r"^pbt\((.*)\)$", re.S)


def interval_of(step, horizon, intervals: int):
    """The interval (0 .. G - 1) of step ``step`` in a run of ``horizon`` steps (traceable)."""
    i = (step * intervals) // jnp.maximum(horizon, 1)
    return jnp.clip(i, 0, intervals - 1)


def bounds(horizon: int, intervals: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` steps of each interval of a ``horizon``-step run (end exclusive)."""
    edge = [-(-i * horizon // intervals) for i in range(intervals + 1)]  # ceil(i T / G)
    return list(zip(edge[:-1], edge[1:], strict=True))


def family(base: str) -> str:
    return f"{KIND}({base})"


@functools.cache
def trajectory_rule(base: str = "adam", intervals: int = 10) -> UpdateRule:
    """The family ``pbt(BASE)`` (``BASE`` an optax baseline, optionally with static keywords:
    ``adam``, ``sgd(nesterov=True)``); its default genome is the optimizer's defaults held over
    ``intervals`` intervals."""
    name, fixed = parse_baseline(base)
    inner = make_baseline(name, fixed, KIND)
    keys = list(inner.genome)

    def pick(genome, ctx: Ctx):
        g = genome[keys[0]].shape[0]  # static: the genome's number of intervals
        i = interval_of(jnp.asarray(ctx.step, jnp.int32), jnp.asarray(ctx.horizon, jnp.int32), g)
        return {k: jnp.asarray(genome[k])[i] for k in keys}

    def init(genome, params):
        return inner.init({k: jnp.asarray(genome[k])[0] for k in keys}, params)

    def update(genome, grads, state, params, ctx: Ctx):
        return inner.update(pick(genome, ctx), grads, state, params, ctx)

    def describe(genome) -> str:
        h = {k: np.asarray(v, np.float64) for k, v in hyperparameters(name, genome).items()}
        rows = [f"  {k}: " + ", ".join(f"{x:.4g}" for x in v) for k, v in h.items()]
        n = len(next(iter(h.values())))
        return (f"{KIND}:{inner.name} with its hyperparameters per {_nth(n)} of the run:\n"
                + "\n".join(rows))

    def scored_at(genome, state, params):  # schedule-free's average: where the run is scored
        return inner.scored_at({k: jnp.asarray(genome[k])[-1] for k in keys}, state, params)

    genome = {k: np.full(intervals, v, np.float32) for k, v in inner.genome.items()}
    return UpdateRule(KIND, family(base), init, update, genome, describe,
                      scored_at if inner.scored_at is not None else None)


def _nth(n: int) -> str:
    return {1: "whole", 2: "half", 4: "quarter", 10: "tenth"}.get(n, f"1/{n}")


def hyperparameters(name: str, genome) -> dict[str, np.ndarray]:
    """The trajectory decoded: optax keyword -> ``[G]`` values."""
    return {k: np.asarray(v, np.float64) for k, v in
            decode(name, {k: jnp.asarray(x) for k, x in genome.items()}).items()}


def base_of(rule_name: str) -> str:
    """``pbt(adam)`` -> ``adam``; ValueError for another family name."""
    m = _FAMILY.match(rule_name)
    if not m:
        raise ValueError(f"unknown pbt family {rule_name!r} (expected pbt(NAME), NAME an optax "
                         f"baseline: {', '.join(BASELINES)})")
    return m.group(1)


def as_optax(base: str, genome, horizon: int, learning_rate_scale: float = 1.0
             ) -> optax.GradientTransformation:
    """The trajectory as optax builds it: ``optax.inject_hyperparams(factory)`` with each
    hyperparameter an ``optax.piecewise_constant_schedule`` over the run's ``horizon`` steps
    (the learning rate times ``learning_rate_scale``, the run's outer lr)."""
    name, fixed = parse_baseline(base)
    spec = BASELINES[name]
    h = hyperparameters(name, genome)
    # optax scales by f_i from count b_i on: an interval's first step is its boundary
    edges = [start for start, _ in bounds(horizon, len(next(iter(h.values()))))[1:]]

    def schedule(values, scale=1.0):
        v = [float(x) * scale for x in values]
        scales = {e: v[j + 1] / v[j] for j, e in enumerate(edges)}
        return optax.piecewise_constant_schedule(v[0], scales)

    kwargs = {k: schedule(v, learning_rate_scale if k == "learning_rate" else 1.0)
              for k, v in h.items()}
    return optax.inject_hyperparams(spec.factory)(**kwargs, **{**spec.fixed, **fixed})
