"""MNIST-1D classification (40-point 1-D signals, 10 classes) with an MLP or a small 1-D CNN.

The data set is generated once, offline, by ``tasks/data/make_mnist1d.py`` with the ``mnist1d``
package's generator (seed 42, 4000 train / 1000 test) and ships as ``tasks/data/mnist1d.npz``
(float16 signals, uint8 labels), loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._common import digest, load_npz
from .base import Task
from .mlp import make_classification, make_mlp_classification

DATA_FILE = "mnist1d.npz"


@functools.cache
def _raw() -> dict[str, np.ndarray]:
    return load_npz(DATA_FILE)


@functools.cache
def load_mnist1d() -> dict[str, np.ndarray]:
    """The packaged splits: float32 inputs [n, 40], int32 labels (read-only arrays)."""
    out = {k: _raw()[k].astype(np.float32 if k.startswith("x") else np.int32)
           for k in ("x_train", "y_train", "x_test", "y_test")}
    for v in out.values():
        v.setflags(write=False)
    return out


def _data_config() -> dict:
    raw = _raw()
    return {"data": DATA_FILE, "n_train": int(len(raw["y_train"])),
            "n_test": int(len(raw["y_test"])),
            "data_digest": digest(*(raw[k] for k in sorted(raw)))}


def make_mnist1d_mlp(name: str, hidden: Sequence[int] = (64,), steps: int = 200,
                     batch_size: int = 128, activation: str = "relu") -> Task:
    """An MLP on MNIST-1D (cross-entropy; ``eval_loss`` on the test split).

    Args:
      name: task name.
      hidden: hidden-layer widths.
      steps: default budget.
      batch_size: signals per batch.
      activation: hidden activation.

    Returns:
      the Task.
    """
    return make_mlp_classification(name, "mnist1d", load_mnist1d(), hidden, steps, batch_size,
                                   activation, _data_config())


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


def make_mnist1d_cnn(name: str, channels: Sequence[int] = (16, 16), kernel: int = 5,
                     stride: int = 2, steps: int = 200, batch_size: int = 128) -> Task:
    """A small strided 1-D CNN (ReLU convolutions, then one dense layer) on MNIST-1D.

    Args:
      name: task name.
      channels: output channels of each convolution.
      kernel: convolution width.
      stride: stride of every convolution ("SAME" padding).
      steps: default budget.
      batch_size: signals per batch.

    Returns:
      the Task.
    """
    data = load_mnist1d()
    length, n_out = int(data["x_train"].shape[1]), 10
    channels = list(channels)
    shapes = _cnn_shapes(channels, kernel, length, stride, n_out)
    config = {**_data_config(), "model": "cnn", "channels": channels, "kernel": kernel,
              "stride": stride}
    return make_classification(
        name, "mnist1d", data,
        init=lambda key: _cnn_init(key, shapes),
        apply=lambda p, x: _cnn_apply(p, x, len(channels), stride), batch_size=batch_size,
        steps=steps, config=config)
