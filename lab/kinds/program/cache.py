"""The program search's functional-equivalence cache (FEC): symbolic hash -> evaluation key, and
key -> the scores of its evaluations, mirrored in the store.

A key's fitness is the mean of its latest ``max_evals`` scores (noisy fitness averaged over runs
on fresh data); one the hurdle cut stands at the fitness the hurdle gave it.

References: Real et al. 2020, AutoML-Zero (arXiv 2003.03384: FEC); Gillard et al. 2023, "Unified
Functional Hashing" (arXiv 2302.05433).
"""

from __future__ import annotations

import numpy as np

from lab.core.fitness import CLIP


class FunctionCache:
    """Symbolic hash -> evaluation key, and key -> scores of its evaluations (mirrored in the
    store, whose rows hold one evaluation each, in the context of its repeat index)."""

    def __init__(self, store, contexts, max_evals: int):
        self.store, self.contexts, self.max_evals = store, contexts, max_evals
        self.symbolic: dict[str, tuple[str, np.ndarray]] = {}
        self.fingerprints: dict[str, np.ndarray] = {}  # evaluation key -> fingerprint
        self.scores: dict[str, list[float]] = {}
        self.metrics: dict[str, dict] = {}
        self.failed: dict[str, float] = {}  # cut by the hurdle -> the fitness it stands at
        self.as_of: tuple[str, int] | None = None  # (run, generation) the store is read as of

    def load(self, keys: list[str], stage: str) -> None:
        """Fills the scores of ``keys`` not seen in this process from the store."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.scores]
        if not todo:
            return
        for j in range(self.max_evals):
            rows = self.store.lookup(todo, self.contexts(stage, j), self.as_of)
            for k in todo:
                if k in rows:
                    self.scores.setdefault(k, []).append(float(rows[k]["fitness"]))
                    self.metrics.setdefault(k, rows[k]["metrics"])

    def load_metrics(self, keys: list[str], stage: str) -> None:
        """Metrics (the chosen lr multiplier) of ``keys`` that have none here, from the store."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.metrics]
        if todo:
            for k, row in self.store.lookup(todo, self.contexts(stage, 0), self.as_of).items():
                self.metrics[k] = row["metrics"]

    def fitness(self, key: str) -> float:
        if key in self.failed:
            return self.failed[key]
        runs = self.scores.get(key) or [CLIP]
        return float(np.mean(runs[-self.max_evals:]))
