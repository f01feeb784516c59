"""Pure-JAX multilayer perceptrons and the classification-task builder shared by data families.

Parameters are nested dicts ``{"dense_0": {"w": [in, out], "b": [out]}, ...}`` of float32 arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .base import Task

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


def mlp_init(key: jax.Array, sizes: Sequence[int], gain: float = 1.0) -> dict:
    """LeCun-normal weights (times ``gain``) and zero biases for layer widths ``sizes``.

    All weights come from one ``jax.random.normal`` draw, sliced per layer: one RNG call instead
    of one per layer keeps the vmapped training loop quick to compile.

    Args:
      key: PRNG key.
      sizes: ``[in, hidden..., out]``.
      gain: multiplies every weight's standard deviation ``1 / sqrt(fan_in)``.

    Returns:
      ``{"dense_i": {"w", "b"}}`` for each of the ``len(sizes) - 1`` layers.
    """
    shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
    flat = jax.random.normal(key, (sum(m * n for m, n in shapes),), jnp.float32)
    params, start = {}, 0
    for i, (m, n) in enumerate(shapes):
        w = flat[start:start + m * n].reshape(m, n) * float(gain / np.sqrt(m))
        params[f"dense_{i}"] = {"w": w, "b": jnp.zeros((n,), jnp.float32)}
        start += m * n
    return params


def mlp_apply(params: dict, x: jax.Array, activation: str = "relu") -> jax.Array:
    """Applies the MLP from ``mlp_init`` to ``x`` [..., in]; no activation after the last layer."""
    act = ACTIVATIONS[activation]
    n = len(params)
    for i in range(n):
        layer = params[f"dense_{i}"]
        x = x @ layer["w"] + layer["b"]
        if i < n - 1:
            x = act(x)
    return x


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of integer ``labels`` under ``logits`` [..., classes]."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def make_classification(name: str, family: str, data: dict[str, np.ndarray],
                        init: Callable[[jax.Array], dict],
                        apply: Callable[[dict, jax.Array], jax.Array], batch_size: int,
                        steps: int, config: dict) -> Task:
    """A classification task on arrays held in memory, trained on minibatches.

    Args:
      name: task name.
      family: task family.
      data: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (inputs float32, labels int).
      init: ``init(key) -> params``.
      apply: ``apply(params, x) -> logits``.
      batch_size: examples per batch, drawn uniformly with replacement from the train split.
      steps: default budget.
      config: the numbers that define the task (``batch_size`` is added).

    Returns:
      the Task; ``loss`` is the batch cross-entropy, ``eval_loss`` the test-split cross-entropy.
    """
    x_train = np.asarray(data["x_train"], np.float32)
    y_train = np.asarray(data["y_train"], np.int32)
    x_test = np.asarray(data["x_test"], np.float32)
    y_test = np.asarray(data["y_test"], np.int32)
    n = x_train.shape[0]

    def loss(params, batch) -> jax.Array:
        x, y = batch
        return softmax_cross_entropy(apply(params, x), y)

    def batch(key: jax.Array, step: jax.Array):
        del step
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return jnp.asarray(x_train)[idx], jnp.asarray(y_train)[idx]

    def eval_loss(params) -> jax.Array:
        return softmax_cross_entropy(apply(params, jnp.asarray(x_test)), jnp.asarray(y_test))

    return Task(name=name, family=family, init=init, loss=loss, batch=batch, steps=steps,
                eval_loss=eval_loss, floor=0.0, config={**config, "batch_size": batch_size})


def make_mlp_classification(name: str, family: str, data: dict[str, np.ndarray],
                            hidden: Sequence[int], steps: int, batch_size: int = 128,
                            activation: str = "relu", config: dict | None = None) -> Task:
    """An MLP classifier on ``data`` (see ``make_classification``).

    Args:
      name: task name.
      family: task family.
      data: the splits; the input size and the number of classes are read from them.
      hidden: hidden-layer widths.
      steps: default budget.
      batch_size: examples per batch.
      activation: a key of ``ACTIVATIONS``.
      config: extra numbers that define the data (digests, split sizes).

    Returns:
      the Task.
    """
    n_in = int(data["x_train"].shape[1])
    n_out = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    sizes = [n_in, *hidden, n_out]
    cfg = {**(config or {}), "model": "mlp", "sizes": list(sizes), "hidden": list(hidden),
           "activation": activation}
    return make_classification(
        name, family, data, init=lambda key: mlp_init(key, sizes),
        apply=lambda p, x: mlp_apply(p, x, activation), batch_size=batch_size, steps=steps,
        config=cfg)
