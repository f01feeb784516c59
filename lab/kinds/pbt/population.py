"""The population's device side: members' training states advanced an interval at a time in one
compiled call per task, exploit by gathering rows, and the host-side choice of who copies whom.

A task's state is ``Members(params, opt, key)``, every leaf ``[P, S, ...]`` (members x seeds): the
parameters, the optimizer state and the data key of each run. ``advance(task, ...)`` runs the
steps of interval ``i`` (``trajectory.bounds``: ``ceil(i T / G)`` to ``ceil((i + 1) T / G)``) for
every member at its current hyperparameters, as ``lab.core.evaluate.make_train`` runs a whole run
(the same batches, contexts and updates; a scan of ``ceil(T / G)`` steps whose steps past the
interval's end change nothing, so every interval is the same compiled call). ``gather(state,
src)`` is the exploit: row ``j`` becomes row ``src[j]``, on device. With a mesh of several
devices the members are sharded over it (``members_sharding``: the member axis on the mesh's
``pop`` axis, as the evaluator shards candidates, over several processes too), and every call
keeps that layout, so no interval recompiles; the interval's losses come back replicated, read
by every process.

``choose`` is the exploit and explore decision (host side, on ``[P]`` scores and hyperparameters):
members ranked by score (ties by their id), each of the bottom ``truncation`` copies a member of
the top ``truncation`` drawn uniformly, then multiplies each tuned hyperparameter by a factor of
``perturb`` (in its encoding: ``log x`` or ``log(1 - x)`` moves by ``log factor``) or, with chance
``resample``, draws it afresh, clipped to the bounds. Every draw is keyed by (seed, interval,
member id), so the population's order is irrelevant: permuting the members permutes the result.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lab.core.evaluate import AXIS
from lab.core.rule import UpdateRule, make_ctx
from tasks.base import Task


class Members(NamedTuple):
    """One task's runs: ``params``, ``opt`` (the optimizer state) and ``key`` (the data key),
    every leaf ``[P, S, ...]``."""

    params: object
    opt: object
    key: jax.Array


def members_sharding(mesh: Mesh | None, population: int) -> NamedSharding | None:
    """The layout of members' leaves: their first axis over the mesh's devices (None: one
    device, or a population the devices do not divide)."""
    if mesh is None or mesh.devices.size == 1 or population % mesh.devices.size:
        return None
    return NamedSharding(mesh, P(AXIS))


def _jit(fn, shard: NamedSharding | None, n_in: int, replicated_last: bool = True,
         outs: tuple | None = None):
    """``jax.jit(fn)``, with every input but a replicated last one on ``shard`` when there is
    one; outputs on ``shard``, or per output ``outs`` (``"shard"`` or ``"replicated"``: what
    every process reads as numpy over several processes)."""
    if shard is None:
        return jax.jit(fn)
    rep = NamedSharding(shard.mesh, P())
    ins = (shard,) * (n_in - 1) + ((rep,) if replicated_last else (shard,))
    out = shard if outs is None else tuple(shard if o == "shard" else rep for o in outs)
    return jax.jit(fn, in_shardings=ins, out_shardings=out)


def init_members(task: Task, rule: UpdateRule, genomes, keys: jax.Array,
                 shard: NamedSharding | None = None) -> Members:
    """Fresh runs: ``keys`` ``[P, S]`` split into init and data keys as ``make_train`` does;
    ``genomes`` ``{keyword: [P]}`` (the optimizer state's shapes do not depend on them)."""
    def one(genome, key):
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)
        return Members(params, rule.init(genome, params), jax.random.key_data(k_data))
    fn = jax.vmap(jax.vmap(one, (None, 0)), (0, 0))
    return _jit(fn, shard, 2, replicated_last=False)(genomes, keys)


@functools.lru_cache(maxsize=128)
def advance_fn(task: Task, rule_init, rule_update, scored_at, steps: int, intervals: int,
               lr: float, shard: NamedSharding | None = None):
    """The jitted ``advance(genomes {k: [P]}, members, interval) -> (members, loss [P, S],
    diverged [P, S])``: the interval's mean training loss per run, at the parameters the rule
    is scored at (``UpdateRule.scored_at``; ``lab.core.evaluate.make_train`` does the same)."""
    rule = UpdateRule("", "", rule_init, rule_update, None, str)
    length = -(-steps // intervals)  # ceil(T / G): the longest interval

    def run(genome, m: Members, interval):
        start = -(-interval * steps // intervals)
        end = -(-(interval + 1) * steps // intervals)
        k_data = jax.random.wrap_key_data(m.key)

        def step(carry, j):
            params, opt, total = carry
            t = start + j
            batch = task.batch(jax.random.fold_in(k_data, t), t)
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            if scored_at is not None:  # the run's loss is the scored parameters' (one more pass)
                loss = task.loss(scored_at(genome, opt, params), batch)
            delta, new_opt = rule.update(genome, grads, opt, params, make_ctx(t, steps, lr,
                                                                                loss.dtype))
            new_params = optax.apply_updates(params, delta)
            on = t < end
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(on, a, b), new, old)
            return (keep(new_params, params), keep(new_opt, opt),
                    total + jnp.where(on, loss, 0.0)), jnp.where(on, jnp.isfinite(loss), True)

        (params, opt, total), finite = jax.lax.scan(
            step, (m.params, m.opt, jnp.zeros((), jnp.float32)),
            jnp.arange(length, dtype=jnp.int32))
        loss = total / jnp.maximum(end - start, 1)
        ok = jnp.all(finite) & jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                                                  for x in jax.tree.leaves(params)]))
        return Members(params, opt, m.key), loss, ~ok

    per_seed = jax.vmap(run, (None, 0, None))
    return _jit(jax.vmap(per_seed, (0, 0, None)), shard, 3,
                outs=("shard", "replicated", "replicated"))


def advance(task: Task, rule: UpdateRule, steps: int, intervals: int, lr: float, genomes,
            members: Members, interval: int, shard: NamedSharding | None = None
            ) -> tuple[Members, np.ndarray, np.ndarray]:
    fn = advance_fn(task, rule.init, rule.update, rule.scored_at, int(steps), int(intervals),
                    float(lr), shard)
    members, loss, diverged = fn(genomes, members, jnp.asarray(interval, jnp.int32))
    return members, np.asarray(loss, np.float64), np.asarray(diverged)


@functools.lru_cache(maxsize=16)
def _gather_fn(shard: NamedSharding | None):
    return _jit(lambda members, src: jax.tree.map(lambda x: x[src], members), shard, 2)


def gather(members: Members, src, shard: NamedSharding | None = None) -> Members:
    """The exploit: member ``j`` becomes a copy of member ``src[j]`` (every leaf, on device;
    ``src`` ``[P]`` int32)."""
    return _gather_fn(shard)(members, jnp.asarray(src, jnp.int32))


class Choice(NamedTuple):
    """One exploit and explore: ``src`` ``[P]`` (the member each copies; itself if none),
    the new hyperparameters ``{keyword: [P]}`` (encoded) and which members copied."""

    src: np.ndarray
    hparams: dict
    copied: np.ndarray


def choose(scores: np.ndarray, ids: np.ndarray, hparams: dict, tuned: tuple[str, ...],
           lo: dict, hi: dict, truncation: float, perturb: tuple[float, ...], resample: float,
           seed: int, interval: int) -> Choice:
    """Truncation selection and explore (module docstring); ``lo``/``hi``: the bounds of each
    tuned keyword (encoded)."""
    pop = len(scores)
    order = np.lexsort((ids, np.nan_to_num(scores, nan=np.inf)))  # best first, ties by id
    n = max(1, int(truncation * pop))
    top, bottom = order[:n], order[pop - n:]
    src = np.arange(pop)
    new = {k: np.asarray(v, np.float32).copy() for k, v in hparams.items()}
    copied = np.zeros(pop, bool)
    for j in bottom:
        rng = np.random.default_rng([seed, interval, int(ids[j])])
        s = int(top[rng.integers(n)])
        src[j], copied[j] = s, True
        for k in tuned:
            if rng.random() < resample:
                x = rng.uniform(lo[k], hi[k])
            else:
                x = float(hparams[k][s]) + np.log(perturb[rng.integers(len(perturb))])
            new[k][j] = np.float32(np.clip(x, lo[k], hi[k]))
        for k in new:
            if k not in tuned:
                new[k][j] = hparams[k][s]
    return Choice(src, new, copied)
