"""MNIST-1D classification (40-point 1-D signals, 10 classes) with an MLP or a small 1-D CNN.

The data set is generated once, offline, by ``tasks/data/make_mnist1d.py`` with the ``mnist1d``
package's generator (seed 42, 4000 train / 1000 test) and ships as ``tasks/data/mnist1d.npz``
(float16 signals, uint8 labels), loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ._common import digest, load_npz
from .base import Task
from .cnn import make_cnn_classification
from .mlp import make_mlp_classification

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
    return make_cnn_classification(name, "mnist1d", load_mnist1d(), channels, kernel, stride,
                                   steps, batch_size, _data_config())
