"""Rosenbrock tasks: the 2-D banana valley and its chained n-D extension, minimum 0 at all ones.

``f(x) = sum_i b (x[i+1] - x[i]**2)**2 + (a - x[i])**2`` with ``a = 1``, ``b = 100``. The 2-D task
starts around (-1.5, 2); the chained task around the classic (-1.2, 1, -1.2, 1, ...). Each seed
jitters the start with Gaussian noise of standard deviation ``jitter``. No data: the batch is a
placeholder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._common import no_batch
from .base import Task


def rosenbrock(x: jax.Array, a: float = 1.0, b: float = 100.0) -> jax.Array:
    """The chained Rosenbrock function of a vector ``x`` (at least 2 entries)."""
    return jnp.sum(b * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


def make_rosenbrock(name: str, dim: int = 2, steps: int = 200, jitter: float = 0.1,
                    b: float = 100.0) -> Task:
    """A Rosenbrock task.

    Args:
      name: task name.
      dim: 2 for the classic valley, more for the chained extension.
      steps: default budget.
      jitter: standard deviation of the per-seed perturbation of the start.
      b: curvature of the valley walls.

    Returns:
      the Task, one parameter vector ``"x"``; floor 0 at ``x = 1``.
    """
    if dim < 2:
        raise ValueError(f"rosenbrock needs dim >= 2, got {dim}")
    base = (np.array([-1.5, 2.0]) if dim == 2 else np.tile([-1.2, 1.0], dim)[:dim]).astype(
        np.float32)

    def init(key: jax.Array):
        return {"x": jnp.asarray(base) + jitter * jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params, batch) -> jax.Array:
        del batch
        return rosenbrock(params["x"], 1.0, b)

    config = {"dim": dim, "jitter": float(jitter), "a": 1.0, "b": float(b),
              "start": [float(v) for v in base]}
    return Task(name=name, family="rosenbrock", init=init, loss=loss, batch=no_batch,
                steps=steps, floor=0.0, config=config)
