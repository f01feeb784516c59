"""An evosax 0.3 driver for continuous genomes (log-hyperparameters, network weights).

evosax minimizes, like the lab, so fitness goes in unchanged. Strategies are chosen by name, with
the initial scale ``sigma`` and the mean optimizer explicit. The jitted ``ask``/``tell`` live at
module level with a frozen, hashable ``ESSpec`` as their static argument, and strategy instances are
cached per spec, so a second run with the same settings reuses the compiled functions instead of
retracing per instance (evosax jits bound methods with ``static self``).

References:
  Salimans et al. 2017, https://arxiv.org/abs/1703.03864 (OpenAI-ES);
  Sehnke et al. 2010 (PGPE); Schaul et al. 2011, https://arxiv.org/abs/1106.4487 (SNES);
  Hansen 2016, https://arxiv.org/abs/1604.00772 (CMA-ES).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class StrategyInfo(NamedTuple):
    """How a strategy name maps onto evosax.

    Attributes:
      cls: the class name in ``evosax.algorithms``.
      sigma: how the initial scale is set: "schedule" (std_schedule), "params" (std_init).
      optimizer: whether the strategy takes an optax optimizer for its mean.
      antithetic: whether members (i, i + N/2) are mirrored samples (they share task keys).
      population_based: evosax's population-based family (init takes an evaluated population).
    """

    cls: str
    sigma: str
    optimizer: bool
    antithetic: bool = False
    population_based: bool = False


# Names only: importing this module does not import evosax.
STRATEGIES: dict[str, StrategyInfo] = {
    "Open_ES": StrategyInfo("Open_ES", "schedule", True, antithetic=True),
    "PGPE": StrategyInfo("PGPE", "params", True, antithetic=True),
    "SNES": StrategyInfo("SNES", "params", True),
    "xNES": StrategyInfo("xNES", "params", True),
    "CMA_ES": StrategyInfo("CMA_ES", "params", False),
    "Sep_CMA_ES": StrategyInfo("Sep_CMA_ES", "params", False),
    "SimpleGA": StrategyInfo("SimpleGA", "schedule", False, population_based=True),
}


@dataclasses.dataclass(frozen=True)
class ESSpec:
    """The static structure of one ES: everything a compiled ask/tell depends on."""

    strategy: str
    population: int
    num_dims: int
    sigma: float
    lr: float
    optimizer: str = "adam"
    elite_ratio: float = 0.5

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            from lab.names import hint
            raise ValueError(f"unknown strategy {self.strategy!r}{hint(self.strategy, STRATEGIES)}")
        if STRATEGIES[self.strategy].antithetic and self.population % 2:
            raise ValueError(f"{self.strategy} needs an even population, got {self.population}")


@functools.lru_cache(maxsize=64)
def strategy_for(spec: ESSpec):
    """The (cached) evosax strategy instance and its params for ``spec``."""
    import optax
    from evosax import algorithms

    info = STRATEGIES[spec.strategy]
    cls = getattr(algorithms, info.cls)
    with jax.ensure_compile_time_eval():
        return _build(spec, info, cls, optax)


def _build(spec: ESSpec, info: StrategyInfo, cls, optax):
    kwargs: dict[str, Any] = {}
    if info.optimizer:
        kwargs["optimizer"] = getattr(optax, spec.optimizer)(spec.lr)
    if info.sigma == "schedule":
        kwargs["std_schedule"] = optax.constant_schedule(spec.sigma)
    es = cls(spec.population, jnp.zeros(spec.num_dims), **kwargs)
    if hasattr(es, "elite_ratio") and not info.antithetic:
        es.elite_ratio = spec.elite_ratio
    params = es.default_params
    if info.sigma == "params":
        params = params.replace(std_init=jnp.asarray(spec.sigma, jnp.float32))
    return es, params


def init(spec: ESSpec, key: jax.Array, mean: jax.Array):
    """Initial strategy state around the flat vector ``mean`` [num_dims]."""
    return _init(spec, key, jnp.asarray(mean, jnp.float32), strategy_for(spec)[1])


def ask(spec: ESSpec, key: jax.Array, state):
    """``[population, num_dims]`` candidates and the new state."""
    return _ask(spec, key, state, strategy_for(spec)[1])


def tell(spec: ESSpec, key: jax.Array, population: jax.Array, fitness: jax.Array, state):
    """Updates the state with fitness [population] (lower is better); returns (state, metrics)."""
    return _tell(spec, key, population, fitness, state, strategy_for(spec)[1])


# The jitted bodies take the strategy's params as arguments (never closed over), so nothing
# created while tracing leaks into the cached strategy.
@functools.partial(jax.jit, static_argnums=0)
def _init(spec: ESSpec, key, mean, params):
    es = strategy_for(spec)[0]
    if STRATEGIES[spec.strategy].population_based:
        k_pop, k_init = jax.random.split(key)
        pop = mean + spec.sigma * jax.random.normal(k_pop, (spec.population, spec.num_dims))
        pop = pop.at[0].set(mean)
        return _strong(es.init(k_init, pop, jnp.full((spec.population,), jnp.inf), params))
    return _strong(es.init(key, mean, params))


@functools.partial(jax.jit, static_argnums=0)
def _ask(spec: ESSpec, key, state, params):
    return strategy_for(spec)[0].ask(key, state, params)


@functools.partial(jax.jit, static_argnums=0)
def _tell(spec: ESSpec, key, population, fitness, state, params):
    fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.finfo(fitness.dtype).max)
    state, metrics = strategy_for(spec)[0].tell(key, population, fitness, state, params)
    return _strong(state), metrics


def _strong(tree):
    # evosax states mix weak and strong types across init/ask/tell; fixing them keeps one trace.
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def mean_of(spec: ESSpec, state) -> jax.Array:
    """The distribution mean (or the best member for population-based strategies)."""
    if STRATEGIES[spec.strategy].population_based:
        return state.best_solution
    return state.mean


def task_key_index(spec: ESSpec) -> jax.Array:
    """[population] int32: which shared task-key slot each member uses (common random numbers).

    Antithetic strategies (Open_ES, PGPE): members i and i + N/2 share a slot, distinct pairs get
    distinct slots. Others: every member of a generation shares slot 0.
    """
    if STRATEGIES[spec.strategy].antithetic:
        half = spec.population // 2
        return jnp.arange(spec.population, dtype=jnp.int32) % half
    return jnp.zeros(spec.population, jnp.int32)


class Flattener(NamedTuple):
    """Maps a genome pytree to the flat float32 vector ES works on, and back."""

    flat: jax.Array
    unravel: Any

    @classmethod
    def of(cls, genome) -> Flattener:
        flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), genome))
        return cls(flat, unravel)

    def population(self, flat_pop: jax.Array):
        return jax.vmap(self.unravel)(flat_pop)
