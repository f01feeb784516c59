"""What population-based training yields: an optax optimizer whose hyperparameters follow a
piecewise-constant trajectory over the run, as an update rule (family ``pbt(NAME)``).

The genome is the optax optimizer's encoded hyperparameters (``lab.core.optimizers``: ``log x``,
decay rates ``log(1 - x)``) per interval: ``{keyword: [G] float32}``. A run of ``T`` steps is cut
into the ``G`` intervals PBT trained in: step ``t`` is in interval ``i = floor(t G / T)`` (steps
``ceil(i T / G)`` to ``ceil((i + 1) T / G) - 1``), so the trajectory is a schedule in fractions of
the run and replays on tasks of any horizon. With one value per keyword it is the optimizer
itself; in general it equals ``optax.inject_hyperparams(factory)`` with one
``optax.piecewise_constant_schedule`` per keyword at the run's horizon (``as_optax``, tested).

A program's trajectory (families ``pbt(program)`` and ``pbt(joint)``, ``program_trajectory_rule``)
is the interpreter genome of one program whose constants ``k`` (``[G, L]``) and learning-rate
multiplier ``lr`` (``[G]``) are per interval: the structure stays, its constants follow a schedule.
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


PROGRAM_BASES = ("program", "joint")  # pbt(program): update programs; pbt(joint): joint ones


@functools.cache
def program_trajectory_rule(signature: str = "update", intervals: int = 10) -> UpdateRule:
    """The family ``pbt(program)`` (``signature`` ``update``) or ``pbt(joint)``: a program of
    that signature with its constants and ``lr`` multiplier per interval; its default genome is
    the interpreter's default program held over ``intervals`` intervals."""
    from lab.kinds.program.programs import joint_rule, program_rule
    joint = signature == "joint"
    inner = joint_rule() if joint else program_rule()

    def at(genome, i):
        return {**genome, "k": jnp.asarray(genome["k"])[i], "lr": jnp.asarray(genome["lr"])[i]}

    def init(genome, params):
        return inner.init(at(genome, 0), params)

    def update(genome, grads, state, params, ctx: Ctx):
        g = genome["lr"].shape[0]  # static: the genome's number of intervals
        i = interval_of(jnp.asarray(ctx.step, jnp.int32), jnp.asarray(ctx.horizon, jnp.int32), g)
        return inner.update(at(genome, i), grads, state, params, ctx)

    def describe(genome) -> str:
        from lab.kinds.program.programs import program_of
        from lab.kinds.program.signatures import JOINT, UPDATE
        from lab.kinds.program.text import to_source
        first = {**{k: np.asarray(v) for k, v in genome.items()},
                 "k": np.asarray(genome["k"])[0], "lr": np.asarray(1.0, np.float32)}
        text = to_source(program_of(first, "program", JOINT if joint else UPDATE))
        h = program_hyperparameters(genome)
        rows = [f"  {k}: " + ", ".join(f"{x:.4g}" for x in v) for k, v in h.items()]
        return (f"{KIND}:{'joint ' if joint else ''}program with its learning-rate multiplier "
                f"and the constants that change per {_nth(len(h['lr']))} of the run (kI: "
                f"the constant of xI), at the start:\n{text}\n" + "\n".join(rows))

    base = inner.genome
    genome = {**base, "k": np.tile(np.asarray(base["k"], np.float32), (intervals, 1)),
              "lr": np.full(intervals, np.asarray(base["lr"]), np.float32)}
    return UpdateRule(KIND, family("joint" if joint else "program"), init, update, genome,
                      describe)


def program_hyperparameters(genome) -> dict[str, np.ndarray]:
    """A program trajectory's ``lr`` multiplier and each constant ``kI`` that changes over the
    run, per interval."""
    k = np.asarray(genome["k"], np.float64)
    out = {"lr": np.asarray(genome["lr"], np.float64)}
    for i in range(int(np.asarray(genome["n"]))):
        if np.any(k[:, i] != k[0, i]):
            out[f"k{i}"] = k[:, i]
    return out


def rule_of_family(name: str, intervals: int = 10) -> UpdateRule:
    """The trajectory family called ``name`` (``pbt(adam)``, ``pbt(program)``, ...)."""
    base = base_of(name)
    if base in PROGRAM_BASES:
        return program_trajectory_rule("joint" if base == "joint" else "update", intervals)
    return trajectory_rule(base, intervals)


def decoded(name: str, genome) -> dict[str, np.ndarray]:
    """The trajectory of family ``name`` decoded: hyperparameter -> ``[G]`` values (an optax
    optimizer's keywords, or a program's ``lr`` and changing constants)."""
    base = base_of(name)
    if base in PROGRAM_BASES:
        return program_hyperparameters(genome)
    return hyperparameters(base.split("(")[0], genome)


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


ADAM_DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}  # optax.scale_by_adam's


def piecewise_program(values, name: str = "pbt_schedule"):
    """A schedule program (signature ``schedule``: ``def f(t, T)``) equal to ``values[i]`` in
    interval ``i = floor(t G / T)`` of ``G = len(values)``: ``values[0]`` plus, for each
    boundary ``i`` where the value changes, ``d_i / 2 (1 + sign(t G + 1/2 - i T))`` (``t G - i
    T`` is an integer, so the sign is never 0: exact boundaries, whatever the horizon)."""
    from lab.kinds.program.ir import Program, Stmt
    from lab.kinds.program.ops import OP_INDEX
    from lab.kinds.program.signatures import SCHEDULE
    v = [float(x) for x in np.asarray(values, np.float64)]
    g, n_in = len(v), SCHEDULE.n_in  # registers: t = 0, T = 1, statement j = n_in + j
    stmts: list = []

    def emit(op, a=0, b=0, k=0.0) -> int:
        stmts.append(Stmt(OP_INDEX[op], a, b, k))
        return n_in + len(stmts) - 1

    at = emit("add_k", emit("scale_k", 0, k=float(g)), k=0.5)  # t G + 1/2
    total, offset = None, v[0]
    for i in range(1, g):
        d = v[i] - v[i - 1]
        if d == 0:
            continue
        step = emit("scale_k", emit("sign", emit("sub", at, emit("scale_k", 1, k=float(i)))),
                    k=d / 2)
        total = step if total is None else emit("add", total, step)
        offset += d / 2
    out = emit("const_k", k=offset) if total is None else emit("add_k", total, k=offset)
    return Program(tuple(stmts), (out,), name, SCHEDULE)


def as_schedule_program(rule_name: str, genome):
    """A ``pbt(adam)`` trajectory that changes only the learning rate, Adam's other
    hyperparameters at optax's defaults, as a schedule program of Adam
    (``lab.kinds.program.schedules.schedule_rule``: ``BASE_LR x lr x`` the program): the
    multiplier ``learning_rate_i / BASE_LR`` in interval ``i``. None for another trajectory."""
    from lab.kinds.program.schedules import BASE_LR
    if base_of(rule_name) != "adam":
        return None
    h = hyperparameters("adam", genome)
    if any(not np.allclose(h[k], v, rtol=1e-5, atol=0) for k, v in ADAM_DEFAULTS.items()):
        return None
    return piecewise_program(h["learning_rate"] / BASE_LR)
