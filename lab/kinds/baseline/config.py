"""The ``rule`` section of ``kind: baseline`` configs (its ``search`` section is the core's ES
section, ``lab.core.es.SearchConfig``)."""

from __future__ import annotations

import dataclasses
import inspect

from lab.core.optimizers import BASELINES, is_baseline, optax_optimizer_names, spec_for
from lab.core.schema import Scalar, field
from lab.names import hint


@dataclasses.dataclass(frozen=True)
class BaselineRuleConfig:
    """The ``rule`` section for ``kind: baseline``: an optax optimizer whose genome is searched."""

    # a BASELINES key, or any optax / optax.contrib optimizer (its learning rate searched)
    name: str = field("adam", choices=lambda: [*BASELINES, *optax_optimizer_names()],
                      what="baseline")
    lr: float = field(1.0, gt=0)  # outer learning-rate multiplier
    init: dict[str, float] = field({})  # initial hyperparameters by optax keyword: {b1: 0.9}
    fixed: dict[str, Scalar] = field({})  # static optax keyword arguments: {nesterov: true}

    def problems(self) -> list[tuple[str, str]]:
        """(relative key, message) for entries that the chosen baseline does not accept."""
        spec, out = spec_for(self.name) if is_baseline(self.name) else None, []
        searchable = getattr(spec, "searchable", None)
        for key, value in self.init.items() if searchable is not None else ():
            how = searchable.get(key, (None, None))[1]
            if key not in searchable:
                out.append((f"init.{key}", f"baseline {self.name!r} does not search {key!r}"
                            + hint(key, searchable)))
            elif (how == "log" and not value > 0) or (how == "log1m" and not 0 < value < 1):
                bound = "> 0" if how == "log" else "in (0, 1)"
                out.append((f"init.{key}", f"must be {bound}, got {value}"))
        factory = getattr(spec, "factory", None)
        valid = list(inspect.signature(factory).parameters) if factory else []
        for key in [k for k in self.fixed if k not in valid] if factory else ():
            out.append((f"fixed.{key}", f"optax.{factory.__name__} has no keyword {key!r}"
                        + hint(key, valid)))
        return out
