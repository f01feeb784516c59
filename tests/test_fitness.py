"""Tests of lab/fitness.py: the per-task fitness, task keys, the context key, SuiteScorer."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from lab.core.evaluate import task_keys
from lab.core.fitness import (
    CLIP,
    EPS,
    EvalContext,
    SuiteScorer,
    anchored_lrs,
    suite_fitness,
    task_fitness,
)
from lab.core.optimizers import make_baseline
from lab.core.rule import stack_genomes


def keys_equal(a: jax.Array, b: jax.Array) -> bool:
    return bool(np.array_equal(jax.random.key_data(a), jax.random.key_data(b)))


# ---------------------------------------------------------------------------------------------
# task_fitness: clip(log((loss - floor + eps) / (ref - floor + eps)), -C, C); diverged -> +C.


def test_fitness_is_the_log_ratio_of_the_seed_mean():
    final = np.array([[0.5, 1.5], [2.0, 2.0], [0.1, 0.1]])
    f = task_fitness(final, np.zeros_like(final, bool), ref=1.0)
    assert f.shape == (3,)
    np.testing.assert_allclose(f, [math.log((1.0 + EPS) / (1.0 + EPS)),
                                   math.log((2.0 + EPS) / (1.0 + EPS)),
                                   math.log((0.1 + EPS) / (1.0 + EPS))], rtol=1e-12)
    assert f[0] == pytest.approx(0.0, abs=1e-12)
    assert f[1] > 0 > f[2]  # lower is better


def test_fitness_with_a_floor():
    final = np.array([[1.5], [3.0], [0.5]])
    f = task_fitness(final, np.zeros_like(final, bool), ref=2.0, floor=1.0)
    np.testing.assert_allclose(f[:2], [math.log((0.5 + EPS) / (1.0 + EPS)),
                                       math.log((2.0 + EPS) / (1.0 + EPS))], rtol=1e-12)
    # below the floor counts as at the floor: log(eps / (ref - floor + eps)) -> clipped
    assert f[2] == -CLIP


def test_reference_at_or_below_floor_stays_finite():
    final = np.array([[1.0], [0.0]])
    f = task_fitness(final, np.zeros_like(final, bool), ref=0.0)
    assert f[0] == CLIP
    assert f[1] == pytest.approx(0.0)
    f = task_fitness(final, np.zeros_like(final, bool), ref=-1.0)
    assert np.all(np.isfinite(f))


def test_fitness_is_clipped():
    final = np.array([[1e9], [1e-12]])
    f = task_fitness(final, np.zeros_like(final, bool), ref=1.0)
    np.testing.assert_array_equal(f, [CLIP, -CLIP])


def test_diverged_on_any_seed_scores_plus_clip():
    final = np.array([[1e-3, 1e-3], [1e-3, 1e-3], [np.nan, 0.5], [np.inf, np.inf]])
    diverged = np.array([[False, False], [False, True], [False, False], [False, False]])
    f = task_fitness(final, diverged, ref=1.0)
    assert f[0] < 0
    np.testing.assert_array_equal(f[1:], [CLIP, CLIP, CLIP])
    assert f.dtype == np.float64 and np.all(np.isfinite(f))


# ---------------------------------------------------------------------------------------------
# task_keys


def test_task_keys_shape():
    keys = task_keys(3, 5)
    assert keys.shape == (5, 3)
    assert jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)


def test_evaluation_keys_are_shared_by_every_member():
    keys = task_keys(3, 5, generation=None)
    for i in range(1, 5):
        assert keys_equal(keys[i], keys[0])
    assert not keys_equal(keys[0, 0], keys[0, 1])  # seeds differ
    assert keys_equal(task_keys(3, 2)[0], keys[0])  # the same for any population size


def test_slots_share_keys_within_a_generation():
    slots = np.array([0, 1, 2, 0, 1, 2])
    keys = task_keys(2, 6, generation=4, slots=slots)
    assert keys.shape == (6, 2)
    for i in range(3):
        assert keys_equal(keys[i], keys[i + 3])
    assert not keys_equal(keys[0], keys[1])
    assert not keys_equal(keys[1], keys[2])


def test_generations_differ_from_each_other_and_from_evaluation():
    slots = np.zeros(4, np.int32)
    k0 = task_keys(2, 4, generation=0, slots=slots)
    k1 = task_keys(2, 4, generation=1, slots=slots)
    fixed = task_keys(2, 4, generation=None)
    assert not keys_equal(k0[0], k1[0])
    assert not keys_equal(k0[0], fixed[0])
    assert keys_equal(task_keys(2, 4, generation=1, slots=slots), k1)  # reproducible


# ---------------------------------------------------------------------------------------------
# EvalContext


BASE_CONTEXT = EvalContext("smoke", "v1", 100, 3, 1.0, (1e-3, 1e-2))


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, 0.5)
    if value is None:
        return 3
    return f"{value}-x"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EvalContext)])
def test_context_key_changes_with_every_field(field):
    other = dataclasses.replace(BASE_CONTEXT, **{field: _changed(getattr(BASE_CONTEXT, field))})
    assert other.key() != BASE_CONTEXT.key()


def test_context_key_is_stable():
    same = EvalContext("smoke", "v1", 100, 3, 1.0, (1e-3, 1e-2))
    assert same.key() == BASE_CONTEXT.key()
    assert len(BASE_CONTEXT.key()) == 24


def test_context_for_generation():
    slots = np.array([0, 1, 0, 1])
    g3 = BASE_CONTEXT.for_generation(3, slots)
    assert g3.generation == 3
    assert g3.key() == BASE_CONTEXT.for_generation(3, slots.copy()).key()
    assert g3.key() != BASE_CONTEXT.for_generation(4, slots).key()
    assert g3.key() != BASE_CONTEXT.for_generation(3, np.zeros(4, np.int32)).key()
    assert g3.key() != BASE_CONTEXT.key()


# ---------------------------------------------------------------------------------------------
# SuiteScorer on the tiny task


def test_suite_scorer_prefers_a_good_learning_rate(tiny_task, one_device_mesh):
    rule = make_baseline("sgd")
    scorer = SuiteScorer("tiny", "v0", [tiny_task], rule, budget=0, seeds=2,
                         refs={tiny_task.name: 0.05}, mesh=one_device_mesh)
    lrs = (0.5, 1e-6, 1e30)  # good, barely moves, diverges
    genomes = stack_genomes([make_baseline("sgd", {"learning_rate": lr}).genome for lr in lrs])
    out = scorer.score(genomes)
    f = out["fitness"]
    assert f.shape == (3,) and np.all(np.isfinite(f))
    assert f[0] < f[1] <= CLIP
    assert f[2] == CLIP
    task = out["tasks"][tiny_task.name]
    np.testing.assert_array_equal(task["fitness"], f)  # one task: the suite mean is the task's
    assert task["final_loss"].shape == (3, 2)
    assert task["diverged"][2].all() and not task["diverged"][:2].any()
    assert out["seconds"] > 0
    assert scorer.context.budget == 0 and scorer.context.seeds == 2
    # generation keys: the same population scores differently on fresh data, reproducibly
    g0 = scorer.score(genomes, generation=0, slots=np.zeros(3, np.int32))["fitness"]
    np.testing.assert_array_equal(
        g0, scorer.score(genomes, generation=0, slots=np.zeros(3, np.int32))["fitness"])
    assert not np.array_equal(g0[0], f[0])


def test_anchored_lrs_are_adams_over_their_geometric_mean():
    f = anchored_lrs({"a": 0.1, "b": 1e-3, "c": 1e-2})
    assert f == pytest.approx({"a": 10.0, "b": 0.1, "c": 1.0})
    assert anchored_lrs({}) == {}
    with pytest.raises(ValueError, match=r"no tuned Adam learning rate for b"):
        anchored_lrs({"a": 0.1, "b": None})


def test_suite_scorer_runs_each_task_at_its_anchored_rate(one_device_mesh):
    from tests.tiny import make_tiny_task
    a, b = make_tiny_task(name="tiny_a"), make_tiny_task(name="tiny_b")
    rule = make_baseline("sgd")
    genomes = stack_genomes([make_baseline("sgd", {"learning_rate": 0.5}).genome])
    refs = {"tiny_a": 0.05, "tiny_b": 0.05}
    kw = dict(budget=0, seeds=2, refs=refs, mesh=one_device_mesh)
    plain = SuiteScorer("tiny", "v0", [a, b], rule, lr=2.0, **kw)
    anchored = SuiteScorer("tiny", "v0", [a, b], rule, lr=2.0,
                           task_lr={"tiny_a": 1.0, "tiny_b": 1e-6}, **kw)
    assert anchored.lrs == {"tiny_a": 2.0, "tiny_b": 2e-6}
    assert anchored.context.key() != plain.context.key()
    pa, an = plain.score(genomes)["tasks"], anchored.score(genomes)["tasks"]
    np.testing.assert_array_equal(an["tiny_a"]["final_loss"], pa["tiny_a"]["final_loss"])
    # tiny_b at 1e-6 the rate barely moves: sgd at 0.5 * 2e-6 on its own scorer
    slow = SuiteScorer("tiny", "v0", [b], rule, lr=2e-6, **kw).score(genomes)["tasks"]
    np.testing.assert_allclose(an["tiny_b"]["final_loss"], slow["tiny_b"]["final_loss"])
    assert an["tiny_b"]["fitness"][0] > pa["tiny_b"]["fitness"][0]


def test_suite_fitness_adds_the_worst_task_behind_the_reference():
    per_task = [np.array([-1.0, 0.5, -0.2]), np.array([0.4, 2.0, -0.6])]
    np.testing.assert_allclose(suite_fitness(per_task), [-0.3, 1.25, -0.4])
    np.testing.assert_allclose(suite_fitness(per_task, 0.5), [-0.3 + 0.2, 1.25 + 1.0, -0.4])


def test_suite_scorer_weighs_its_worst_task(one_device_mesh):
    from tests.tiny import make_tiny_task
    a, b = make_tiny_task(name="tiny_a"), make_tiny_task(name="tiny_b")
    rule = make_baseline("sgd")
    genomes = stack_genomes([make_baseline("sgd", {"learning_rate": lr}).genome
                             for lr in (0.5, 1e-6)])
    kw = dict(budget=0, seeds=2, refs={"tiny_a": 0.05, "tiny_b": 0.05}, mesh=one_device_mesh,
              task_lr={"tiny_a": 1.0, "tiny_b": 1e-3})  # tiny_b behind the reference
    plain = SuiteScorer("tiny", "v0", [a, b], rule, **kw)
    worst = SuiteScorer("tiny", "v0", [a, b], rule, worst_task=2.0, **kw)
    assert worst.context.key() != plain.context.key() and plain.context.worst_task == 0.0
    out, ref = worst.score(genomes), plain.score(genomes)
    fa, fb = (out["tasks"][t]["fitness"] for t in ("tiny_a", "tiny_b"))
    np.testing.assert_allclose(ref["fitness"], (fa + fb) / 2)
    assert fb[0] > 0 and fa[0] < 0
    behind = np.maximum(np.maximum(fa, fb), 0.0)
    np.testing.assert_allclose(out["fitness"], (fa + fb) / 2 + 2.0 * behind)


def test_suite_scorer_scores_named_tasks_on_their_own_seed_counts(one_device_mesh):
    from tests.tiny import make_tiny_task
    a, b = make_tiny_task(name="tiny_a"), make_tiny_task(name="tiny_b")
    rule = make_baseline("sgd")
    genomes = stack_genomes([make_baseline("sgd", {"learning_rate": lr}).genome
                             for lr in (0.5, 0.05)])
    kw = dict(budget=0, seeds=2, refs={"tiny_a": 0.05, "tiny_b": 0.05}, mesh=one_device_mesh)
    plain = SuiteScorer("tiny", "v0", [a, b], rule, **kw)
    more = SuiteScorer("tiny", "v0", [a, b], rule, task_seeds={"tiny_b": 5, "elsewhere": 9}, **kw)
    assert (more.seeds_of("tiny_a"), more.seeds_of("tiny_b")) == (2, 5)
    assert more.context.key() != plain.context.key()
    # an override equal to seeds is no override: the context (and the cache) are the plain ones
    same = SuiteScorer("tiny", "v0", [a, b], rule, task_seeds={"tiny_a": 2}, **kw)
    assert same.context.key() == plain.context.key() and "task_seeds" not in same.context.to_json()
    for generation, slots in ((None, None), (3, np.array([0, 1], np.int32))):
        out = more.score(genomes, generation, slots)["tasks"]
        ref = plain.score(genomes, generation, slots)["tasks"]
        assert out["tiny_a"]["final_loss"].shape == (2, 2)
        assert out["tiny_b"]["final_loss"].shape == (2, 5)
        np.testing.assert_array_equal(out["tiny_a"]["final_loss"], ref["tiny_a"]["final_loss"])
        # the first two of five seeds are the two-seed run's; the fitness is the 5-seed mean's
        np.testing.assert_array_equal(out["tiny_b"]["final_loss"][:, :2],
                                      ref["tiny_b"]["final_loss"])
        np.testing.assert_allclose(out["tiny_b"]["fitness"], np.log(
            (out["tiny_b"]["final_loss"].astype(np.float64).mean(axis=1) + EPS) / (0.05 + EPS)),
            rtol=1e-9)
