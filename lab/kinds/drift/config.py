"""The ``rule`` and ``search`` sections of ``kind: drift`` configs."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from lab.core.es import SearchConfig
from lab.core.schema import field
from lab.kinds.drift.objectives import LPOSpec, artifact_genome


@dataclasses.dataclass(frozen=True)
class DriftRuleConfig:
    """The ``rule`` section for ``kind: drift``: the drift family PPO's objective is searched in
    (``lab.kinds.drift.objectives``): ``lpo`` (a bias-free tanh network over 8 features of r and A;
    TA-LPO with ``progress``), or the closed forms ``ppo_clip`` (genome: eps) and ``dpo``
    (genome: alpha, beta)."""

    family: str = field("lpo", choices=lambda: ("lpo", "ppo_clip", "dpo"), what="drift family")
    hidden: int = field(128, ge=1)  # lpo: tanh units (LPO's 128: 1,152 weights)
    ppo_init: bool = True  # lpo: the network is a residual on PPO-clip and starts as PPO
    progress: bool = False  # lpo: TA-LPO, the features times training progress n/N as well
    init_seed: int = 0  # lpo: PRNG seed of the first layer's initial weights
    # "" (the family's own start), or the folder of a drift artifact (``discovered/NAME``) of
    # the same family, whose genome the search starts from
    init: str = ""
    lr: float = field(1.0, gt=0)  # unused by RL (each environment has its own PPO settings)

    def problems(self) -> list[tuple[str, str]]:
        if not self.init:
            return []
        try:
            artifact_genome(self.init, self.family_name())
        except ValueError as e:
            return [("init", str(e))]
        return []

    def family_name(self) -> str:
        if self.family != "lpo":
            return self.family
        return LPOSpec(self.hidden, self.ppo_init, self.progress, self.init_seed).name


def _rl_fitness() -> Collection[str]:
    return ("ppo_normalized", "final_return", "mean_return")  # lab.kinds.drift.scoring.FITNESS


@dataclasses.dataclass(frozen=True)
class DriftSearchConfig(SearchConfig):
    """The ``search`` section for ``kind: drift``: ES over the drift's genome, each member scored
    by whole PPO runs on the suite's environments (``lab.kinds.drift.scoring``).

    References: Lu et al. 2022 (arXiv 2210.05639); Jackson et al. 2024 (arXiv 2402.05828).
    """

    population: int = field(16, ge=2)
    generations: int = field(50, ge=1)
    sigma: float = field(0.03, gt=0)
    lr: float = field(0.03, ge=0)  # 0 with Open_ES: random search around the start
    fitness: str = field("ppo_normalized", choices=_rl_fitness, what="RL fitness")
    # environment levels (lab.kinds.drift.curriculum): fixed = the suite's environments as
    # they are; uniform = fresh random levels each generation; regret = prioritized level replay
    curriculum: str = field("fixed", choices=lambda: ("fixed", "uniform", "regret"),
                            what="curriculum")
    replay_prob: float = field(0.5, ge=0, le=1)  # regret: chance a level slot replays
    buffer: int = field(4000, ge=1)  # regret: levels kept (GROOVE's 4000)
    temperature: float = field(0.3, gt=0)  # regret: of the rank prioritization
    staleness: float = field(0.3, ge=0, le=1)  # regret: weight of staleness in replay

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.curriculum != "fixed" and self.fitness != "ppo_normalized":
            out.append(("curriculum", f"a {self.curriculum} curriculum scores members by "
                                      f"their regret on each level: search.fitness must be "
                                      f"ppo_normalized, got {self.fitness}"))
        return out
