"""Teacher-student regression: a student MLP fits a fixed random teacher MLP on Gaussian inputs.

The teacher (tanh MLP, weights from a fixed numpy seed) is scaled so its outputs have unit
variance over the input distribution. Every batch draws fresh inputs ``x ~ N(0, I)`` inside jit,
so there is no finite training set; ``eval_loss`` is the error on a fixed sample of inputs. The
loss is the mean squared error over batch and outputs; when the student is at least as large as
the teacher the problem is realizable and the floor 0 is attainable.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .base import Task
from .mlp import mlp_apply, mlp_init


def _teacher(seed: int, sizes: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers = []
    for m, n in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append((rng.standard_normal((m, n)) / np.sqrt(m), 0.1 * rng.standard_normal(n)))
    return layers


def _teacher_apply(layers: list[tuple[np.ndarray, np.ndarray]], x):
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.tanh(x) if isinstance(x, np.ndarray) else jnp.tanh(x)
    return x


def make_teacher_student(name: str, in_dim: int = 16, out_dim: int = 4,
                         teacher_hidden: Sequence[int] = (16,),
                         hidden: Sequence[int] = (32,), batch_size: int = 64, steps: int = 200,
                         seed: int = 0, n_eval: int = 1024) -> Task:
    """A teacher-student regression task.

    Args:
      name: task name.
      in_dim: input dimension.
      out_dim: output dimension.
      teacher_hidden: hidden widths of the fixed teacher.
      hidden: hidden widths of the trained student (tanh, like the teacher).
      batch_size: inputs per batch.
      steps: default budget.
      seed: seed of the teacher and of the evaluation inputs.
      n_eval: size of the fixed evaluation sample.

    Returns:
      the Task; floor 0.
    """
    t_sizes = [in_dim, *teacher_hidden, out_dim]
    layers = _teacher(seed, t_sizes)
    probe = np.random.default_rng(seed + 1).standard_normal((4096, in_dim))
    scale = 1.0 / float(np.std(_teacher_apply(layers, probe)))
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]
    layers[-1] = (layers[-1][0] * np.float32(scale), layers[-1][1] * np.float32(scale))
    x_eval = np.random.default_rng(seed + 2).standard_normal((n_eval, in_dim)).astype(np.float32)
    y_eval = _teacher_apply(layers, x_eval).astype(np.float32)
    s_sizes = [in_dim, *hidden, out_dim]

    def init(key: jax.Array):
        return mlp_init(key, s_sizes)

    def loss(params, batch) -> jax.Array:
        x, y = batch
        return jnp.mean((mlp_apply(params, x, "tanh") - y) ** 2)

    def batch(key: jax.Array, step: jax.Array):
        del step
        x = jax.random.normal(key, (batch_size, in_dim), jnp.float32)
        return x, _teacher_apply(layers, x)

    def eval_loss(params) -> jax.Array:
        return loss(params, (jnp.asarray(x_eval), jnp.asarray(y_eval)))

    config = {"model": "mlp", "sizes": s_sizes, "hidden": list(hidden), "activation": "tanh",
              "teacher_sizes": t_sizes, "seed": seed, "batch_size": batch_size,
              "n_eval": n_eval}
    return Task(name=name, family="teacher_student", init=init, loss=loss, batch=batch,
                steps=steps, eval_loss=eval_loss, floor=0.0, config=config)
