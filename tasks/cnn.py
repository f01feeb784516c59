"""Small strided 1-D CNNs for classification of fixed-length signals (MNIST-1D, the digits'
pixels in raster order), in pure JAX: ReLU convolutions with "SAME" padding, then one dense
layer. Parameters are ``{"conv_i": {"w": [kernel, c_in, c_out], "b"}, "dense": {"w", "b"}}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .base import Task
from .mlp import make_classification


def _cnn_shapes(channels: Sequence[int], kernel: int, length: int, stride: int,
                n_out: int) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer name, weight shape, fan-in) of each layer."""
    shapes, c_in = [], 1
    for i, c in enumerate(channels):
        shapes.append((f"conv_{i}", (kernel, c_in, c), kernel * c_in))
        c_in, length = c, -(-length // stride)
    shapes.append(("dense", (length * c_in, n_out), length * c_in))
    return shapes


def _cnn_init(key: jax.Array, shapes: list[tuple[str, tuple[int, ...], int]]) -> dict:
    # One RNG draw for all weights (see mlp_init), LeCun-normal scaling, zero biases.
    sizes = [int(np.prod(s)) for _, s, _ in shapes]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    params, start = {}, 0
    for (name, shape, fan_in), size in zip(shapes, sizes, strict=True):
        w = flat[start:start + size].reshape(shape) * float(1.0 / np.sqrt(fan_in))
        params[name] = {"w": w, "b": jnp.zeros((shape[-1],), jnp.float32)}
        start += size
    return params


def conv1d_same(h: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """A strided "SAME" 1-D convolution as one matmul over gathered patches.

    Equal to ``lax.conv_general_dilated(h, w, (stride,), "SAME", ("NWC", "WIO", "NWC"))``, but
    it stays a plain matmul when vmapped over a population of weights (a vmapped convolution
    becomes a grouped convolution, which is very slow on CPU).

    Args:
      h: [batch, length, c_in].
      w: [kernel, c_in, c_out].
      stride: the stride.

    Returns:
      [batch, ceil(length / stride), c_out].
    """
    kernel, length = w.shape[0], h.shape[1]
    out = -(-length // stride)
    pad = max((out - 1) * stride + kernel - length, 0)
    hp = jnp.pad(h, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    patches = jnp.stack([hp[:, j:j + (out - 1) * stride + 1:stride] for j in range(kernel)], 2)
    return patches.reshape(*patches.shape[:2], -1) @ w.reshape(-1, w.shape[-1])


def _cnn_apply(params: dict, x: jax.Array, n_conv: int, stride: int) -> jax.Array:
    h = x[..., None]  # [batch, length, 1] (NWC)
    for i in range(n_conv):
        layer = params[f"conv_{i}"]
        h = jax.nn.relu(conv1d_same(h, layer["w"], stride) + layer["b"])
    h = h.reshape(h.shape[0], -1)
    return h @ params["dense"]["w"] + params["dense"]["b"]


def make_cnn_classification(name: str, family: str, data: dict[str, np.ndarray],
                            channels: Sequence[int], kernel: int, stride: int, steps: int,
                            batch_size: int, config: dict) -> Task:
    """A strided 1-D CNN classifier on ``data`` (see ``tasks.mlp.make_classification``).

    Args:
      name: task name.
      family: task family.
      data: the splits, inputs [n, length]; the number of classes is read from the labels.
      channels: output channels of each convolution.
      kernel: convolution width.
      stride: stride of every convolution ("SAME" padding).
      steps: default budget.
      batch_size: signals per batch.
      config: the numbers that define the data (digests, split sizes).

    Returns:
      the Task.
    """
    length = int(data["x_train"].shape[1])
    n_out = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    channels = list(channels)
    shapes = _cnn_shapes(channels, kernel, length, stride, n_out)
    config = {**config, "model": "cnn", "channels": channels, "kernel": kernel,
              "stride": stride}
    return make_classification(
        name, family, data,
        init=lambda key: _cnn_init(key, shapes),
        apply=lambda p, x: _cnn_apply(p, x, len(channels), stride), batch_size=batch_size,
        steps=steps, config=config)
