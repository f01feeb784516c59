"""The Task interface: a pure-JAX inner problem that an update rule trains."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Params = Any
Batch = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """One inner problem. Every function is pure and traceable under jit and vmap.

    Attributes:
      name: unique name, e.g. ``"quadratic_ill_16"``.
      family: task family, e.g. ``"quadratic"``.
      init: ``init(key) -> params`` (a pytree of float32 arrays).
      loss: ``loss(params, batch) -> scalar`` training loss on one batch.
      batch: ``batch(key, step) -> batch``, sampled inside jit from arrays that ship with the code.
      steps: the default budget (inner steps).
      eval_loss: ``eval_loss(params) -> scalar`` on a held-out split, or None.
      floor: known lower bound of the loss (0 by default), used by the fitness.
      config: the numbers that define the task (sizes, noise, data), hashed into its version.
    """

    name: str
    family: str
    init: Callable[[jax.Array], Params]
    loss: Callable[[Params, Batch], jax.Array]
    batch: Callable[[jax.Array, jax.Array], Batch]
    steps: int
    eval_loss: Callable[[Params], jax.Array] | None = None
    floor: float = 0.0
    config: dict = dataclasses.field(default_factory=dict)

    def param_count(self) -> int:
        """Number of scalar parameters (computed from shapes, no FLOPs)."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def scaled(task: Task, factor: float, name: str) -> Task:
    """``task`` with its loss multiplied by ``factor``: the same problem, gradients ``factor``
    times larger (the floor and the held-out loss scaled alike). A rule invariant to the loss's
    scale, as Adam is up to its epsilon, scores the same on both, since the fitness is a log
    ratio against a reference tuned on each; a rule that normalizes only small gradients (a
    capped second moment) takes ``factor`` times larger steps and fails here. Its config is the
    base task's plus ``base`` and ``loss_scale``, so its version changes with either."""
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"scaled({task.name!r}): the loss scale must be positive, got {factor}")
    f = float(factor)

    def loss(params, batch):
        return f * task.loss(params, batch)

    eval_loss = None if task.eval_loss is None else (lambda params: f * task.eval_loss(params))
    config = {**task.config, "base": task.name, "loss_scale": f}
    return dataclasses.replace(task, name=name, loss=loss, eval_loss=eval_loss,
                               floor=f * task.floor, config=config)
