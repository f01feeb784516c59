"""Per-generation progress on stderr: a rich bar on a terminal, one plain line each otherwise."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lab.console import is_terminal, log, stderr
from lab.core import hosts


class GenerationProgress:
    """Shows generation, best, mean, cache hit rate and candidates/s after each generation."""

    def __init__(self, generations: int):
        self.generations = generations
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> GenerationProgress:
        if is_terminal() and hosts.is_leader():  # process 0's alone (``log`` is, too)
            self._progress = Progress(TextColumn("[bold]gen"), MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                      console=stderr(), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.generations, info="")
        return self

    def update(self, generation: int, stats: dict, best_so_far: float) -> None:
        info = (f"best {stats['best']:.4f} (so far {best_so_far:.4f})  mean {stats['mean']:.4f}  "
                f"hit rate {stats['hit_rate']:.0%}  {stats['candidates_per_s']:.1f} cand/s")
        if stats.get("diverged") is not None:
            info += f"  diverged {stats['diverged']:.0%}"
        if self._progress is not None:
            self._progress.update(self._task, completed=generation + 1, info=info)
        else:
            log(f"gen {generation + 1}/{self.generations}  {info}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
