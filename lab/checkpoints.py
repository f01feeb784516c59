"""Search-state checkpoints with orbax: synchronous, committed before the store's generation row
that names them, so a resumed run restarts from a generation that both have."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Checkpoints:
    """Saves and restores the search state of one run under ``<run dir>/checkpoints/``."""

    def __init__(self, folder: Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.folder = Path(folder).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False)
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

    def restore(self, generation: int, like: Any) -> Any:
        return self.manager.restore(generation, args=self._ocp.args.StandardRestore(like))

    def close(self) -> None:
        self.manager.close()
