"""evosax 0.3 for continuous genomes (log-hyperparameters, network weights): the strategy wrapper,
the ``search`` section of ES kinds and their driver in the generation loop (``ESDriver``).

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
import time
from collections.abc import Collection
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lab.console import log
from lab.core.evaluate import chunk_for_memory, task_keys
from lab.core.fitness import EvalContext
from lab.core.hashing import genome_digest
from lab.core.loop import AfterSearch, Finalist, Step, candidate_row, evaluation_row
from lab.core.schema import field
from lab.treeio import tree_from_npz


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
    shaping: str = "default"  # "pairwise": GROOVE's pairwise ranks replace evosax's shaping

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            from lab.names import hint
            raise ValueError(f"unknown strategy {self.strategy!r}{hint(self.strategy, STRATEGIES)}")
        info = STRATEGIES.get(self.strategy)  # an unknown name is reported by its field
        if info is not None and info.antithetic and self.population % 2 and self.population > 1:
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
    if spec.shaping == "pairwise":  # the ranks are the fitness: no second shaping on top
        from evosax.core.fitness_shaping import identity_fitness_shaping_fn
        kwargs["fitness_shaping_fn"] = identity_fitness_shaping_fn
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
    """Updates the state with fitness [population] (lower is better; with ``shaping:
    pairwise``, its ``pairwise_ranks``); returns (state, metrics)."""
    if spec.shaping == "pairwise":
        fitness = jnp.asarray(pairwise_ranks(np.asarray(fitness)), jnp.float32)
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


def pairwise_ranks(fitness: np.ndarray) -> np.ndarray:
    """GROOVE's antithetic pairwise ranks (Jackson et al. 2024), in the lab's minimizing
    convention: of each mirrored pair (i, i + N/2), the member with the lower fitness gets 0 and
    the other 1 (0.5 each on a tie). Shared task keys make each pair a like-for-like contest, so
    only who won reaches the ES, not by how much (a lucky level or seed cannot dominate the
    step)."""
    f = np.asarray(fitness, np.float64)
    f = np.where(np.isfinite(f), f, np.inf)  # a diverged member loses (two: a tie)
    half = f.shape[0] // 2
    a, b = f[:half], f[half:]
    first = np.where(a < b, 0.0, np.where(a > b, 1.0, 0.5))
    return np.concatenate([first, 1.0 - first])


def centered_ranks(fitness: np.ndarray, axis: int = -1) -> np.ndarray:
    """The ranks of ``fitness`` along ``axis`` scaled to [-0.5, 0.5]: the lowest -0.5, the
    highest +0.5, tied values their mean rank; non-finite values rank last (a tie among them)."""
    f = np.asarray(fitness, np.float64)
    f = np.where(np.isfinite(f), f, np.inf)

    def ranks(row):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        first = np.cumsum(counts) - counts
        return (first + (counts - 1) / 2.0)[inverse.reshape(-1)]

    n = f.shape[axis]
    return np.apply_along_axis(ranks, axis, f) / max(n - 1, 1) - 0.5


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


# ---- the ``search`` section of ES kinds, and their driver --------------------------------------

def _optimizers() -> Collection[str]:
    """optax optimizer aliases (``lab.core.optimizers.optax_optimizer_names``, not contrib)."""
    from lab.core.optimizers import optax_optimizer_names
    return optax_optimizer_names(contrib=False)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The ``search`` section of kinds searched by ES: the evosax strategy and the optimizer of
    its mean."""

    strategy: str = field("Open_ES", choices=lambda: STRATEGIES, what="strategy")
    population: int = field(16, ge=2)  # candidates per generation
    generations: int = field(10, ge=1)
    sigma: float = field(0.1, gt=0)  # initial perturbation scale
    # learning rate of the optimizer that moves the ES mean; 0 with Open_ES: the mean stays at
    # the start and every generation samples around it at sigma, a random search (the control
    # at equal compute: its answer is the best member, re-scored on the fixed evaluation seeds)
    lr: float = field(0.05, ge=0)
    optimizer: str = field("adam", choices=_optimizers, what="optax optimizer")
    elite_ratio: float = field(0.5, gt=0, le=1)
    seed: int = 0  # the search's own randomness (ES samples and per-generation task keys)
    # default: the strategy's own fitness shaping (centered ranks for Open_ES and PGPE);
    # pairwise: GROOVE's pairwise ranks within antithetic pairs (pairwise_ranks)
    shaping: str = field("default", choices=lambda: ("default", "pairwise"),
                         what="fitness shaping")

    def problems(self) -> list[tuple[str, str]]:
        info = STRATEGIES.get(self.strategy)  # an unknown name is reported by its field
        if self.lr == 0 and self.strategy != "Open_ES":
            return [("lr", f"lr 0 is a random search around the start: it needs Open_ES, whose "
                           f"samples keep their scale ({self.strategy} adapts it)")]
        if info is not None and info.antithetic and self.population % 2 and self.population > 1:
            return [("population", f"{self.strategy} samples mirrored pairs: the population "
                                   f"must be even, got {self.population}")]
        if info is not None and self.shaping == "pairwise" and not info.antithetic:
            antithetic = ", ".join(n for n, i in STRATEGIES.items() if i.antithetic)
            return [("shaping", f"pairwise ranks compare mirrored pairs: {self.strategy} does "
                                f"not sample them (use {antithetic})")]
        return []


def spec_of(search: SearchConfig, genome) -> tuple[ESSpec, Flattener]:
    """The ``ESSpec`` of a search section over ``genome``'s flat vector, and its flattener."""
    flat = Flattener.of(genome)
    return ESSpec(search.strategy, search.population, int(flat.flat.size), search.sigma,
                  search.lr, search.optimizer, search.elite_ratio,
                  getattr(search, "shaping", "default")), flat


class ESDriver:
    """The search step of a continuous genome (``lab.core.loop.Driver``): evosax asks for a
    population, members already in the cache are not scored again, the rest are scored in one
    compiled call per task (the population is a fixed shape), and evosax is told the fitness.

    The answer is the ES mean; the finalists are the mean and the run's ``output.top_k`` best
    members (scored on the fixed evaluation seeds by the loop).
    """

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        self.rule, self.scorer, self.store = setup.rule, setup.scorer, setup.store
        self.spec, self.flat = spec_of(cfg.search, self.rule.genome)
        self.final_rows = self.spec.population
        self.key = jax.random.key(cfg.search.seed)
        self.es = init(self.spec, jax.random.fold_in(self.key, 0), self.flat.flat)
        self.slots = np.asarray(task_key_index(self.spec))
        if cfg.evaluator.memory_mb > 0:
            probe = self.flat.population(np.asarray(self.flat.flat)[None])
            self.scorer.chunk = min(
                chunk_for_memory(t, probe, task_keys(self.scorer.seeds_of(name), 1), setup.mesh,
                                 cfg.evaluator.memory_mb) for name, t in self.scorer.trains.items())

    def state(self, generation: int):
        return self.es

    def template(self):
        return self.es

    def restore(self, tree, first: int) -> None:
        self.es = tree

    # ---- what a generation is scored on: subclasses (curricula) change these three ----------

    def context(self, g: int) -> EvalContext:
        """The evaluation context of generation ``g``'s scores (its key keys the cache)."""
        return self.scorer.context.for_generation(g, self.slots, self.cfg.search.seed)

    def score(self, genomes, g: int) -> dict:
        """The scorer's result for generation ``g``'s population (every member)."""
        return self.scorer.score(genomes, generation=g, slots=self.slots,
                                 stream=self.cfg.search.seed)

    def observe(self, g: int, fitness: np.ndarray, metrics: list[dict]) -> dict:
        """Called with the generation's fitness and each member's metrics (the scorer's
        ``row_metrics``; cached or fresh) before evosax is told it; returns more numbers for
        ``metrics.jsonl``."""
        return {}

    def step(self, g: int):
        start = time.perf_counter()
        k_ask, k_tell = jax.random.split(jax.random.fold_in(self.key, g + 1))
        flat_pop, self.es = ask(self.spec, k_ask, self.es)
        genomes = self.flat.population(flat_pop)
        on_host = jax.tree.map(np.asarray, genomes)
        host = [jax.tree.map(lambda x, i=i: x[i], on_host) for i in range(self.spec.population)]
        hashes = [genome_digest(self.rule, x) for x in host]
        ctx = self.context(g).key()
        cached = self.store.lookup(sorted(set(hashes)), ctx)
        misses = [h for h in dict.fromkeys(hashes) if h not in cached]
        evaluations, extra = [], {}
        if misses:
            result = self.score(genomes, g)
            if "rejected" in result:  # members refused before they were trained
                extra["rejected"] = int(np.sum(result["rejected"]))
            first = {h: i for i, h in reversed(list(enumerate(hashes)))}
            evaluations = [evaluation_row(h, ctx, self.scorer, result, first[h]) for h in misses]
        fresh = {e["hash"]: e["fitness"] for e in evaluations}
        fitness = np.array([fresh[h] if h in fresh else cached[h]["fitness"] for h in hashes])
        known = {**{h: c["metrics"] for h, c in cached.items()},
                 **{e["hash"]: e["metrics"] for e in evaluations}}
        extra.update(self.observe(g, fitness, [known[h] for h in hashes]))
        self.es, _ = tell(self.spec, k_tell, flat_pop, np.asarray(fitness, np.float32), self.es)
        hits = [h for h in hashes if h in cached]
        unique = {h: i for i, h in enumerate(hashes)}
        seconds = time.perf_counter() - start
        stats = {"best": float(np.min(fitness)), "mean": float(np.mean(fitness)),
                 "hits": len(hits), "misses": len(misses), "hit_rate": len(hits) / len(hashes),
                 "evaluated": len(misses), "seconds": seconds,
                 "candidates_per_s": len(hashes) / max(seconds, 1e-9)}
        return Step(stats, [candidate_row(self.rule, h, host[i]) for h, i in unique.items()],
                    evaluations, [{"hash": h, "fitness": float(fitness[i]), "generation": g}
                                  for i, h in enumerate(hashes)], hits, extra, ctx)

    def mean_genome(self):
        return jax.tree.map(np.asarray, self.flat.unravel(mean_of(self.spec, self.es)))

    def finalists(self) -> dict:
        mean = self.mean_genome()
        out = {genome_digest(self.rule, mean): mean}
        for row in self.store.best_members(self.setup.run_id, k=self.cfg.output.top_k):
            out.setdefault(row["hash"], tree_from_npz(row["genome"]))
        return {h: Finalist(g, candidate_row(self.rule, h, g)) for h, g in out.items()}

    def after_search(self, finals, scores):
        mean = next(iter(finals))
        log(f"the ES mean scores {scores[mean]:.4f} on the fixed evaluation seeds")
        return AfterSearch()
