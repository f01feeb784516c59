"""Tests of lab/search/es.py, parametrized over the registry of strategies (evosax's style)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.core import es
from lab.core.es import STRATEGIES, ESSpec, Flattener, task_key_index

POP, DIMS, SIGMA, LR = 16, 5, 0.5, 0.1
GENERATIONS = 100
START = 2.0


def spec_for(name: str) -> ESSpec:
    return ESSpec(name, POP, DIMS, SIGMA, LR)


def sphere(x: jax.Array) -> jax.Array:
    return jnp.sum(x**2, axis=-1)


def cache_sizes() -> tuple[int, int, int]:
    return es._init._cache_size(), es._ask._cache_size(), es._tell._cache_size()


def run(spec: ESSpec, generations: int, seed: int = 0, after_first=None):
    """Minimizes the sphere from mean START; returns (final mean, best fitness seen)."""
    key = jax.random.key(seed)
    state = es.init(spec, jax.random.fold_in(key, 0), jnp.full(spec.num_dims, START))
    best = np.inf
    for g in range(generations):
        k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g + 1))
        x, state = es.ask(spec, k_ask, state)
        assert x.shape == (spec.population, spec.num_dims)
        fitness = sphere(x)
        best = min(best, float(fitness.min()))
        state, _ = es.tell(spec, k_tell, x, fitness, state)
        if g == 0 and after_first is not None:
            after_first()
    return np.asarray(es.mean_of(spec, state)), best


def test_registry_names_evosax_classes():
    from evosax import algorithms
    for name, info in STRATEGIES.items():
        assert hasattr(algorithms, info.cls), name


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_minimizes_a_quadratic_without_retracing(name):
    spec = spec_for(name)
    start_fitness = DIMS * START**2
    sizes = []
    mean, best = run(spec, GENERATIONS, after_first=lambda: sizes.append(cache_sizes()))
    assert np.all(np.isfinite(mean))
    assert np.linalg.norm(mean) < 0.5, f"{name}: |mean| {np.linalg.norm(mean):.3g} from 4.47"
    assert best < start_fitness / 100, f"{name}: best {best:.3g} from {start_fitness}"
    # later generations reuse the first generation's compilations...
    assert cache_sizes() == sizes[0], "retraced after the first generation"
    # ...and so does a second run with an equal (newly built) spec
    again = ESSpec(**dataclasses.asdict(spec))
    assert again == spec and again is not spec
    run(again, 3, seed=1)
    assert cache_sizes() == sizes[0], "an equal ESSpec retraced"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_task_key_slots_follow_antithetic_pairs(name):
    spec = spec_for(name)
    slots = np.asarray(task_key_index(spec))
    assert slots.shape == (POP,) and slots.dtype == np.int32
    if STRATEGIES[name].antithetic:
        half = POP // 2
        np.testing.assert_array_equal(slots[:half], slots[half:])
        assert len(set(slots[:half].tolist())) == half
        # the slots pair exactly the members evosax mirrors: x[i] - mean = -(x[i + N/2] - mean)
        mean = jnp.full(DIMS, START)
        state = es.init(spec, jax.random.key(0), mean)
        x, _ = es.ask(spec, jax.random.key(1), state)
        d = np.asarray(x - mean)
        np.testing.assert_allclose(d[:half], -d[half:], rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(slots, 0)


def test_tell_survives_non_finite_fitness():
    spec = spec_for("Open_ES")
    state = es.init(spec, jax.random.key(0), jnp.full(DIMS, START))
    x, state = es.ask(spec, jax.random.key(1), state)
    fitness = sphere(x).at[0].set(jnp.nan).at[1].set(jnp.inf)
    state, _ = es.tell(spec, jax.random.key(2), x, fitness, state)
    assert np.all(np.isfinite(np.asarray(es.mean_of(spec, state))))


@pytest.mark.parametrize("wrong, right", [("OpenES", "Open_ES"), ("CMA-ES", "CMA_ES"),
                                          ("simple_ga", "SimpleGA")])
def test_unknown_strategy_suggests_close_name(wrong, right):
    with pytest.raises(ValueError, match=wrong) as err:
        ESSpec(wrong, POP, DIMS, SIGMA, LR)
    assert right in str(err.value)


@pytest.mark.parametrize("name", [n for n, info in STRATEGIES.items() if info.antithetic])
def test_odd_population_refused_for_antithetic(name):
    with pytest.raises(ValueError, match="even"):
        ESSpec(name, 15, DIMS, SIGMA, LR)


def test_odd_population_allowed_otherwise():
    ESSpec("SNES", 15, DIMS, SIGMA, LR)


@pytest.mark.parametrize("name", ["CMA_ES", "SimpleGA"])
def test_elite_ratio_reaches_the_strategy(name):
    strategy, _ = es.strategy_for(ESSpec(name, POP, DIMS, SIGMA, LR, elite_ratio=0.25))
    assert strategy.num_elites == POP // 4


def test_flattener_round_trip():
    genome = {"a": np.float32(1.5), "b": np.arange(3, dtype=np.float32)}
    flat = Flattener.of(genome)
    assert flat.flat.shape == (4,) and flat.flat.dtype == jnp.float32
    pop = flat.population(jnp.stack([flat.flat, flat.flat + 1.0]))
    assert pop["a"].shape == (2,) and pop["b"].shape == (2, 3)
    np.testing.assert_array_equal(pop["b"][1], genome["b"] + 1.0)
    np.testing.assert_array_equal(pop["a"], [1.5, 2.5])


# ---- pairwise ranks (GROOVE's shaping of antithetic pairs) --------------------------------------

def test_pairwise_ranks_closed_form():
    f = np.array([1.0, 5.0, 3.0, np.nan, 2.0, 0.5, 3.0, 4.0])  # pairs (i, i + 4)
    np.testing.assert_array_equal(es.pairwise_ranks(f), [0, 1, 0.5, 1, 1, 0, 0.5, 0])


@pytest.mark.parametrize("name", [n for n, i in STRATEGIES.items() if i.antithetic])
def test_pairwise_shaping_minimizes_and_only_sees_who_won(name):
    spec = dataclasses.replace(spec_for(name), shaping="pairwise")
    mean, _ = run(spec, GENERATIONS)
    assert np.linalg.norm(mean) < 1.0, f"{name}: |mean| {np.linalg.norm(mean):.3g} from 4.47"
    # a per-pair offset (one pair's level harder than another's) changes nothing
    key = jax.random.key(3)
    state = es.init(spec, key, jnp.full(DIMS, START))
    x, state = es.ask(spec, key, state)
    f = np.asarray(sphere(x))
    offset = np.tile(np.arange(POP // 2) * 100.0, 2)
    a, _ = es.tell(spec, key, x, f, state)
    b, _ = es.tell(spec, key, x, f + offset, state)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    # without it, the offset moves the step (evosax's own centered ranks see the magnitudes)
    plain = spec_for(name)
    c, _ = es.tell(plain, key, x, f, state)
    d, _ = es.tell(plain, key, x, f + offset, state)
    assert not np.array_equal(es.mean_of(plain, c), es.mean_of(plain, d))


def test_pairwise_shaping_needs_mirrored_pairs():
    from lab.core.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="search.shaping.*CMA_ES does not sample them"):
        load_config("configs/smoke.yaml", ["search.strategy=CMA_ES", "search.shaping=pairwise"])
    load_config("configs/lpo_smoke.yaml", ["search.shaping=pairwise"])


def test_lr_zero_is_a_random_search_around_the_start():
    """Open_ES at lr 0: the mean never moves and every generation samples the start at sigma
    (the random-search control); other strategies adapt their scale, so they refuse it."""
    from lab.core.config import ConfigError, load_config
    spec = dataclasses.replace(spec_for("Open_ES"), lr=0.0)
    key = jax.random.key(0)
    state = es.init(spec, key, jnp.full(DIMS, START))
    samples = []
    for g in range(20):
        x, state = es.ask(spec, jax.random.fold_in(key, g), state)
        samples.append(np.asarray(x))
        state, _ = es.tell(spec, key, x, sphere(x), state)
        np.testing.assert_array_equal(es.mean_of(spec, state), np.full(DIMS, START))
    noise = np.concatenate(samples) - START
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(SIGMA, rel=0.1)
    for path in ("configs/smoke.yaml", "configs/lpo_smoke.yaml"):  # hparams, RL objectives
        assert load_config(path, ["search.lr=0"]).search.lr == 0
    with pytest.raises(ConfigError, match="search.lr.*random search.*needs Open_ES"):
        load_config("configs/smoke.yaml", ["search.strategy=PGPE", "search.lr=0"])


def test_centered_ranks_closed_form_ties_and_non_finite_values():
    from lab.core.es import centered_ranks
    got = centered_ranks(np.array([[3.0, 1.0, 2.0, 2.0], [5.0, 5.0, np.nan, -1.0]]), axis=1)
    np.testing.assert_allclose(got, [[0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.5, -0.5]])
    np.testing.assert_allclose(centered_ranks(np.array([[1.0, 4.0], [2.0, 3.0]]), axis=0),
                               [[-0.5, 0.5], [0.5, -0.5]])  # along the other axis
    assert centered_ranks(np.array([7.0])).tolist() == [-0.5]
