"""Classification of scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

The data ship inside scikit-learn (``sklearn.datasets.load_digits`` reads a local file; no
network). Pixels are scaled to [0, 1] and standardized with the train split's statistics; the
split is a fixed permutation (numpy seed 0) with ``N_TEST`` test images. Loaded once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ._common import digest
from .base import Task
from .cnn import make_cnn_classification
from .mlp import make_mlp_classification

N_TEST = 397  # 1400 train / 397 test
SPLIT_SEED = 0


@functools.cache
def _raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels uint8 [1797, 64] in 0..16, labels uint8, split permutation) as loaded."""
    from sklearn.datasets import load_digits  # heavy import, only when a digits task is built

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    return np.asarray(x, np.uint8), np.asarray(y, np.uint8), perm


@functools.cache
def load_digits_splits() -> dict[str, np.ndarray]:
    """The standardized train/test splits (float32 inputs [n, 64], int32 labels)."""
    x, y, perm = _raw()
    x, y = x[perm].astype(np.float64) / 16.0, y[perm].astype(np.int32)
    x_train, x_test = x[N_TEST:], x[:N_TEST]
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    out = {"x_train": (x_train - mean) / std, "y_train": y[N_TEST:],
           "x_test": (x_test - mean) / std, "y_test": y[:N_TEST]}
    out = {k: v.astype(np.float32 if k.startswith("x") else np.int32) for k, v in out.items()}
    for v in out.values():
        v.setflags(write=False)
    return out


def data_digest() -> str:
    """Digest of the raw integer data and the split (exact, so equal on every machine)."""
    return digest(*_raw())


def _data_config() -> dict:
    data = load_digits_splits()
    return {"data": "sklearn.load_digits", "n_train": int(len(data["y_train"])),
            "n_test": int(len(data["y_test"])), "split_seed": SPLIT_SEED,
            "data_digest": data_digest()}


def make_digits(name: str, hidden: Sequence[int] = (64,), steps: int = 200,
                batch_size: int = 128, activation: str = "relu") -> Task:
    """An MLP on the digits (cross-entropy; ``eval_loss`` on the test split).

    Args:
      name: task name.
      hidden: hidden-layer widths.
      steps: default budget.
      batch_size: images per batch.
      activation: hidden activation.

    Returns:
      the Task.
    """
    return make_mlp_classification(name, "digits", load_digits_splits(), hidden, steps,
                                   batch_size, activation, _data_config())


def make_digits_cnn(name: str, channels: Sequence[int] = (16, 16), kernel: int = 5,
                    stride: int = 2, steps: int = 200, batch_size: int = 128) -> Task:
    """A strided 1-D CNN (``tasks.cnn``) over the 64 pixels of each digit in raster order: the
    model family of the held-out MNIST-1D CNN on data no held-out task reads.

    Args:
      name: task name.
      channels: output channels of each convolution.
      kernel: convolution width.
      stride: stride of every convolution.
      steps: default budget.
      batch_size: images per batch.

    Returns:
      the Task.
    """
    return make_cnn_classification(name, "digits", load_digits_splits(), channels, kernel,
                                   stride, steps, batch_size, _data_config())
