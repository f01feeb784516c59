"""Quadratic tasks: ill-conditioned and noisy-gradient quadratics with a closed-form minimum.

The loss is ``f(x) = 0.5 (x - x*)^T A (x - x*)`` with ``A = Q diag(eigs) Q^T``, eigenvalues
log-spaced from 1 down to ``1 / cond``, ``Q`` a fixed random rotation and ``x*`` a fixed random
optimum (both from a numpy seed), so the minimum is ``f(x*) = 0``.

The noisy task is a stochastic gradient oracle for the same ``f``: each batch is a noise vector
``n = noise * Q diag(sqrt(eigs)) eps`` with ``eps ~ N(0, I)`` (covariance ``noise**2 * A``, as in
the noisy quadratic model), and the batch loss is ``f(x) + n . (x - stop_gradient(x))``: its value
is exactly ``f(x)`` (so training losses, the floor 0 and the fitness stay exact) while its
gradient is ``grad f(x) + n``. The deterministic task's batch is a zero vector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import Task


def quadratic_parts(dim: int, cond: float, seed: int) -> dict[str, np.ndarray]:
    """The fixed pieces of a quadratic task, built in float64 with numpy from ``seed``.

    Args:
      dim: number of parameters.
      cond: condition number of ``A`` (largest over smallest eigenvalue).
      seed: numpy seed of the rotation and the optimum.

    Returns:
      ``{"a": A, "optimum": x*, "rotation": Q, "eigs": eigenvalues}``.
    """
    rng = np.random.default_rng(seed)
    rot, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    rot = rot * np.sign(np.diag(r))  # a uniformly random rotation, independent of LAPACK's signs
    eigs = np.logspace(0.0, -np.log10(cond), dim)
    a = (rot * eigs) @ rot.T
    optimum = rng.standard_normal(dim)
    return {"a": 0.5 * (a + a.T), "optimum": optimum, "rotation": rot, "eigs": eigs}


def make_quadratic(name: str, dim: int = 16, cond: float = 1e3, noise: float = 0.0,
                   steps: int = 150, seed: int = 0, init_scale: float = 1.0,
                   scale: float = 1.0) -> Task:
    """An ill-conditioned quadratic, optionally with gradient noise in the batch.

    Args:
      name: task name.
      dim: number of parameters (one vector ``"x"``).
      cond: condition number.
      noise: scale of the gradient noise, whose covariance is ``noise**2 * A`` (0 for the
        deterministic task).
      steps: default budget.
      seed: seed of the fixed rotation and optimum.
      init_scale: standard deviation of the initial ``x`` around 0 (before ``scale``).
      scale: length scale of the problem: the optimum and the initial point are multiplied by
        it and ``A`` divided by its square, so losses are unchanged while the step size an
        optimizer needs scales with it (keeps tuned learning rates inside the lab's grid).

    Returns:
      the Task; its floor is 0. The noisy task's ``eval_loss`` is ``f`` at the final
      parameters (the training loss averages ``f`` over the last steps).
    """
    parts = quadratic_parts(dim, cond, seed)
    a = (parts["a"] / scale**2).astype(np.float32)
    optimum = (parts["optimum"] * scale).astype(np.float32)
    noise_map = (parts["rotation"] * (noise * np.sqrt(parts["eigs"])) / scale).astype(np.float32)

    def init(key: jax.Array):
        return {"x": (init_scale * scale) * jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params, batch: jax.Array) -> jax.Array:
        x = params["x"]
        d = x - jnp.asarray(optimum)
        return 0.5 * jnp.dot(d, jnp.asarray(a) @ d) + jnp.dot(batch, x - jax.lax.stop_gradient(x))

    def batch(key: jax.Array, step: jax.Array) -> jax.Array:
        del step
        if noise == 0.0:
            return jnp.zeros((dim,), jnp.float32)
        return jnp.asarray(noise_map) @ jax.random.normal(key, (dim,), jnp.float32)

    def eval_loss(params) -> jax.Array:
        return loss(params, jnp.zeros((dim,), jnp.float32))

    config = {"dim": dim, "cond": float(cond), "noise": float(noise), "noise_model": "gradient",
              "seed": seed,
              "init_scale": float(init_scale), "scale": float(scale)}
    return Task(name=name, family="quadratic", init=init, loss=loss, batch=batch, steps=steps,
                eval_loss=eval_loss if noise > 0 else None, floor=0.0, config=config)
