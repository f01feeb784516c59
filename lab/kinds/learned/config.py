"""The ``rule`` and ``search`` sections of ``kind: learned`` configs."""

from __future__ import annotations

import dataclasses

from lab.core.es import SearchConfig
from lab.core.schema import field
from lab.kinds.learned.rule import Features, artifact_genome
from lab.kinds.learned.unroll import META_LOSSES, META_REFERENCES

TASK_FITNESS = ("mean", "ranks")  # search.task_fitness
VALIDATE_BY = ("mean", "worst")  # search.validate_by

INITS = ("adam", "random")  # rule.init's named starts (anything else: an artifact folder)


@dataclasses.dataclass(frozen=True)
class LearnedRuleConfig:
    """The ``rule`` section for ``kind: learned``: the learned optimizer's features and network
    (``lab.kinds.learned.rule.Features``) and where its weights start."""

    hidden: int = field(16, ge=1)  # width of each hidden layer
    depth: int = field(2, ge=0)  # hidden layers
    momenta: tuple[float, ...] = field((0.5, 0.9, 0.99, 0.999), ge=0, lt=1, nonempty=True)
    rms: float = field(0.999, ge=0, lt=1)  # decay of the second moments
    factored: bool = True  # Adafactor row/column second moments for matrices
    scales: bool = True  # per-tensor log RMS(p) and log RMS(g) features
    taus: tuple[float, ...] = field((1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0), gt=0)
    step: float = field(1e-3, gt=0)  # initial step multiplier exp(log_step)
    exp_mult: float = field(1e-3, ge=0)  # step = d * exp(exp_mult * m) * exp(log_step)
    # "adam": the direction's skip weight on Adam's direction starts at 1 (the rule starts as
    # Adam at ``step``); "random": every skip starts at 0; else the folder of a learned
    # artifact (``discovered/NAME``) of the same features, whose weights it starts from
    init: str = "adam"
    init_seed: int = 0  # PRNG seed of the initial weights
    lr: float = field(1.0, gt=0)  # outer learning rate (Ctx.lr)

    def problems(self) -> list[tuple[str, str]]:
        if self.init in INITS:
            return []
        try:
            artifact_genome(self.init, self.features())
        except ValueError as e:
            return [("init", str(e))]
        return []

    def features(self):
        return Features(self.hidden, self.depth, self.momenta, self.rms, self.factored,
                        self.scales, self.taus, self.step, self.exp_mult)


@dataclasses.dataclass(frozen=True)
class LearnedSearchConfig(SearchConfig):
    """The ``search`` section for ``kind: learned``: ES over the network's weights, scored on
    truncated unrolls of the suite's tasks.

    References: Metz et al. 2019 (arXiv 1810.10180); Vicol et al. 2021 (arXiv 2112.13835).
    """

    population: int = field(32, ge=2)
    generations: int = field(100, ge=1)
    sigma: float = field(0.01, gt=0)  # perturbation of every weight
    # 0 (Open_ES, whole runs: unroll >= horizon_max, not persistent): a random search around
    # the start, the control at equal compute; its answer is the best of the output.top_k best
    # members, re-scored on the fixed evaluation seeds
    lr: float = field(0.01, ge=0)
    unroll: int = field(20, ge=1)  # inner steps per truncation (static)
    horizon_min: int = field(100, ge=1)  # inner-run horizons in steps, log-uniform in
    horizon_max: int = field(1000, ge=1)  # [horizon_min, horizon_max]; a dynamic input
    meta_loss: str = field("mean_loss", choices=lambda: META_LOSSES, what="meta_loss")
    persistent: bool = False  # PES: accumulated perturbations per member, reset with its run
    validate_every: int = field(10, ge=0)  # the ES mean on full runs (fixed seeds); 0: at end
    # > 1: validation (and the run's answer) is the mean of the full-run scores at 1x and at
    # this multiple of every task's horizon, so the answer is not chosen at the proxy's length
    validate_scale: int = field(1, ge=1)
    # how the two scales' scores make one validation score: "mean", their mean; "worst", the
    # larger (the worse against tuned Adam), so the answer is the one that does best at its
    # weaker horizon, for a goal of beating tuned Adam at both
    validate_by: str = field("mean", choices=lambda: VALIDATE_BY, what="validate_by")
    # the meta-loss's reference: "fixed", tuned Adam's final loss at each task's default steps;
    # "horizon", tuned Adam's at the inner run's step count (log-log between the 1x and the
    # validate_scale x references), so a long run is not clipped against the 1x loss
    meta_reference: str = field("fixed", choices=lambda: META_REFERENCES, what="meta_reference")
    # what the ES is told per member: "mean", its meta-losses averaged over the tasks; "ranks",
    # each task's meta-losses replaced by their centered ranks over the population, then
    # averaged, so every task's ordering of the members counts alike, however wide the spread
    # of its losses (a clipped Rosenbrock's +-5 against an MNIST-1D net's few hundredths)
    task_fitness: str = field("mean", choices=lambda: TASK_FITNESS, what="task_fitness")

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.meta_reference == "horizon" and self.validate_scale < 2:
            out.append(("meta_reference", "horizon interpolates between the 1x and the "
                                          "validate_scale x references: set validate_scale "
                                          "to 2 or more"))
        if self.validate_by != "mean" and self.validate_scale < 2:
            out.append(("validate_by", f"{self.validate_by} combines the 1x and the "
                                       f"validate_scale x scores: set validate_scale to 2 "
                                       f"or more"))
        if self.horizon_max < self.horizon_min:
            out.append(("horizon_max", f"{self.horizon_max} is below horizon_min "
                                       f"{self.horizon_min}"))
        if self.horizon_max < self.unroll:
            out.append(("horizon_max", f"{self.horizon_max} is shorter than one unroll "
                                       f"({self.unroll} steps)"))
        if self.lr == 0 and (self.persistent or self.unroll < self.horizon_max):
            out.append(("lr", f"lr 0 is a random search: its members must be scored on whole "
                              f"runs (unroll >= horizon_max, persistent false), got unroll "
                              f"{self.unroll}, horizon_max {self.horizon_max}, persistent "
                              f"{str(self.persistent).lower()}"))
        if self.persistent and self.strategy != "Open_ES":
            out.append(("persistent", f"persistent ES estimates its gradient from accumulated "
                                      f"perturbations, which needs Open_ES, not "
                                      f"{self.strategy}"))
        return out
