"""Conformance cases of update rules (``lab.core.kind.RuleCase``): the pure function the test
suite runs a rule through, and the same through its optax export.

``apply`` trains a small fixed problem (a quadratic over a matrix and a vector, float32) for a
few steps from a fresh state and returns every step's update and the final parameters; the export
does the same through ``to_optax`` and ``optax.apply_updates``: a kind's rule conforms when the
two agree, under jit and eager, vmapped over genomes and looped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.kind import RuleCase
from lab.core.rule import UpdateRule, make_ctx, to_optax

STEPS = 4
LR = 0.1
HORIZON = 100


def _problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
    target = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
                          params)
    curvature = jax.tree.map(lambda x: jnp.asarray(np.logspace(-1, 1, x.size).reshape(x.shape),
                                                   jnp.float32), params)

    def loss(p):
        return sum(jnp.sum(0.5 * h * (x - y) ** 2) for x, y, h in zip(
            jax.tree.leaves(p), jax.tree.leaves(target), jax.tree.leaves(curvature),
            strict=True))
    return params, jax.grad(loss)


def apply_rule(rule: UpdateRule, genome) -> dict:
    """``{"deltas": [STEPS] updates, "params": the parameters after them}``."""
    params, grad = _problem()
    state = rule.init(genome, params)
    deltas = []
    for t in range(STEPS):
        delta, state = rule.update(genome, grad(params), state, params,
                                   make_ctx(t, HORIZON, LR))
        deltas.append(delta)
        params = optax.apply_updates(params, delta)
    return {"deltas": deltas, "params": params}


def apply_exported(rule: UpdateRule, genome) -> dict:
    """``apply_rule`` through ``to_optax(rule, genome)``."""
    params, grad = _problem()
    opt = to_optax(rule, genome, LR, HORIZON)
    state = opt.init(params)
    deltas = []
    for _ in range(STEPS):
        delta, state = opt.update(grad(params), state, params)
        deltas.append(delta)
        params = optax.apply_updates(params, delta)
    return {"deltas": deltas, "params": params}


def update_rule_case(id: str, rule: UpdateRule, population) -> RuleCase:
    """The conformance case of an update rule with three distinct genomes."""
    return RuleCase(id, rule, tuple(population), apply_rule, apply_exported)
