"""Search-state checkpoints with orbax: synchronous, committed before the store's generation row
that names them, so a resumed run restarts from a generation that both have.

A state is a pytree of arrays (orbax's ``StandardSave``: no strings, no Python objects, no
zero-size arrays). Host-side state that is not arrays goes through the helpers below: strings as
fixed-width bytes, a numpy ``Generator`` as its 128-bit words.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


class Checkpoints:
    """Saves and restores the search state of one run under ``<run dir>/checkpoints/``.

    Over several processes only process 0 makes one (orbax's ``active_processes={0}``): it saves
    the state as host arrays, which every process can rebuild its part of."""

    def __init__(self, folder: Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        alone = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False, create=False,
                                               multiprocessing_options=alone)
        self.manager = ocp.CheckpointManager(self.folder, options=options)

    def save(self, generation: int, state: Any) -> str:
        """Writes the state after ``generation``; returns the step folder's path."""
        saved = self.manager.save(generation, args=self._ocp.args.StandardSave(state),
                                  force=True)
        self.manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"{self.folder}: checkpoint of generation {generation} not written")
        return str(self.folder / str(generation))

    def drop_after(self, generation: int) -> None:
        """Deletes checkpoints newer than ``generation`` (saved, but never named by the store)."""
        for step in self.manager.all_steps():
            if step > generation:
                self.manager.delete(step)

    def latest(self, at_most: int | None = None) -> int | None:
        steps = sorted(s for s in self.manager.all_steps() if at_most is None or s <= at_most)
        return steps[-1] if steps else None

    def resume_step(self, recorded: Iterable[int]) -> int | None:
        """The generation to resume after: the newest checkpoint at or before the last of
        ``recorded`` (the generations whose store row names a checkpoint), or None. Newer
        checkpoints, written but never committed to the store, are deleted."""
        recorded = list(recorded)
        step = self.latest(at_most=max(recorded)) if recorded else None
        self.drop_after(-1 if step is None else step)
        return step

    def restore(self, generation: int, like: Any = None) -> Any:
        """The state saved after ``generation``: with the structure, shapes and dtypes of
        ``like``, or without it (None) as the saved tree of numpy arrays, shapes as saved."""
        return self.manager.restore(generation, args=self._ocp.args.StandardRestore(like))

    def close(self) -> None:
        self.manager.close()


def strings_to_array(strings: list[str]) -> np.ndarray:
    """ASCII strings as ``[n, width] uint8`` (NUL-padded to the longest; ``n`` >= 1)."""
    return np.asarray([s.encode("ascii") for s in strings], "S").view(np.uint8).reshape(
        len(strings), -1)


def array_to_strings(array: np.ndarray) -> list[str]:
    """The inverse of ``strings_to_array``."""
    array = np.ascontiguousarray(array, np.uint8)
    return [b.decode("ascii") for b in array.view(f"S{array.shape[1]}")[:, 0]]


_WORD = (1 << 64) - 1


def generator_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A PCG64 ``Generator``'s state as arrays (its 128-bit state and increment as two uint64
    words each), for ``set_generator_state``."""
    s = rng.bit_generator.state
    if s["bit_generator"] != "PCG64":
        raise ValueError(f"cannot checkpoint a {s['bit_generator']} generator (PCG64 only)")
    words = lambda x: np.asarray([x >> 64, x & _WORD], np.uint64)  # noqa: E731
    return {"state": words(s["state"]["state"]), "inc": words(s["state"]["inc"]),
            "has_uint32": np.asarray(s["has_uint32"], np.int64),
            "uinteger": np.asarray(s["uinteger"], np.int64)}


def set_generator_state(rng: np.random.Generator, tree: dict[str, np.ndarray]) -> None:
    """Puts ``rng`` where ``generator_state`` found it."""
    value = lambda w: int(w[0]) << 64 | int(w[1])  # noqa: E731
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": value(tree["state"]), "inc": value(tree["inc"])},
        "has_uint32": int(tree["has_uint32"]), "uinteger": int(tree["uinteger"])}
