"""Helpers shared by the task families: packaged data, digests, placeholder batches."""

from __future__ import annotations

import hashlib
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np


def data_file(name: str):
    """The packaged data file ``tasks/data/<name>`` as an importlib.resources Traversable."""
    return resources.files(__package__).joinpath("data", name)


def load_npz(name: str) -> dict[str, np.ndarray]:
    """Loads ``tasks/data/<name>`` (a ``.npz``) without pickle into a dict of numpy arrays.

    Args:
      name: file name inside ``tasks/data``.

    Returns:
      every member of the archive, loaded into memory.
    """
    with data_file(name).open("rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def load_text(name: str) -> str:
    """Reads the packaged ASCII text file ``tasks/data/<name>``."""
    return data_file(name).read_text(encoding="ascii")


def digest(*arrays: np.ndarray) -> str:
    """A short content hash (16 hex digits) of arrays: dtype, shape and bytes of each."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def no_batch(key: jax.Array, step: jax.Array) -> jax.Array:
    """The batch of a deterministic task: a float32 zero scalar (key and step unused)."""
    del key, step
    return jnp.zeros((), jnp.float32)
