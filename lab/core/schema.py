"""The run config's schema: frozen dataclasses whose fields carry their checks.

``Config`` is the root. Its ``rule`` and ``search`` sections are the dataclasses of the config's
kind (``lab.core.kind.Kind.rule_config`` / ``search_config``), registered by the kind's package;
``evaluator`` and ``output`` are the core's own. ``lab.core.config`` reads YAML into them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Collection
from typing import Any

Scalar = bool | int | float | str | None


def field(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: Callable[[], Collection[str]] | None = None, what: str = "name",
          nonempty: bool = False) -> Any:
    """A dataclass field carrying its checks: bounds and a registry of valid names (looked up
    when a config is checked; for a tuple, checked on each item)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "what": what,
            "nonempty": nonempty}
    if isinstance(default, dict):  # dicts stay out of __hash__, so configs remain hashable
        return dataclasses.field(default_factory=dict, hash=False, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _suites() -> Collection[str]:
    return importlib.import_module("tasks").SUITES


def _kinds() -> Collection[str]:
    from lab.core.kind import registry
    return registry()


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """The ``evaluator`` section: chunking, memory and devices."""

    chunk: int = field(0, ge=0)  # candidates per compiled call; 0: the whole population
    memory_mb: float = field(0.0, ge=0)  # device memory bound per call; 0: no bound
    devices: int = field(0, ge=0)  # devices in the mesh; 0: all
    unroll: int = field(1, ge=1)  # lax.scan unroll of the inner loop

    def problems(self) -> list[tuple[str, str]]:
        if self.devices > 1:
            import jax
            have = jax.device_count()
            if self.devices > have:
                return [("devices", f"{self.devices} devices asked for, JAX sees {have}")]
        return []


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """The ``output`` section: where and what a run writes."""

    checkpoint_every: int = field(0, ge=0)  # generations between checkpoints; 0: never
    plots: bool = True  # fitness over generations as runs/<id>/fitness.png
    top_k: int = field(5, ge=1)  # finalists re-scored on the fixed evaluation seeds


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run config; ``kind`` picks the dataclasses of ``rule`` and ``search``."""

    name: str = "run"
    kind: str = field("baseline", choices=_kinds, what="kind")
    suite: str = field("train", choices=_suites, what="suite")  # tasks.SUITES
    budget: int = field(0, ge=0)  # inner steps (RL: environment steps) per task; 0: default
    seeds: int = field(2, ge=1)
    task_seeds: dict[str, int] = field({})  # seeds on named tasks instead: {rosenbrock_4d: 8}
    rule: Any = None  # the kind's rule_config
    search: Any = None  # the kind's search_config
    evaluator: EvaluatorConfig = dataclasses.field(default_factory=EvaluatorConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def problems(self) -> list[tuple[str, str]]:
        """A kind trains on the suites of its domain (RL objectives on ``rl-...``)."""
        import tasks
        from lab.core.kind import registry
        kind = registry().get(self.kind)
        if kind is None or self.suite not in _suites():
            return []
        domain = kind.domain
        if kind.config_domain is not None and self.rule is not None:
            domain = kind.config_domain(self)
        bad = [(f"task_seeds.{k}", f"no task {k!r} in suite {self.suite!r} (its tasks: "
                                   f"{', '.join(tasks.SUITES[self.suite])})")
               for k in self.task_seeds if k not in tasks.SUITES[self.suite]]
        bad += [(f"task_seeds.{k}", "must be >= 1")
                for k, n in self.task_seeds.items() if n < 1]
        if bad:
            return bad
        if tasks.domain_of(self.suite) != domain:
            want = [s for s in _suites() if tasks.domain_of(s) == domain]
            what = f"kind {self.kind!r}" + (f" ({domain})" if domain != kind.domain else "")
            return [("suite", f"{what} cannot train on suite {self.suite!r}; "
                              f"use one of {', '.join(want)}")]
        if self.rule is None or self.search is None:
            return []
        return list(kind.config_problems(self))
