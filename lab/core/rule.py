"""The UpdateRule interface: what every kind of discovered update rule is.

A rule is a pair of pure functions over a *genome* (the thing being searched), in the style of
``optax.GradientTransformation``, but genome-first so that a population of rules is one vmap:

    state = rule.init(genome, params)
    delta, state = rule.update(genome, grads, state, params, ctx)
    params = optax.apply_updates(params, delta)

``delta`` is added to the parameters (optax's sign convention). ``ctx`` carries the step, the
horizon and the outer learning rate; the effective step is ``ctx.lr`` times whatever scale the rule
has inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Genome = Any
Params = Any
State = Any


class Ctx(NamedTuple):
    """What an update may know about the training run it is in.

    Attributes:
      step: [] int32, the index of this update (0 for the first).
      horizon: [] int32, the number of updates in the run.
      lr: [] float, the outer learning rate.
    """

    step: jax.Array
    horizon: jax.Array
    lr: jax.Array


def make_ctx(step, horizon, lr, dtype=jnp.float32) -> Ctx:
    """Builds a Ctx from Python or array scalars."""
    return Ctx(jnp.asarray(step, jnp.int32), jnp.asarray(horizon, jnp.int32),
               jnp.asarray(lr, dtype))


class UpdateRule(NamedTuple):
    """A family of update rules indexed by a genome.

    Attributes:
      kind: the name of the kind the rule belongs to (``lab.core.kind``): the registry entry
        that rebuilds the family from ``name``.
      name: a short name for the family (e.g. "adam").
      init: ``init(genome, params) -> state``.
      update: ``update(genome, grads, state, params, ctx) -> (delta, state)``.
      genome: the default genome (a pytree of arrays); a population has a leading axis.
      describe: ``describe(genome) -> str``, the readable form of one genome.
      scored_at: ``scored_at(genome, state, params) -> params``, the parameters a run is scored
        at where they are not the iterate the gradients are taken at (schedule-free's averaged
        iterate), or None: the iterate itself.
    """

    kind: str
    name: str
    init: Callable[[Genome, Params], State]
    update: Callable[[Genome, Params, State, Params, Ctx], tuple[Params, State]]
    genome: Genome
    describe: Callable[[Genome], str]
    scored_at: Callable[[Genome, State, Params], Params] | None = None


class ExportState(NamedTuple):
    count: jax.Array
    inner: Any


def to_optax(rule: UpdateRule, genome: Genome, learning_rate: float = 1.0,
             horizon: int = 1000) -> optax.GradientTransformation:
    """Exports one genome of ``rule`` as an ``optax.GradientTransformation``.

    The returned transformation counts steps itself and passes ``Ctx(step, horizon,
    learning_rate)`` to the rule, so ``optax.apply_updates(params, updates)`` trains exactly as
    the lab's inner loop does.
    """

    def init_fn(params):
        return ExportState(jnp.zeros([], jnp.int32), rule.init(genome, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"rule {rule.name!r} needs params: call update(grads, state, params)")
        ctx = make_ctx(state.count, horizon, learning_rate)
        delta, inner = rule.update(genome, updates, state.inner, params, ctx)
        return delta, ExportState(state.count + 1, inner)

    return optax.GradientTransformation(init_fn, update_fn)


def stack_genomes(genomes: list[Genome]) -> Genome:
    """Stacks genomes into a population (a leading axis on every leaf)."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *genomes)


def genome_at(population: Genome, i: int) -> Genome:
    """The i-th genome of a population."""
    return jax.tree.map(lambda x: x[i], population)


def population_size(population: Genome) -> int:
    return int(jax.tree.leaves(population)[0].shape[0])
