"""Generates ``tasks/data/mnist1d.npz`` once, offline, with the ``mnist1d`` package's generator.

MNIST-1D (Greydanus & Kobak, 2020; https://github.com/greydanus/mnist1d, Apache-2.0) is built
from ten hand-written 1-D templates by padding, shear, translation, correlated and iid noise and
interpolation to 40 points. This script calls only the package's pure generator
(``mnist1d.data.make_dataset`` with ``get_dataset_args``); it never calls ``get_dataset``, which
downloads and unpickles.

Run it in a scratch virtualenv (the lab does not depend on ``mnist1d``)::

    python3 -m venv /tmp/m1d && /tmp/m1d/bin/pip install mnist1d
    /tmp/m1d/bin/python tasks/data/make_mnist1d.py

The output holds ``x_train`` [4000, 40] float16, ``y_train`` [4000] uint8, ``x_test`` [1000, 40]
float16, ``y_test`` [1000] uint8, and ``seed`` (the generator's seed), readable with
``np.load(path, allow_pickle=False)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 42
NUM_SAMPLES = 5000
TRAIN_SPLIT = 0.8


def generate(seed: int = SEED) -> dict[str, np.ndarray]:
    """Builds the data set with the package's default transform arguments and a fixed seed."""
    from mnist1d.data import get_dataset_args, make_dataset  # scratch-venv only

    args = get_dataset_args(as_dict=False)
    args.seed = seed
    args.num_samples = NUM_SAMPLES
    args.train_split = TRAIN_SPLIT
    data = make_dataset(args)
    return {
        "x_train": np.asarray(data["x"], np.float16),
        "y_train": np.asarray(data["y"], np.uint8),
        "x_test": np.asarray(data["x_test"], np.float16),
        "y_test": np.asarray(data["y_test"], np.uint8),
        "seed": np.asarray(seed, np.int64),
    }


def main() -> None:
    """Writes the compressed ``.npz`` beside this script (or to ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("mnist1d.npz"))
    parser.add_argument("--seed", type=int, default=SEED)
    out = parser.parse_args()
    arrays = generate(out.seed)
    np.savez_compressed(out.out, **arrays)
    sizes = {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}
    print(f"wrote {out.out} ({out.out.stat().st_size} bytes): {sizes}")


if __name__ == "__main__":
    main()
