"""Any optax or optax.contrib optimizer as a baseline: specs, numbers against optax, references
tuned on the grid, replay rows."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lab.kinds  # noqa: F401 - registers the kinds and reference families
from lab.core.evaluate import make_train
from lab.core.optimizers import (
    BASELINES,
    is_baseline,
    make_baseline,
    optax_factory,
    optax_optimizer_names,
    spec_for,
)
from lab.core.references import LR_GRID, family_of
from lab.core.rule import make_ctx

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3, -0.2])}


def _grads(t):
    return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * t, PARAMS)


def _run_rule(rule, steps=5):
    params, state = PARAMS, rule.init(rule.genome, PARAMS)
    for t in range(steps):
        delta, state = rule.update(rule.genome, _grads(t), state, params,
                                   make_ctx(t, steps, 1.0, jnp.float32))
        params = optax.apply_updates(params, delta)
    return params


def _run_optax(tx, steps=5):
    params, state = PARAMS, tx.init(PARAMS)
    for t in range(steps):
        delta, state = tx.update(_grads(t), state, params)
        params = optax.apply_updates(params, delta)
    return params


@pytest.mark.parametrize("name,make", [
    ("lamb", lambda: optax.lamb(0.01, weight_decay=1e-4)),
    ("schedule_free_adamw", lambda: optax.contrib.schedule_free_adamw(0.01)),
    ("adopt", lambda: optax.contrib.adopt(0.01)),
    ("radam", lambda: optax.radam(0.01)),
])
def test_any_optax_optimizer_is_a_baseline_with_optax_numbers(name, make):
    rule = make_baseline(name, {"learning_rate": 0.01})
    assert is_baseline(name) and rule.name == name
    mine, ref = _run_rule(rule), _run_optax(make())
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_a_generic_baseline_searches_its_learning_rate_and_fixes_the_rest():
    spec = spec_for("schedule_free_adamw")
    assert list(spec.searchable) == ["learning_rate"]
    assert spec.searchable["learning_rate"][0] == pytest.approx(0.0025)  # optax's default
    rule = make_baseline("schedule_free_adamw", {"learning_rate": 0.01, "b1": 0.95})
    assert rule.name == "schedule_free_adamw(b1=0.95)"
    assert "b1=0.95" in rule.describe(rule.genome)
    with pytest.raises(ValueError, match="has no keyword 'bb1'"):
        make_baseline("schedule_free_adamw", {"bb1": 0.9})


def test_schedule_free_is_scored_at_its_averaged_iterate(tiny_task):
    """A run of schedule-free AdamW takes its gradients at the interpolated iterate y but reports
    losses at the average x (optax.contrib.schedule_free_eval_params), as AlgoPerf scores it: the
    numbers of a hand-written optax loop. Other optimizers have no such point."""
    lr, steps, key = 0.05, 40, jax.random.key(3)
    rule = make_baseline("schedule_free_adamw", {"learning_rate": lr})
    assert rule.scored_at is not None and make_baseline("adamw").scored_at is None
    m = jax.jit(make_train(tiny_task, rule, steps))(rule.genome, key)
    k_init, k_data = jax.random.split(key)
    tx = optax.contrib.schedule_free_adamw(lr)
    params = tiny_task.init(k_init)
    state, losses, at_y = tx.init(params), [], []
    for t in range(steps):
        batch = tiny_task.batch(jax.random.fold_in(k_data, t), t)
        at_y.append(tiny_task.loss(params, batch))
        losses.append(tiny_task.loss(optax.contrib.schedule_free_eval_params(state, params),
                                     batch))
        grads = jax.grad(tiny_task.loss)(params, batch)
        delta, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, delta)
    x = optax.contrib.schedule_free_eval_params(state, params)
    tail = steps // 10
    np.testing.assert_allclose(m["final_loss"], np.mean(losses[-tail:]), rtol=1e-4)
    np.testing.assert_allclose(m["eval_loss"], tiny_task.eval_loss(x), rtol=1e-4)
    np.testing.assert_allclose(m["mean_loss"], np.mean(losses), rtol=1e-4)
    # the average is not the iterate: scoring at y would report other numbers
    assert abs(float(np.mean(at_y[-tail:])) - float(m["final_loss"])) > 1e-3


def test_unknown_optimizers_are_named_with_the_closest():
    assert optax_factory("adamm") is None and not is_baseline("adamm")
    with pytest.raises(ValueError, match="unknown baseline 'lambb'.*lamb"):
        spec_for("lambb")
    # a function of optax that is not an optimizer alias is not one
    assert optax_factory("chain") is None and optax_factory("_src") is None
    names = optax_optimizer_names()
    assert {"adam", "lamb", "schedule_free_adamw", "muon"} <= set(names)
    assert set(optax_optimizer_names(contrib=False)) < set(names)
    assert "lamb" in BASELINES


def test_tune_lr_scales_an_optimizers_learning_rate_through_its_log(tiny_task, one_device_mesh):
    """``--tune-lr`` for an optax optimizer (the hyperparameters-only baseline held out as the
    discoveries are): each multiplier is a shift of the genome's log learning rate, the same
    optimizer built at that multiple of its rate with its other hyperparameters as found; the
    pick is the best mean final loss over the seeds."""
    from lab.core.evaluate import evaluate, task_keys
    from lab.core.replay import TUNE_MULTIPLIERS, replay_train
    from lab.core.rule import stack_genomes
    from lab.kinds.baseline import tune_lr
    found = {"learning_rate": 1e-4, "b1": 0.8, "b2": 0.99}  # too small a rate to start
    rule = make_baseline("adam", found, "baseline")
    keys = task_keys(2, 1)
    m, lr = tune_lr(tiny_task, rule, rule.genome, 1.0, 30, keys, one_device_mesh)
    built = stack_genomes([make_baseline("adam", {**found, "learning_rate": 1e-4 * k}).genome
                           for k in TUNE_MULTIPLIERS])
    every = evaluate(replay_train(tiny_task, rule, 30), built,
                     jnp.repeat(keys, len(TUNE_MULTIPLIERS), 0), one_device_mesh)
    loss = np.where(every["diverged"].any(-1), np.inf, every["final_loss"].mean(-1))
    best = int(np.argmin(loss))
    assert lr == pytest.approx(1e-4 * TUNE_MULTIPLIERS[best]) and lr > 1e-4  # the rate run
    np.testing.assert_allclose(m["final_loss"], every["final_loss"][best:best + 1], rtol=1e-5)
    with pytest.raises(ValueError, match="no 'learning_rate'"):
        tune_lr(tiny_task, rule, {"b1": rule.genome["b1"]}, 1.0, 30, keys, one_device_mesh)


def test_references_tune_any_optimizer_on_the_grid():
    assert family_of("lamb").name == "tuned" == family_of("schedule_free_adamw").name
    with pytest.raises(ValueError, match="no reference 'nope'"):
        family_of("nope")


@pytest.mark.slow  # tunes three optimizers on the grid for three tasks (~30 s)
def test_replay_rows_for_named_optax_and_contrib_baselines(cli):
    """Named baselines tuned on the grid; ``--tune-lr`` of ``baseline:adam`` lands on tuned
    Adam where its multipliers of 1e-3 reach tuned Adam's grid point: the same runs."""
    rc, out, err = cli("replay", "baseline:adam", "--suite", "smoke", "--seeds", "2",
                       "--baselines", "adam,lamb,schedule_free_adamw", "--tune-lr", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    rules = {r["rule"] for r in doc["rows"]}
    assert {"tuned lamb", "tuned schedule_free_adamw", "baseline:adam (lr tuned)"} <= rules
    assert all(r["lr"] in LR_GRID for r in doc["rows"] if r["rule"].startswith("tuned "))
    by = {(r["task"], r["rule"]): r for r in doc["rows"]}
    reached = 0
    for task in {r["task"] for r in doc["rows"]}:
        mine, adam = by[task, "baseline:adam (lr tuned)"], by[task, "tuned adam"]
        if adam["lr"] < 1e-3 * 10 ** (8 / 3):  # within the multipliers' span
            reached += 1
            assert mine["lr"] == pytest.approx(adam["lr"], rel=1e-4)
            assert mine["final_loss"] == pytest.approx(adam["final_loss"], rel=1e-5)
    assert reached
