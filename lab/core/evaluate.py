"""Train functions x genomes x seeds -> metrics, in one compiled, vmapped, sharded call.

The train function is the one seam between what is searched and where it is scored:
``make_train(task, rule, steps) -> train(genome, key) -> metrics``. ``evaluate`` runs
``vmap(vmap(train))`` over candidates x seeds with the candidate axis sharded over a 1-D device mesh
(the modern, jax.sharding form of what pmap used to do), padding the population to a multiple of
the device count and splitting it into chunks of a fixed size so that every generation reuses one
compiled function per task shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lab.core.hosts import count, gather
from lab.core.rule import UpdateRule, make_ctx, population_size
from tasks.base import Task

# Bump when the inner loop or the metrics change: it is part of every cache key.
EVALUATOR_VERSION = "1"
SEED_BASE = 0  # the root of every evaluation key (the fixed seeds and each generation's)
CURVE_POINTS = 8
AXIS = "pop"

Metrics = dict[str, jax.Array]
TrainFn = Callable[[Any, jax.Array], Metrics]


_COMPILES = [0]
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _count(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def compile_count() -> int:
    """XLA compilations in this process so far (every backend compile JAX reports, the lab's
    and any other): the difference over a generation is what it compiled. Tests and
    benchmarks use it to check that a search compiles once."""
    return _COMPILES[0]


def make_train(task: Task, rule: UpdateRule, steps: int | None = None, lr: float = 1.0,
               unroll: int = 1, curve_points: int = CURVE_POINTS) -> TrainFn:
    """One inner training run of ``task`` with one genome of ``rule``, as a pure function.

    Args:
      task: the inner problem.
      rule: the update-rule family; its genome is the first argument of ``train``.
      steps: the horizon (inner steps); defaults to ``task.steps``.
      lr: the outer learning rate passed in ``Ctx.lr``.
      unroll: ``lax.scan`` unroll length (static).
      curve_points: segments of ``curve`` (static); ``curve_points=steps`` gives the loss of
        every step (replay's speedups). The default keys cached scores: leave it for searches.

    Returns:
      ``train(genome, key) -> metrics`` with scalar ``final_loss`` (mean training loss over the
      last tenth of the run, at the parameters the rule is scored at: ``UpdateRule.scored_at``,
      e.g. schedule-free's averaged iterate), ``mean_loss``, ``eval_loss`` (held-out split,
      else ``final_loss``), ``curve`` ([curve_points] mean loss per equal segment) and
      ``diverged`` (bool). The same object for the same (task, rule functions, settings), so
      every scorer and replay of a process shares its compilations.
    """
    if int(curve_points) < 1:
        raise ValueError(f"curve_points={curve_points}: must be at least 1")
    return _make_train(task, rule.init, rule.update, rule.scored_at, int(steps or task.steps),
                       float(lr), int(unroll), int(curve_points))


@functools.lru_cache(maxsize=512)
def _make_train(task: Task, rule_init: Callable, rule_update: Callable,
                scored_at: Callable | None, steps: int, lr: float, unroll: int,
                points: int) -> TrainFn:
    rule = UpdateRule("", "", rule_init, rule_update, None, str)
    tail = max(1, steps // 10)
    seg = max(1, steps // points)

    def train(genome, key: jax.Array) -> Metrics:
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)
        state = rule.init(genome, params)

        def step(carry, t):
            params, state = carry
            batch = task.batch(jax.random.fold_in(k_data, t), t)
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            if scored_at is not None:  # the run's loss is the scored parameters' (one more pass)
                loss = task.loss(scored_at(genome, state, params), batch)
            ctx = make_ctx(t, steps, lr, loss.dtype)
            delta, state = rule.update(genome, grads, state, params, ctx)
            return (optax.apply_updates(params, delta), state), loss

        (params, state), losses = jax.lax.scan(step, (params, state),
                                               jnp.arange(steps, dtype=jnp.int32), unroll=unroll)
        if scored_at is not None:
            params = scored_at(genome, state, params)
        final = jnp.mean(losses[-tail:])
        ev = task.eval_loss(params) if task.eval_loss is not None else final
        curve = jnp.mean(losses[: seg * points].reshape(points, seg), axis=1) \
            if steps >= points else jnp.resize(losses, (points,))
        finite_params = jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                                           for x in jax.tree.leaves(params)]))
        diverged = ~(jnp.all(jnp.isfinite(losses)) & jnp.isfinite(ev) & finite_params)
        return {"final_loss": final, "mean_loss": jnp.mean(losses), "eval_loss": ev,
                "curve": curve, "diverged": diverged}

    return train


def task_keys(seeds: int, population: int, generation: int | None = None,
              slots: np.ndarray | None = None, stream: int = 0) -> jax.Array:
    """[population, seeds] PRNG keys.

    ``generation=None`` with no ``slots`` gives the fixed evaluation seeds (shared by every
    candidate, references and replay). During a search, generation g's keys are fresh, and
    members with the same slot share them (common random numbers); ``stream`` (the search's
    seed) picks an independent sequence of generation keys.
    """
    slots = np.zeros(population, np.int32) if slots is None else np.asarray(slots, np.int32)
    gen = 0 if generation is None else generation + 1
    base = jax.random.key(SEED_BASE)
    if generation is not None:
        base = jax.random.fold_in(base, stream)
    per_seed = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(base, s), gen))(
        jnp.arange(seeds))
    return jax.vmap(lambda slot: jax.vmap(lambda k: jax.random.fold_in(k, slot))(per_seed))(
        jnp.asarray(slots))


def make_mesh(devices: int = 0) -> Mesh:
    """A 1-D mesh named ``pop`` with an Auto axis over the first ``devices`` devices (0 = all).

    Over several processes the mesh spans every device of every process (``jax.devices()`` is
    the global list), so ``devices`` must be 0 or all of them."""
    avail = jax.devices()
    n = len(avail) if devices <= 0 else devices
    if n > len(avail):
        raise ValueError(f"evaluator.devices={devices} but JAX sees {len(avail)} device(s)")
    if count() > 1 and n != len(avail):
        raise ValueError(f"evaluator.devices={devices}: a run over {count()} processes uses "
                         f"every device of every process (0 or {len(avail)})")
    return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=avail[:n])


@functools.lru_cache(maxsize=256)
def compiled(train: TrainFn, mesh: Mesh) -> Callable:
    """The jitted ``vmap(vmap(train))`` of ``evaluate`` (an axis of one is not vmapped:
    ``_mapped``): one per (train, mesh), and jax caches its executables per input shape, so
    every generation with the same padded population reuses the first compilation
    (``compiled(train, mesh)._cache_size()`` counts them)."""
    shard = NamedSharding(mesh, P(AXIS))

    def batched(genomes, keys):  # keys: [pop, seeds]; the sizes are static here
        per_seed = _mapped(train, keys.shape[1], (None, 0))
        return _mapped(per_seed, keys.shape[0], (0, 0))(genomes, keys)

    # over several processes the metrics come out replicated: one all-gather inside the call,
    # not one collective per metric afterwards
    out = shard if shard.is_fully_addressable else NamedSharding(mesh, P())
    return jax.jit(batched, in_shardings=(shard, shard), out_shardings=out)


def _mapped(fn: Callable, size: int, in_axes: tuple) -> Callable:
    """``jax.vmap(fn, in_axes)`` over an axis of ``size``; over an axis of one, ``fn`` of its
    one row with the axis put back on every output. The results are the same; the compiled
    program is the unbatched one (a vmap of one leaves batched dots and gathers that XLA's CPU
    backend runs about 10% slower in PPO's minibatch loop: ``lab bench rl``)."""
    if size != 1:
        return jax.vmap(fn, in_axes=in_axes)

    def one(*args):
        rows = [a if axis is None else jax.tree.map(lambda x: x[0], a)
                for a, axis in zip(args, in_axes, strict=True)]
        return jax.tree.map(lambda x: x[None], fn(*rows))
    return one


def put(tree, sharding: NamedSharding):
    """Commits every leaf to ``sharding``. Over several processes each process lays out its own
    devices' rows from its copy of a host value (every process holds the same one: shared
    randomness), so nothing crosses hosts (``jax.device_put`` would all-gather a host value to
    check that the processes agree); arrays that are already global are left to JAX."""
    def one(x):
        if sharding.is_fully_addressable or (isinstance(x, jax.Array)
                                             and not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree)


def pad(tree, n: int):
    """Pads the leading axis of every leaf to ``n`` by repeating the last row."""
    def one(x):
        extra = n - x.shape[0]
        return x if extra == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
    return jax.tree.map(one, tree)


def padded_size(population: int, mesh: Mesh, chunk: int = 0) -> tuple[int, int]:
    """(chunk size, padded population): chunks are multiples of the device count."""
    n_dev = mesh.devices.size
    chunk = population if chunk <= 0 else min(chunk, population)
    chunk = math.ceil(chunk / n_dev) * n_dev
    return chunk, math.ceil(population / chunk) * chunk


def evaluate(train: TrainFn, genomes, keys: jax.Array, mesh: Mesh | None = None,
             chunk: int = 0) -> dict[str, np.ndarray]:
    """Runs ``train`` for every candidate and seed.

    Args:
      train: from ``make_train`` (reuse the same object across generations: it keys the cache of
        compiled functions).
      genomes: a population, every leaf ``[pop, ...]``.
      keys: ``[pop, seeds]`` PRNG keys (candidates that should share data share keys).
      mesh: a 1-D mesh from ``make_mesh``; one device by default.
      chunk: candidates per compiled call (0 = all); rounded up to a multiple of the devices.

    Returns:
      metrics as numpy arrays ``[pop, seeds, ...]``.
    """
    mesh = mesh if mesh is not None else make_mesh(1)
    pop = population_size(genomes)
    if keys.shape[0] != pop:
        raise ValueError(f"keys has {keys.shape[0]} rows for a population of {pop}")
    size, padded = padded_size(pop, mesh, chunk)
    genomes, keys = pad(genomes, padded), pad(keys, padded)
    fn = compiled(train, mesh)
    shard = NamedSharding(mesh, P(AXIS))
    parts = []
    for start in range(0, padded, size):
        # committed to the population sharding whatever they came as (numpy, another jit's
        # output), so every call hits the same cache entry
        part = put(jax.tree.map(lambda x, s=start: x[s:s + size], genomes), shard)
        parts.append(fn(part, put(keys[start:start + size], shard)))
    # only the metrics cross hosts
    return jax.tree.map(lambda *xs: np.concatenate([gather(x) for x in xs])[:pop], *parts)


def memory_per_device(train: TrainFn, genomes, keys: jax.Array, mesh: Mesh) -> int | None:
    """XLA's memory analysis of ``evaluate``'s compiled call for this population (its size a
    multiple of the devices): bytes on one device, temporaries, arguments and outputs together;
    None where the backend gives no analysis."""
    try:
        stats = compiled(train, mesh).lower(genomes, keys).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - memory analysis is optional on some backends
        return None
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
               + stats.output_size_in_bytes) or None


def chunk_for_memory(train: TrainFn, genomes, keys: jax.Array, mesh: Mesh,
                     memory_mb: float) -> int:
    """The largest chunk (a multiple of the devices) whose compiled call fits ``memory_mb``.

    The per-candidate cost is read from XLA's memory analysis of a one-candidate-per-device
    compilation; where the backend gives none, from the sizes of the inputs and outputs.
    """
    if memory_mb <= 0:
        return 0
    n_dev = mesh.devices.size
    probe_g = jax.tree.map(lambda x: jnp.repeat(x[:1], n_dev, axis=0), genomes)
    probe_k = jnp.repeat(keys[:1], n_dev, axis=0)
    per_device = memory_per_device(train, probe_g, probe_k, mesh)
    if not per_device:
        out = jax.eval_shape(compiled(train, mesh), probe_g, probe_k)
        per_device = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(out)) * 64
    per_candidate = max(1, per_device)  # bytes for one candidate on one device
    fit = int(memory_mb * 2**20 // per_candidate) * n_dev
    return max(n_dev, fit)
