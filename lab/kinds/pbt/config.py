"""The ``rule`` and ``search`` sections of ``kind: pbt`` configs. The ``rule`` section is the
baseline kind's (the optax optimizer whose hyperparameters the population tunes, ``init`` the
centre of the initial draws) or, with ``program``, an update program whose constants it tunes."""

from __future__ import annotations

import dataclasses

from lab.core.optimizers import BASELINES
from lab.core.schema import field
from lab.kinds.baseline.config import BaselineRuleConfig
from lab.kinds.pbt.base import ALL_CONSTANTS, load_program, tunable_constants
from lab.names import hint


@dataclasses.dataclass(frozen=True)
class PBTRuleConfig(BaselineRuleConfig):
    """The ``rule`` section for ``kind: pbt``: an optax optimizer (``name``, ``init``, ``fixed``)
    or an update program (``program``: an update or joint seed name, or a ``.prog`` file, whose
    ``lr`` multiplier and constants are the hyperparameters; ``lr`` stays the outer rate)."""

    program: str = ""

    def problems(self) -> list[tuple[str, str]]:
        if not self.program:
            return super().problems()
        try:
            load_program(self.program)
        except ValueError as e:
            return [("program", str(e))]
        return [(key, "an optax keyword: a program's hyperparameters are its constants")
                for key in ("init", "fixed") if getattr(self, key)]


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    """The ``search`` section for ``kind: pbt``: population-based training (Jaderberg et al.
    2017, arXiv 1711.09846). Every member trains every task of the suite; the run is cut into
    ``generations`` intervals (``ready``: each task's steps / generations); after each but the
    last, the bottom ``truncation`` of the members by that interval's loss copy a member of the
    top ``truncation`` (parameters, optimizer state, data stream) and explore its
    hyperparameters."""

    strategy: str = field("pbt", choices=lambda: ("pbt",), what="population-based strategy")
    population: int = field(16, ge=2)  # members trained together
    generations: int = field(10, ge=2)  # intervals of the run (exploit and explore between)
    truncation: float = field(0.25, gt=0, le=0.5)  # fraction copied from, and copying
    perturb: tuple[float, ...] = field((0.8, 1.2), gt=0, nonempty=True)  # explore factors
    resample: float = field(0.0, ge=0, le=1)  # chance a hyperparameter is drawn afresh instead
    spread: float = field(10.0, gt=1)  # initial draws and bounds: init / spread .. init x spread
    # keywords tuned (others held); a program's: lr, kI (the constant of statement xI) or
    # constants (every nonzero one)
    hparams: tuple[str, ...] = field(("learning_rate",))
    seed: int = 0

    def problems(self) -> list[tuple[str, str]]:
        if int(self.truncation * self.population) < 1:
            return [("truncation", f"{self.truncation} of {self.population} members is none: "
                                   "raise it or the population")]
        return []


def hparam_problems(rule: PBTRuleConfig, search: PBTConfig) -> list[tuple[str, str]]:
    """``search.hparams`` must name hyperparameters the optimizer (or program) has."""
    if rule.program:
        try:
            have = ["lr", *tunable_constants(load_program(rule.program)), ALL_CONSTANTS]
        except ValueError:
            return []  # the rule section names it
        what = f"the program {rule.program}"
    else:
        spec = BASELINES.get(rule.name)
        if spec is None:
            return []
        have, what = list(spec.searchable), rule.name
    out = []
    for i, key in enumerate(search.hparams):
        if key not in have:
            out.append((f"search.hparams[{i}]", f"{what} has no tuned hyperparameter "
                        f"{key!r}{hint(key, have)}"))
    if not search.hparams:
        out.append(("search.hparams", "name at least one hyperparameter to tune"))
    return out
