"""Tests of lab/evaluate.py: metrics, compile-once, sharding, padding, chunking, the NaN guard.

Every test shares one train function (the tiny task from conftest, SGD with momentum) and one
population shape where it can, so the whole file pays for a handful of compilations.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tiny import TINY_DIM

from lab.core import evaluate as E
from lab.core.evaluate import (
    CURVE_POINTS,
    chunk_for_memory,
    evaluate,
    make_mesh,
    make_train,
    padded_size,
)
from lab.core.optimizers import make_baseline
from lab.core.rule import stack_genomes

SEEDS = 2
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)  # a population of 5: it pads to 8 on 8 devices
METRICS = {"final_loss", "mean_loss", "eval_loss", "curve", "diverged"}


@pytest.fixture(scope="module")
def rule():
    return make_baseline("momentum")  # two genome leaves: learning_rate and momentum


@pytest.fixture(scope="module")
def train(tiny_task, rule):
    return make_train(tiny_task, rule)


def population(rule, lrs, momentum: float = 0.9):
    return stack_genomes([make_baseline(rule.name, {"learning_rate": lr, "momentum": momentum})
                          .genome for lr in lrs])


def keys_for(pop: int, seeds: int = SEEDS) -> jax.Array:
    """[pop, seeds] keys, distinct per candidate and seed (row i is the same for every pop)."""
    return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(jax.random.key(7), i), seeds))(
        jnp.arange(pop))


@pytest.fixture(scope="module")
def reference(train, rule, one_device_mesh):
    """The population of 5 on one device, no chunking: what every other layout must reproduce."""
    return evaluate(train, population(rule, LRS), keys_for(len(LRS)), one_device_mesh)


def assert_metrics_equal(a, b, rtol=0.0):
    assert set(a) == set(b)
    for k in a:
        if rtol == 0.0 or a[k].dtype == bool:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-7, err_msg=k)


def test_metrics_shapes_and_keys(reference):
    assert set(reference) == METRICS
    pop = len(LRS)
    for k in ("final_loss", "mean_loss", "eval_loss"):
        assert reference[k].shape == (pop, SEEDS), k
        assert reference[k].dtype == np.float32, k
        assert np.all(np.isfinite(reference[k])), k
    assert reference["curve"].shape == (pop, SEEDS, CURVE_POINTS)
    assert reference["diverged"].shape == (pop, SEEDS)
    assert reference["diverged"].dtype == bool
    assert not reference["diverged"].any()
    assert all(isinstance(v, np.ndarray) for v in reference.values())
    # sensible values: training lowers the loss, and seeds differ
    assert np.all(reference["curve"][..., -1] < reference["curve"][..., 0])
    assert not np.array_equal(reference["final_loss"][:, 0], reference["final_loss"][:, 1])


def test_keys_must_match_population(train, rule, one_device_mesh):
    with pytest.raises(ValueError, match="keys"):
        evaluate(train, population(rule, LRS), keys_for(4), one_device_mesh)


def test_make_mesh_refuses_too_many_devices():
    with pytest.raises(ValueError, match="devices"):
        make_mesh(len(jax.devices()) + 1)


def test_compiles_once_across_generations(tiny_task, rule, one_device_mesh):
    """Three generations with new genome values, then smaller populations that pad to the same
    shape: the train function is traced (hence compiled) only for the first."""
    traces = []

    def counting_loss(params, batch):
        traces.append(1)  # runs at trace time only
        return tiny_task.loss(params, batch)

    task = dataclasses.replace(tiny_task, loss=counting_loss)
    train = make_train(task, rule, steps=12)
    chunk = 4
    out = None
    for g in range(3):
        lrs = np.geomspace(1e-3, 0.3, 8) * (1.0 + 0.1 * g)
        out = evaluate(train, population(rule, lrs, 0.5 + 0.1 * g), keys_for(8), one_device_mesh,
                       chunk=chunk)
        if g == 0:
            first = len(traces)
            assert first > 0
        assert len(traces) == first, f"generation {g} retraced"
    assert out["final_loss"].shape == (8, SEEDS)
    for pop in (5, 6, 7):
        assert padded_size(pop, one_device_mesh, chunk) == (4, 8)
        out = evaluate(train, population(rule, LRS[:1] * pop), keys_for(pop), one_device_mesh,
                       chunk=chunk)
        assert out["final_loss"].shape == (pop, SEEDS)
        assert len(traces) == first, f"population {pop} retraced"
    assert E.compiled(train, one_device_mesh)._cache_size() == 1


def test_padded_size():
    one, eight = make_mesh(1), make_mesh(8)
    assert padded_size(5, one) == (5, 5)
    assert padded_size(5, one, chunk=2) == (2, 6)
    assert padded_size(5, one, chunk=3) == (3, 6)
    assert padded_size(5, eight) == (8, 8)
    assert padded_size(5, eight, chunk=3) == (8, 8)
    assert padded_size(20, eight, chunk=3) == (8, 24)
    assert padded_size(20, eight, chunk=9) == (16, 32)
    for pop in range(1, 30):
        for chunk in (0, 1, 3, 8, 13):
            size, padded = padded_size(pop, eight, chunk)
            assert size % 8 == 0 and padded % size == 0 and padded >= pop


def test_eight_devices_equal_one_device(train, rule, reference, eight_device_mesh):
    """A population of 5 on 8 devices is padded to 8, sharded, and trimmed back to 5."""
    out = evaluate(train, population(rule, LRS), keys_for(len(LRS)), eight_device_mesh)
    assert out["final_loss"].shape == (len(LRS), SEEDS)
    assert_metrics_equal(out, reference, rtol=1e-6)


def test_population_is_laid_out_over_all_devices(train, rule, eight_device_mesh):
    fn = E.compiled(train, eight_device_mesh)
    genomes = population(rule, np.geomspace(1e-3, 1.0, 8))
    out = fn(genomes, keys_for(8))
    for name, x in out.items():
        assert isinstance(x.sharding, NamedSharding), name
        assert len(x.sharding.device_set) == 8, name
        assert x.sharding.spec[0] == P(E.AXIS)[0], name
        assert {s.data.shape[0] for s in x.addressable_shards} == {1}, name
        assert {s.device for s in x.addressable_shards} == set(eight_device_mesh.devices.flat)


def test_padding_rows_do_not_leak(train, rule, reference, eight_device_mesh):
    """A pop of 5 whose last candidate diverges: padding repeats it, yet only row 4 is bad."""
    out = evaluate(train, population(rule, LRS[:4] + (1e30,)), keys_for(5), eight_device_mesh)
    assert out["diverged"].shape == (5, SEEDS)
    assert out["diverged"][4].all() and not out["diverged"][:4].any()
    for k in METRICS:
        np.testing.assert_allclose(out[k][:4], reference[k][:4], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [2, 3])
def test_chunks_give_the_same_results(train, rule, reference, one_device_mesh, chunk):
    out = evaluate(train, population(rule, LRS), keys_for(len(LRS)), one_device_mesh, chunk=chunk)
    assert_metrics_equal(out, reference, rtol=1e-6)


def test_chunk_for_memory(train, rule, reference, eight_device_mesh):
    genomes, keys = population(rule, LRS[:1]), keys_for(1)
    assert chunk_for_memory(train, genomes, keys, eight_device_mesh, 0) == 0
    tiny = chunk_for_memory(train, genomes, keys, eight_device_mesh, 1e-6)
    big = chunk_for_memory(train, genomes, keys, eight_device_mesh, 1024.0)
    for chunk in (tiny, big):
        assert chunk > 0 and chunk % 8 == 0
    assert tiny == 8 and big >= tiny
    for chunk in (tiny, big):
        out = evaluate(train, population(rule, LRS), keys_for(len(LRS)), eight_device_mesh,
                       chunk=chunk)
        assert_metrics_equal(out, reference, rtol=1e-6)


@pytest.mark.parametrize("pop,seeds", [(1, 1), (1, SEEDS), (len(LRS), 1)])
def test_axes_of_one_are_not_vmapped(train, rule, reference, one_device_mesh, pop, seeds):
    """An axis of one (one candidate, or one seed) compiles the unbatched program (no batch
    dimension of that size in the lowered call), and the metrics are the reference's
    rows (a one-candidate call returns [1, seeds, ...])."""
    genomes, keys = population(rule, LRS[:pop]), keys_for(pop, SEEDS)[:, :seeds]
    out = evaluate(train, genomes, keys, one_device_mesh)
    for k in METRICS:
        assert out[k].shape[:2] == (pop, seeds), k
        np.testing.assert_array_equal(out[k], reference[k][:pop, :seeds], err_msg=k)
    text = E.compiled(train, one_device_mesh).lower(genomes, keys).as_text()
    # the inner loop carries the iterate x [TINY_DIM] with exactly the axes larger than one
    loops = "\n".join(line for line in text.splitlines() if "stablehlo.while" in line)
    lead = {m.group(1) for m in re.finditer(rf"tensor<((?:\d+x)*){TINY_DIM}xf32>", loops)}
    want = "".join(f"{n}x" for n in (pop, seeds) if n > 1)  # "": unbatched
    assert lead - {""} == {want} - {""} and want in lead, lead  # ("": the task's constants)


@pytest.mark.parametrize("bad_lr", [1e30, float("nan")])
def test_diverged_candidate_is_flagged_and_isolated(train, rule, reference, one_device_mesh,
                                                   bad_lr):
    """A huge (or NaN) learning rate in row 2 is marked diverged on every seed; every other
    candidate's metrics are bit-identical to the run without it."""
    lrs = list(LRS)
    lrs[2] = bad_lr
    genomes = population(rule, [lr if np.isfinite(lr) else 0.1 for lr in lrs])
    if not np.isfinite(bad_lr):
        genomes["learning_rate"] = genomes["learning_rate"].at[2].set(jnp.nan)
    out = evaluate(train, genomes, keys_for(len(LRS)), one_device_mesh)
    assert out["diverged"][2].all()
    assert not np.delete(out["diverged"], 2, axis=0).any()
    for k in METRICS:
        np.testing.assert_array_equal(np.delete(out[k], 2, axis=0),
                                      np.delete(reference[k], 2, axis=0), err_msg=k)


def test_train_jit_equals_eager(tiny_task, rule):
    train = make_train(tiny_task, rule, steps=16)
    genome = make_baseline("momentum", {"learning_rate": 0.1}).genome
    key = jax.random.key(3)
    eager = train(genome, key)
    jitted = jax.jit(train)(genome, key)
    assert set(eager) == METRICS
    for k in METRICS:
        np.testing.assert_allclose(np.asarray(eager[k]), np.asarray(jitted[k]), rtol=1e-5,
                                   err_msg=k)
