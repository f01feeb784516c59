"""Kind ``random_search``: random search over an optax optimizer's hyperparameters.

A kind from outside the lab's tree: this package registers one ``lab.core.kind.Kind`` through
the entry point group ``lab.kinds`` (see ``pyproject.toml``), and ``lab launch``, ``inspect``,
``replay`` and ``export`` run it with no edit inside ``lab/``.

Each generation draws ``search.population`` candidates uniformly in the optimizer's genome
encoding (``lab.core.optimizers``: ``log x`` for positive values, ``log(1 - x)`` for decay rates,
so log-uniform in ``x`` or in ``1 - x``) between ``rule.low`` and ``rule.high``; every candidate
of a generation trains on the same data (common random numbers), candidates the cache knows are
not scored again, and the best so far is kept. The draws depend only on ``(search.seed,
generation)``, so a resumed run retraces an uninterrupted one exactly.

References: Bergstra & Bengio 2012, "Random Search for Hyper-Parameter Optimization" (JMLR 13).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from lab.core.conformance import update_rule_case
from lab.core.hashing import genome_digest
from lab.core.kind import Conformance, LaunchCase, register
from lab.core.loop import AfterSearch, Finalist, Step, candidate_row, evaluation_row
from lab.core.optimizers import BASELINES, baseline_from_target, make_baseline
from lab.core.rule_kind import update_rule_kind
from lab.core.schema import Scalar, field
from lab.treeio import tree_from_npz

NAME = "random_search"
SMOKE = Path(__file__).resolve().parent.parent / "random_search.yaml"


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """The ``rule`` section: the optimizer and the box its hyperparameters are drawn from."""

    optimizer: str = field("adam", choices=lambda: BASELINES, what="optimizer")
    low: dict[str, float] = field({})  # optax keyword -> lower bound (default: the default / 10)
    high: dict[str, float] = field({})  # optax keyword -> upper bound (default: default x 10)
    fixed: dict[str, Scalar] = field({})  # static optax keyword arguments
    lr: float = field(1.0, gt=0)  # outer learning rate (Ctx.lr)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        searchable = BASELINES[self.optimizer].searchable if self.optimizer in BASELINES else {}
        for side in ("low", "high"):
            for key in getattr(self, side):
                if key not in searchable:
                    out.append((f"{side}.{key}", f"{self.optimizer} has no searchable "
                                                 f"hyperparameter {key!r} (searchable: "
                                                 f"{', '.join(searchable)})"))
        if not self.low and not self.high:
            out.append(("low", "give the box: at least one hyperparameter in low or high"))
        if not out and searchable:
            try:
                bounds(self)
            except ValueError as e:
                out.append(("low", str(e)))
        return out


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The ``search`` section."""

    strategy: str = field("random", choices=lambda: ("random",), what="strategy")
    population: int = field(16, ge=1)  # candidates drawn per generation
    generations: int = field(5, ge=1)
    seed: int = 0


def bounds(rule_cfg: RuleConfig) -> dict[str, tuple[float, float]]:
    """Encoded (genome-space) bounds per searchable hyperparameter: ``low``/``high`` where the
    config gives them, else a decade either side of optax's default (decay rates: of 1 - x)."""
    spec = BASELINES[rule_cfg.optimizer]
    out = {}
    for key, (default, how) in spec.searchable.items():
        if key not in rule_cfg.low and key not in rule_cfg.high:
            continue
        if how == "log":
            lo, hi = rule_cfg.low.get(key, default / 10), rule_cfg.high.get(key, default * 10)
        else:
            lo = rule_cfg.low.get(key, 1 - (1 - default) * 10)
            hi = rule_cfg.high.get(key, 1 - (1 - default) / 10)
        a, b = (float(make_baseline(rule_cfg.optimizer, {key: v}).genome[key]) for v in (lo, hi))
        if not a < b if how == "log" else not b < a:
            raise ValueError(f"{key}: low {lo} must be below high {hi}")
        out[key] = (min(a, b), max(a, b))
    return out


def make_rule(cfg):
    return make_baseline(cfg.rule.optimizer, dict(cfg.rule.fixed), NAME)


def rule_from_name(name: str):
    return baseline_from_target(name, NAME)


class RandomSearch:
    """The kind's driver in the lab's generation loop (``lab.core.loop.Driver``)."""

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        self.rule, self.scorer, self.store = setup.rule, setup.scorer, setup.store
        self.box = bounds(cfg.rule)
        self.final_rows = cfg.search.population
        self.best = {"fitness": np.asarray(np.inf, np.float64),
                     "genome": jax.tree.map(np.asarray, self.rule.genome)}

    def draw(self, g: int) -> list[dict]:
        """Generation ``g``'s candidates: uniform in the encoded box, from ``(seed, g)`` only."""
        rng = np.random.default_rng([self.cfg.search.seed, g])
        out = []
        for _ in range(self.cfg.search.population):
            genome = {k: np.asarray(v, np.float32) for k, v in self.rule.genome.items()}
            for key, (a, b) in self.box.items():
                genome[key] = np.asarray(rng.uniform(a, b), np.float32)
            out.append(genome)
        return out

    def state(self, generation: int):
        return self.best

    def template(self):
        return self.best

    def restore(self, tree, first: int) -> None:
        self.best = tree

    def step(self, g: int) -> Step:
        start = time.perf_counter()
        host = self.draw(g)
        hashes = [genome_digest(self.rule, x) for x in host]
        slots = np.zeros(len(host), np.int32)  # one set of task keys: common random numbers
        ctx = self.scorer.context.for_generation(g, slots, self.cfg.search.seed).key()
        cached = self.store.lookup(sorted(set(hashes)), ctx)
        misses = [h for h in dict.fromkeys(hashes) if h not in cached]
        evaluations = []
        if misses:
            batch = jax.tree.map(lambda *xs: np.stack(xs), *host)
            result = self.scorer.score(batch, generation=g, slots=slots,
                                       stream=self.cfg.search.seed)
            first = {h: i for i, h in reversed(list(enumerate(hashes)))}
            evaluations = [evaluation_row(h, ctx, self.scorer, result, first[h]) for h in misses]
        fresh = {e["hash"]: e["fitness"] for e in evaluations}
        fitness = np.array([fresh[h] if h in fresh else cached[h]["fitness"] for h in hashes])
        i = int(np.argmin(fitness))
        if fitness[i] < self.best["fitness"]:
            self.best = {"fitness": np.asarray(fitness[i], np.float64), "genome": host[i]}
        hits = [h for h in hashes if h in cached]
        seconds = time.perf_counter() - start
        stats = {"best": float(fitness.min()), "mean": float(fitness.mean()),
                 "hits": len(hits), "misses": len(misses), "hit_rate": len(hits) / len(hashes),
                 "evaluated": len(misses), "seconds": seconds,
                 "candidates_per_s": len(hashes) / max(seconds, 1e-9)}
        unique = {h: j for j, h in enumerate(hashes)}
        return Step(stats, [candidate_row(self.rule, h, host[j]) for h, j in unique.items()],
                    evaluations, [{"hash": h, "fitness": float(fitness[j]), "generation": g}
                                  for j, h in enumerate(hashes)], hits, {}, ctx)

    def finalists(self) -> dict[str, Finalist]:
        """The best draw so far and the run's ``output.top_k`` best members."""
        best = jax.tree.map(np.asarray, self.best["genome"])
        out = {genome_digest(self.rule, best): best}
        for row in self.store.best_members(self.setup.run_id, k=self.cfg.output.top_k):
            out.setdefault(row["hash"], tree_from_npz(row["genome"]))
        return {h: Finalist(g, candidate_row(self.rule, h, g)) for h, g in out.items()}

    def after_search(self, finals, scores) -> AfterSearch:
        return AfterSearch()


def conformance() -> Conformance:
    lr = BASELINES["adam"].searchable["learning_rate"][0]
    cases = [update_rule_case(f"{NAME}:adam", make_baseline("adam", kind=NAME),
                              [make_baseline("adam", {"learning_rate": lr * s}, NAME).genome
                               for s in (0.3, 1.0, 3.0)])]
    return Conformance(cases, LaunchCase(str(SMOKE), ("search.population=4",
                                                      "search.generations=3",
                                                      "output.top_k=2")))


KIND = register(update_rule_kind(
    name=NAME,
    summary="random search over an optax optimizer's hyperparameters (a plugin kind)",
    rule_config=RuleConfig,
    search_config=SearchConfig,
    make_rule=make_rule,
    rule_from_name=rule_from_name,
    make_driver=RandomSearch,
    conformance=conformance,
))
