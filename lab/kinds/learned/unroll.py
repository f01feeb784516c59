"""Truncated inner runs: the evaluator's second train function, for meta-training by ES.

An inner run of horizon ``H`` is trained ``length`` steps at a time (``length`` static, ``H`` and
the step counter dynamic, so sampling horizons never recompiles); a run reaching its horizon
within a call stops there (the remaining steps change nothing and count for nothing), so with
``length`` = the largest horizon every call is a whole run of a sampled horizon. Each call
continues a carried state, or starts a fresh run where ``reset`` is set, and returns the
member's meta-loss over that truncation:

- ``mean_loss``: the normalized training loss, averaged over the truncation's steps;
- ``final_loss``: the normalized loss of the parameters after the truncation on fresh batches;
- ``eval_loss``: the normalized loss on the task's held-out split (fresh batches where the task
  has none).

Losses are normalized like the lab's fitness, ``clip(log((loss - floor + eps) / (ref - floor +
eps)), -C, C)`` with ``ref`` tuned Adam's final loss, so tasks of different scales weigh alike; a
member whose losses or parameters stop being finite scores ``+C`` and is flagged diverged. The
reference is one number, or knots ``((steps, ref), ...)``: tuned Adam's final loss at several
budgets, and a loss after ``t`` updates is measured against their log-log interpolation at ``t``
(clamped outside the knots), so a long run is not clipped against a short run's reference.

References:
  Metz et al. 2019, https://arxiv.org/abs/1810.10180 (truncated meta-training of optimizers);
  Vicol et al. 2021, https://arxiv.org/abs/2112.13835 (persistent ES over truncations).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lab.core.evaluate import AXIS, make_mesh, pad, padded_size, put
from lab.core.fitness import CLIP, EPS
from lab.core.rule import UpdateRule, make_ctx, population_size
from tasks.base import Task

META_LOSSES = ("mean_loss", "final_loss", "eval_loss")
META_REFERENCES = ("fixed", "horizon")  # search.meta_reference: Adam at 1x, or at the run's t
FRESH_BATCHES = 4  # batches the final loss is averaged over


class Inner(NamedTuple):
    """The carried state of one inner run (a population has a leading axis on every leaf)."""

    params: Any
    opt: Any
    t: jax.Array  # [] int32: updates done in this run


Knots = tuple[tuple[int, float], ...]


def normalized(loss: jax.Array, ref, floor: float = 0.0) -> jax.Array:
    """The fitness formula of ``lab.core.fitness.normalized_score`` in jnp, elementwise (``ref``
    a number or an array broadcast with ``loss``); non-finite losses score ``+CLIP``."""
    denom = max(ref - floor, 0.0) + EPS if isinstance(ref, float) else \
        jnp.maximum(ref - floor, 0.0) + EPS  # a number: one constant, as in the fitness
    f = jnp.log((jnp.maximum(loss - floor, 0.0) + EPS) / denom)
    return jnp.where(jnp.isfinite(loss), jnp.clip(jnp.nan_to_num(f, nan=CLIP), -CLIP, CLIP),
                     CLIP)


class Unroll(NamedTuple):
    """The pure functions of one task's truncated runs.

    Attributes:
      start: ``start(genome, key) -> Inner``, a fresh run.
      unroll: ``unroll(genome, inner, reset, horizon, t_start, key) -> (inner, metrics)``:
        ``length`` steps from ``inner`` (or from a fresh run at step ``t_start`` where
        ``reset``); metrics ``meta_loss``, ``loss`` (mean raw training loss), ``diverged``.
    """

    start: Callable
    unroll: Callable
    length: int


def reference_at(knots: Knots, t: jax.Array) -> jax.Array | float:
    """Tuned Adam's final loss after ``t`` updates: the log-log interpolation of ``knots``
    (``(steps, final loss)`` pairs, steps increasing), constant outside them. One knot is that
    number, whatever ``t`` (``search.meta_reference: fixed``: no array is built)."""
    if len(knots) == 1:
        return knots[0][1]
    steps = jnp.log(jnp.asarray([k for k, _ in knots], jnp.float32))
    refs = jnp.log(jnp.maximum(jnp.asarray([r for _, r in knots], jnp.float32), 1e-30))
    return jnp.exp(jnp.interp(jnp.log(jnp.maximum(t, 1).astype(jnp.float32)), steps, refs))


def make_unroll(task: Task, rule: UpdateRule, length: int, lr: float, meta_loss: str,
                ref: float | Knots) -> Unroll:
    """The truncated train function of ``task`` for the rule family ``rule``.

    Built once per (task, family, settings): the compiled calls are keyed by these functions,
    so every search over the same family and tasks in a process shares its compilations.
    """
    if meta_loss not in META_LOSSES:
        raise ValueError(f"unknown meta_loss {meta_loss!r} (known: {', '.join(META_LOSSES)})")
    knots = ((1, float(ref)),) if isinstance(ref, int | float) else \
        tuple(sorted((int(k), float(r)) for k, r in ref))
    if not knots or len({k for k, _ in knots}) != len(knots):
        raise ValueError(f"reference knots need distinct step counts, got {ref!r}")
    return _make_unroll(task, rule.init, rule.update, int(length), float(lr), meta_loss, knots)


@functools.lru_cache(maxsize=256)
def _make_unroll(task: Task, rule_init: Callable, rule_update: Callable, length: int,
                 lr: float, meta_loss: str, knots: Knots) -> Unroll:
    rule = UpdateRule("", "", rule_init, rule_update, None, str)

    def start(genome, key: jax.Array) -> Inner:
        params = task.init(key)
        return Inner(params, rule.init(genome, params), jnp.zeros([], jnp.int32))

    def fresh_loss(params, key, t):
        keys = jax.random.split(key, FRESH_BATCHES)
        return jnp.mean(jax.vmap(lambda k: task.loss(params, task.batch(k, t)))(keys))

    def unroll(genome, inner: Inner, reset, horizon, t_start, key):
        k_init, k_data, k_fresh = jax.random.split(key, 3)
        new = start(genome, k_init)
        new = new._replace(t=jnp.asarray(t_start, jnp.int32))
        inner = jax.tree.map(lambda a, b: jnp.where(reset, a, b), new, inner)

        def step(carry, i):
            params, opt = carry
            t = inner.t + i
            loss, grads = jax.value_and_grad(task.loss)(params, task.batch(
                jax.random.fold_in(k_data, i), t))
            ctx = make_ctx(t, horizon, lr, loss.dtype)
            delta, new_opt = rule.update(genome, grads, opt, params, ctx)
            active = t < horizon  # a run shorter than the unroll stops at its horizon
            params, opt = jax.tree.map(lambda a, b: jnp.where(active, a, b),
                                       (optax.apply_updates(params, delta), new_opt),
                                       (params, opt))
            return (params, opt), (loss, active)

        (params, opt), (losses, active) = jax.lax.scan(
            step, (inner.params, inner.opt), jnp.arange(length, dtype=jnp.int32))
        steps = jnp.sum(active)
        t_end = inner.t + steps.astype(jnp.int32)
        losses = jnp.where(active, losses, 0.0)  # steps past the horizon count for nothing
        if meta_loss == "mean_loss":
            raw = jnp.sum(losses) / jnp.maximum(steps, 1)
            at = reference_at(knots, inner.t + jnp.arange(length, dtype=jnp.int32))
            value = jnp.sum(jnp.where(active, normalized(losses, at, task.floor), 0.0)) \
                / jnp.maximum(steps, 1)
        elif meta_loss == "eval_loss" and task.eval_loss is not None:
            raw = task.eval_loss(params)
            value = normalized(raw, reference_at(knots, t_end), task.floor)
        else:
            raw = fresh_loss(params, k_fresh, t_end)
            value = normalized(raw, reference_at(knots, t_end), task.floor)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        diverged = ~(jnp.all(jnp.isfinite(losses)) & jnp.isfinite(raw) & finite)
        metrics = {"meta_loss": jnp.where(diverged, CLIP, value),
                   "loss": jnp.sum(losses) / jnp.maximum(steps, 1), "diverged": diverged}
        return Inner(params, opt, t_end), metrics

    return Unroll(start, unroll, int(length))


@functools.lru_cache(maxsize=64)
def compiled(fn: Callable, mesh: Mesh, donate: bool) -> Callable:
    """The jitted ``vmap(fn)`` over the population, sharded over ``mesh`` (one per function,
    mesh and donation; ``._cache_size()`` counts its compilations)."""
    shard = NamedSharding(mesh, P(AXIS))
    return jax.jit(jax.vmap(fn), in_shardings=shard, out_shardings=shard,
                   donate_argnums=(1,) if donate else ())


def _run(fn: Callable, args: tuple, mesh: Mesh | None, donate: bool = False):
    """``vmap(fn)`` over the leading (population) axis of every argument, sharded over ``mesh``;
    the population padded to a multiple of the devices."""
    mesh = mesh if mesh is not None else make_mesh(1)
    pop = population_size(args[0])
    _, padded = padded_size(pop, mesh)
    shard = NamedSharding(mesh, P(AXIS))
    args = put(pad(args, padded), shard)
    out = compiled(fn, mesh, donate and padded == pop)(*args)
    return out if padded == pop else jax.tree.map(lambda x: x[:pop], out)


def start_population(u: Unroll, genomes, keys: jax.Array, mesh: Mesh | None = None) -> Inner:
    """Fresh inner runs, one per member: ``keys`` [pop]."""
    return _run(u.start, (genomes, keys), mesh)


def unroll_population(u: Unroll, genomes, inner: Inner, reset, horizon, t_start,
                      keys: jax.Array, mesh: Mesh | None = None) -> tuple[Inner, dict]:
    """One truncation of every member's inner run in one compiled call.

    Args:
      genomes: the population, leaves ``[pop, ...]``.
      inner: the carried states, leaves ``[pop, ...]`` (donated: do not reuse).
      reset: [pop] bool, start a fresh run; horizon: [pop] int32; t_start: [pop] int32, the step
        a fresh run starts at; keys: [pop] PRNG keys (members that share one share the task's
        init and data: common random numbers).

    Returns:
      (the new states, metrics as arrays ``[pop]``).
    """
    args = (genomes, inner, jnp.asarray(reset, bool), jnp.asarray(horizon, jnp.int32),
            jnp.asarray(t_start, jnp.int32), keys)
    return _run(u.unroll, args, mesh, donate=True)
