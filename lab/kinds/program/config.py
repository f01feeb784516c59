"""The ``rule`` and ``search`` sections of ``kind: program`` configs."""

from __future__ import annotations

import dataclasses

from lab.core.es import STRATEGIES
from lab.core.schema import field
from lab.kinds.program.ir import ProgramError
from lab.kinds.program.programs import load_seed, read_program, seed_names
from lab.kinds.program.signatures import SIGNATURES


def _all_seeds() -> list[str]:
    return sorted({n for sig in SIGNATURES for n in seed_names(sig)})


@dataclasses.dataclass(frozen=True)
class ProgramRuleConfig:
    """The ``rule`` section for ``kind: program``: what the programs are (their ``signature``:
    ``update`` rules on the supervised suites, ``drift`` functions, PPO objectives, on the RL
    suites, ``schedule`` programs of Adam's learning rate on the supervised suites), where the
    search starts and how long programs may grow."""

    signature: str = field("update", choices=lambda: tuple(SIGNATURES), what="signature")
    seed: str = field("adamw", choices=_all_seeds, what="seed program")  # of the signature
    file: str = ""  # a .prog file to start from instead of ``seed`` (relative to the cwd)
    max_len: int = field(20, ge=2, le=64)  # statements a program may have
    lr: float = field(1.0, gt=0)  # outer learning rate (Ctx.lr)

    def problems(self) -> list[tuple[str, str]]:
        if not self.file and self.seed not in seed_names(self.signature):
            return [("seed", f"{self.seed!r} is no {self.signature} seed program ("
                             f"{self.signature} seeds: {', '.join(seed_names(self.signature))})")]
        if self.file:
            try:
                p = read_program(self.file, SIGNATURES[self.signature])
            except ProgramError as e:
                return [("file", str(e))]
            if len(p) > self.max_len:
                return [("file", f"{self.file} has {len(p)} statements, more than "
                                 f"max_len {self.max_len}")]
        elif len(seed := load_seed(self.seed, self.signature)) > self.max_len:
            return [("max_len", f"the seed {self.seed} has {len(seed)} statements, more than "
                                f"max_len {self.max_len}")]
        return []


@dataclasses.dataclass(frozen=True)
class ConstantsESConfig:
    """``search.es``: evosax on the constants of the best structures (0 structures: off)."""

    top: int = field(0, ge=0)  # structures tuned
    strategy: str = field("Open_ES", choices=lambda: STRATEGIES, what="strategy")
    population: int = field(8, ge=2)
    generations: int = field(5, ge=1)
    sigma: float = field(0.1, gt=0)  # perturbation of log|k|
    lr: float = field(0.05, gt=0)


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The ``search`` section for ``kind: program``: batched regularized evolution.

    References: Real et al. 2019 (arXiv 1802.01548); Chen et al. 2023 (arXiv 2302.06675).
    """

    strategy: str = field("regularized_evolution", choices=lambda: ("regularized_evolution",),
                           what="program search strategy")
    population: int = field(64, ge=2)  # the evolving population (1000 on an accelerator)
    children: int = field(16, ge=1)  # children per generation (B, a fixed batch)
    generations: int = field(10, ge=1)
    tournament: int = field(2, ge=1)
    seed: int = 0
    lr_grid: tuple[float, ...] = field((0.3, 1.0, 3.0), gt=0, nonempty=True)  # x ctx.lr
    # true: each task counts at its own best multiplier of the grid (the references' learning
    # rate is tuned per task), in the finalists, funnel and meta-validation too (on the same
    # grid: the multiplier a finalist carries divided out);
    # false: the multiplier best on the suite's mean counts for all
    lr_per_task: bool = False
    # true: each task's outer rate is rule.lr times tuned Adam's rate on it over their geometric
    # mean on the suite (``fitness.anchored_lrs``, at each scorer's budget): every task starts
    # near its tuned rate, and the grid's multipliers set the overall scale
    lr_anchor: bool = False
    # the suite's fitness is the mean over its tasks plus worst_task x the largest task score
    # above 0 (the task most behind the reference: tuned Adam, or PPO-clip for drift programs),
    # in the search, the ES on constants, the funnel and meta-validation alike; 0: the mean
    worst_task: float = field(0.0, ge=0)
    retries: int = field(3, ge=0)  # re-mutations while the cache knows a child's function
    # what becomes of a child whose function the run knows: "remutate", mutated again (up to
    # ``retries`` times) so that every child is new; "join" (the Lion search's and
    # AutoML-Zero's way), it joins the population at its cached fitness, unevaluated, and more
    # children are made until B take a slot of the evaluation batch (new functions, partial
    # hits, and full hits drawn by ``forget``; at most B x (1 + retries) a generation): neutral
    # mutations drift through the population and dead statements build up
    hits: str = field("remutate", choices=lambda: ("remutate", "join"), what="cache hits")
    evaluations: int = field(1, ge=1)  # evaluations averaged per function (noisy fitness)
    confirm: bool = True  # a new best-so-far is scored again on fresh data before it counts
    forget: float = field(0.0, ge=0, le=1)  # chance a full cache hit is evaluated again
    # false: no functional-equivalence cache (each child one mutation, every child scored,
    # known ones again); for measuring what the cache buys
    cache: bool = True
    hurdle: float = field(0.0, ge=0, lt=1)  # fraction cut after a short run (0: no hurdle)
    hurdle_budget: int = field(0, ge=0)  # inner steps of the short run; 0: budget / 5
    hurdle_window: int = field(256, ge=1)  # recent short-run fitnesses the quantile is over
    plateau: int = field(0, ge=0)  # generations without improvement before a restart; 0: off
    # where a plateau restart starts the population: "alternate", the start program and the best
    # so far in turn (Chen et al. 2023); "best", the best so far's genotype each time (its dead
    # statements kept, which ``hits: join`` builds on); "start", the start program each time
    restart: str = field("alternate", choices=lambda: ("alternate", "best", "start"),
                         what="restart")
    es: ConstantsESConfig = dataclasses.field(default_factory=ConstantsESConfig)
    funnel: int = field(0, ge=0)  # finalists re-scored at funnel_scale x budget
    funnel_scale: int = field(10, ge=2)
    meta_validate_every: int = field(0, ge=0)  # best-so-far at funnel_scale x budget
    # what ranks the run's finalists: "final", their score on the fixed evaluation seeds at the
    # budget (the search's proxy); "funnel", their score at funnel_scale x the budget, among the
    # funnel's finalists and the programs meta-validation scored (train-side tasks, a longer
    # horizon: against the proxy's winner's curse); "both", the mean of the two
    select: str = field("final", choices=lambda: ("final", "funnel", "both"), what="selection")
    # the finalists' scores on this many fixed evaluation seeds (0: the run's seeds); they rank
    # the run, choose the funnel's finalists and the ablation's drops; with lr_per_task each task
    # counts at its own multiplier of the search's grid, as the held-out replay tunes it
    final_seeds: int = field(0, ge=0)
    simplify: bool = True  # knock-out ablation of the best program after the search
    simplify_tolerance: float = field(0.02, ge=0)  # fitness a dropped statement may cost

    def problems(self) -> list[tuple[str, str]]:
        if self.children > self.population:
            return [("children", f"{self.children} children per generation, more than the "
                                 f"population {self.population}")]
        if self.select != "final" and not self.funnel:
            return [("select", f"select: {self.select} ranks the finalists by the funnel's "
                               "scores: set search.funnel (how many finalists it scores) above 0")]
        return []
