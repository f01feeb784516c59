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
