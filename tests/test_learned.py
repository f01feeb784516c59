"""The learned-optimizer rule: its features against closed forms, a safe start, names, the
horizon as a dynamic input, export and fingerprint. (The conformance suite in test_rules.py runs
on it too.)"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab.core.kind import get
from lab.core.rule import make_ctx
from lab.kinds.learned.rule import (
    Features,
    _mlp,
    features_of,
    init_genome,
    learned_rule,
    learned_to_optax,
)

SMALL = Features(hidden=4, depth=1)


def params_and_grads(scale: float = 1.0):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
              "s": jnp.asarray(0.5, jnp.float32)}
    grads = jax.tree.map(lambda p: scale * jnp.asarray(rng.standard_normal(np.shape(p)),
                                                       jnp.float32), params)
    return params, grads


@pytest.mark.parametrize("features", [Features(), SMALL, Features(momenta=(0.9,), factored=False,
                                                                     scales=False, taus=(10.0,)),
                                      Features(hidden=32, depth=3, step=0.01, exp_mult=1.0)])
def test_family_name_round_trips(features):
    assert Features.parse(features.name) == features
    rule = get("learned").rule_from_name(features.name)
    assert rule.kind == "learned" and features_of(rule) == features
    assert Features().name == "mlp"


@pytest.mark.parametrize("name, match", [("mlp(hidden=)", "bad value"),
                                         ("mlp(width=3)", "unknown setting"),
                                         ("lstm", "expected 'mlp'"),
                                         ("mlp(momenta=1.5)", "decays")])
def test_bad_family_names_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        Features.parse(name)


def test_features_count_and_genome_shapes():
    f = Features()
    assert f.inputs == len(f.names) == 2 + 4 + 1 + 4 + 2 + 1 + 2 + 1 + 7
    g = init_genome(f, jax.random.key(0))
    assert g["w0"].shape == (f.inputs, f.hidden) and g[f"w{f.depth}"].shape == (f.hidden, 2)
    assert g["skip"].shape == (f.inputs, 2) and g["skip"].sum() == 1.0
    assert float(jnp.exp(g["log_step"])) == pytest.approx(f.step)


def test_state_follows_the_closed_form_moments():
    rule = learned_rule(SMALL)
    params, g1 = params_and_grads()
    _, g2 = params_and_grads(2.0)
    state = rule.init(rule.genome, params)
    for t, g in enumerate((g1, g2)):
        _, state = rule.update(rule.genome, g, state, params, make_ctx(t, 10, 1.0))
    for i, b in enumerate(SMALL.momenta):
        want = b * (1 - b) * g1["w"] + (1 - b) * g2["w"]
        np.testing.assert_allclose(state["w"]["m"][i], want, rtol=1e-5, atol=1e-7)
    rho = SMALL.rms
    np.testing.assert_allclose(state["w"]["v"], rho * (1 - rho) * g1["w"] ** 2
                               + (1 - rho) * g2["w"] ** 2, rtol=1e-5)
    # Adafactor's factored moments for the matrix (rows and columns), none for the vector
    row = rho * (1 - rho) * jnp.mean(g1["w"] ** 2, -1) + (1 - rho) * jnp.mean(g2["w"] ** 2, -1)
    np.testing.assert_allclose(state["w"]["row"], row, rtol=1e-5)
    assert state["w"]["col"].shape == (3,) and "row" not in state["b"]
    assert state["s"]["m"].shape == (len(SMALL.momenta), 1)  # scalars as shape [1]


def test_random_rule_takes_tiny_steps_whatever_the_gradient_scale():
    """The safe start: a blank network (no skip) moves no parameter by more than ~1e-3, for
    gradients from 1e-3 to 1e3."""
    f = Features()
    genome = init_genome(f, jax.random.key(1), skip=None)
    rule = learned_rule(f, genome)
    for scale in (1e-3, 1.0, 1e3):
        params, grads = params_and_grads(scale)
        state = rule.init(genome, params)
        for t in range(3):
            delta, state = rule.update(genome, grads, state, params, make_ctx(t, 100, 1.0))
            biggest = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(delta))
            assert 0 < biggest < 1e-3 * math.exp(f.exp_mult), (scale, biggest)


def test_adam_start_is_adam():
    """With the skip on the ``adam`` feature and no network, the rule is optax's Adam (eps 0)
    at learning rate ``lr * exp(log_step)``, step after step."""
    f = SMALL
    genome = jax.tree.map(jnp.zeros_like, init_genome(f, jax.random.key(0)))
    genome["skip"] = genome["skip"].at[f.names.index("adam"), 0].set(1.0)
    genome["log_step"] = jnp.asarray(math.log(0.01), jnp.float32)
    rule = learned_rule(f, genome)
    tx = optax.adam(2.0 * 0.01, b1=0.9, b2=f.rms, eps=0.0)
    params, grads = params_and_grads()
    state, opt_state = rule.init(genome, params), tx.init(params)
    for t in range(3):
        g = jax.tree.map(lambda x, t=t: x * (1.0 + t), grads)
        delta, state = rule.update(genome, g, state, params, make_ctx(t, 10, 2.0))
        want, opt_state = tx.update(g, opt_state, params)
        for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-9)


def test_horizon_is_a_dynamic_input():
    """Progress features read ctx.horizon: other horizons give other steps, one compilation."""
    f = SMALL
    genome = init_genome(f, jax.random.key(0))
    genome["w1"] = genome["w1"] * 100  # a network loud enough to show its inputs
    rule = learned_rule(f, genome)
    params, grads = params_and_grads()
    state = rule.init(genome, params)
    traces = []

    @jax.jit
    def step(horizon):
        traces.append(1)
        return rule.update(genome, grads, state, params, make_ctx(5, horizon, 1.0))[0]["w"]

    a, b = step(jnp.int32(10)), step(jnp.int32(1000))
    assert len(traces) == 1 and not np.allclose(a, b)


def test_mlp_is_a_pure_function_of_the_genome():
    f = SMALL
    g = init_genome(f, jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (5, f.inputs))
    d, m = _mlp(f, g, x)
    h = jax.nn.relu(x @ g["w0"] + g["b0"])
    out = h @ g["w1"] + g["b1"] + x @ g["skip"]
    np.testing.assert_allclose(d, out[:, 0], rtol=1e-6)
    np.testing.assert_allclose(m, out[:, 1], rtol=1e-6)


def test_exported_optax_transform_trains_like_the_rule():
    f = SMALL
    genome = {**init_genome(f, jax.random.key(0)), "log_step": jnp.asarray(math.log(0.05))}
    rule = learned_rule(f, genome)
    tx = learned_to_optax(genome, horizon=50, features=f)
    params, grads = params_and_grads()
    opt_state, state = tx.init(params), rule.init(genome, params)
    p_tx, p_rule = params, params
    for t in range(3):
        u, opt_state = tx.update(grads, opt_state, p_tx)
        p_tx = optax.apply_updates(p_tx, u)
        d, state = rule.update(genome, grads, state, p_rule, make_ctx(t, 50, 1.0))
        p_rule = optax.apply_updates(p_rule, d)
    for a, b in zip(jax.tree.leaves(p_tx), jax.tree.leaves(p_rule), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_fingerprint_is_stable_and_names_a_closest_rule():
    from lab.core.hashing import describe_function
    rule = learned_rule(SMALL)
    a, b = describe_function(rule), describe_function(rule, rule.genome)
    assert a["hash"] == b["hash"] and a["closest"]["name"]
    other = describe_function(rule, init_genome(SMALL, jax.random.key(9)))
    assert other["hash"] != a["hash"]
