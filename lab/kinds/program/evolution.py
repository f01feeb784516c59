"""Batched regularized evolution over programs, with a functional-equivalence cache.

Each generation: ``children`` tournaments pick parents from the population; each parent is
mutated (until valid and symbolically new); each child's evaluation key comes from its symbolic
hash when that is known, else from a batched fingerprint; children whose function the run has
met (their parent's, an earlier child's, or a sibling's) are mutated again, up to ``retries``
times, so the evaluation batch holds new functions (``search.hits: join``: they join the
population unevaluated, and more children are made until B take a slot of the batch), and a
child that breaks its signature's constraints (a drift's, checked on a grid) is mutated afresh
from its parent (``search.cache: false`` turns all of this off, to measure what it buys); keys
without enough evaluations are scored in one compiled call per task (each candidate at every
multiplier of the lr grid, the best counts), padded to a fixed batch, optionally behind a hurdle
(a short run for all, the full run for those better than a rolling quantile, both batches
padded); the children join the population and the oldest members leave. One store transaction
per generation. The signature's ``spaces`` entry says how its programs are scored, keyed and
checked.

Cache hit rate = 1 - (distinct keys evaluated / children generated); noisy fitness is averaged
over up to ``evaluations`` runs per key (each on fresh data), and a full hit is evaluated again
with probability ``forget`` (the mean then covers the latest ``evaluations`` runs).

References: Real et al. 2019, "Regularized Evolution for Image Classifier Architecture Search"
(arXiv 1802.01548); Real et al. 2020, AutoML-Zero (arXiv 2003.03384: FEC, hurdles); Gillard et al.
2023, "Unified Functional Hashing" (arXiv 2302.05433); Chen et al. 2023 (arXiv 2302.06675).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque

import numpy as np

from lab.core.fitness import CLIP, Scorer, suite_fitness
from lab.kinds.program.cache import FunctionCache
from lab.kinds.program.ir import Program, symbolic_hash
from lab.kinds.program.mutate import mutate
from lab.kinds.program.spaces import space_of

ADMISSIBLE_ROUNDS = 16  # extra rounds of re-mutation for children that break the constraints


@dataclasses.dataclass
class Member:
    """One member of the population (introns kept: the genotype, not the simplified form)."""

    program: Program
    key: str
    fitness: float
    born: int
    parent: str | None = None


class Evolution:
    """The search state and its generation step (host side; scoring goes through scorers)."""

    def __init__(self, cfg, store, run_id: str, scorer: Scorer, short: Scorer | None,
                 start: Program, space=None):
        s = cfg.search
        self.cfg, self.s, self.store, self.run_id = cfg, s, store, run_id
        self.scorer, self.short = scorer, short
        self.space = space or space_of(cfg)
        self.rule = self.space.rule
        self.length = cfg.rule.max_len + 1  # room to bake an lr multiplier into any program
        self.grid = self.space.grid
        self.full_batch = s.children if short is None else max(1, math.ceil(
            s.children * (1 - s.hurdle)))
        self.rng = np.random.default_rng(s.seed)
        self.start = start
        # scores averaged per function: up to ``evaluations``, two once a score is confirmed
        self.cache = FunctionCache(store, self.context, max(s.evaluations, 1 + s.confirm))
        self.population: deque[Member] = deque()
        self.window: deque[float] = deque(maxlen=s.hurdle_window)  # short-run fitnesses
        self.full_window: deque[float] = deque(maxlen=s.hurdle_window)  # full-run ones
        self.best: Member | None = None
        self.since_best = 0
        self.restarts = 0
        self.eval_seconds = 0.0
        self.evaluated_total = 0
        self.met: set[str] = set()  # every function this run's population has had
        self.reasons: dict[str, str] = {}  # per key: why it may not be scored ("" if it may)

    # ---- contexts and keys ------------------------------------------------------------------
    def context(self, stage: str, repeat: int) -> str:
        scorer = self.short if stage == "short" else self.scorer
        ctx = dataclasses.replace(scorer.context, generation=0, stream=self.s.seed,
                                  lr_multipliers=self.grid, repeat=repeat,
                                  lr_per_task=self.s.lr_per_task and len(self.grid) > 1)
        return ctx.key()

    def keys(self, programs: list[Program]) -> list[str]:
        """Evaluation keys: symbolic hash first, then one batched fingerprint for the rest."""
        syms = [symbolic_hash(p) for p in programs]
        todo = {}
        for p, h in zip(programs, syms, strict=True):
            if h not in self.cache.symbolic and h not in todo:
                todo[h] = p
        if todo:
            genomes = [self.space.genome(p, self.length) for p in todo.values()]
            for h, (fp, _, key) in zip(todo, self.space.keys(genomes), strict=True):
                self.cache.symbolic[h] = (key, fp)
                self.cache.fingerprints.setdefault(key, fp)
        return [self.cache.symbolic[h][0] for h in syms]

    # ---- scoring ------------------------------------------------------------------------------
    def score_programs(self, scorer: Scorer, programs: list[Program], repeats: list[int],
               batch: int, fixed: bool = False, rows_to: int | None = None,
               tuned: bool = False, baked: list[float] | None = None) -> list[dict]:
        """Scores ``programs`` at every lr multiplier (``fixed``: at 1 on the fixed seeds, or with
        ``tuned`` at every one, ``baked`` ones divided out) in one call per task, padded to
        ``batch`` (or ``rows_to``) programs: per program ``{"fitness", "diverged", "metrics"}``
        at the suite-best multiplier (the one it bakes in), or with ``search.lr_per_task`` each
        task at its own (their mean)."""
        grid = (1.0,) if fixed and not tuned else self.grid
        rows = [(i, m) for i in range(len(programs)) for m in grid]
        carried = baked if tuned and baked is not None else [1.0] * len(programs)
        genomes = [self.space.genome(programs[i], self.length, m / carried[i]) for i, m in rows]
        slots = [repeats[i] for i, _ in rows]
        size = (rows_to or batch) * len(grid if rows_to else self.grid)  # one shape: one compile
        if len(rows) > size:
            raise ValueError(f"{len(rows)} rows for a batch of {size}")
        genomes += [genomes[-1]] * (size - len(genomes))
        slots += [slots[-1]] * (size - len(slots))
        stacked = {k: np.stack([g[k] for g in genomes]) for k in genomes[0]}
        start = time.perf_counter()
        if fixed:
            result = scorer.score(stacked)
        else:
            result = scorer.score(stacked, generation=0, slots=np.asarray(slots, np.int32),
                                  stream=self.s.seed)
        self.eval_seconds += time.perf_counter() - start
        out = []
        for i in range(len(programs)):
            idx = [r for r, (j, _) in enumerate(rows) if j == i]
            best = min(idx, key=lambda r: result["fitness"][r])
            metrics, fitness = scorer.row_metrics(result, best), float(result["fitness"][best])
            if self.s.lr_per_task and len(grid) > 1:
                rm, tasks = {r: scorer.row_metrics(result, r) for r in idx}, result["tasks"]
                per = {t: min(idx, key=lambda r: m["fitness"][r]) for t, m in tasks.items()}
                metrics = {t: {**rm[r][t], "lr_multiplier": rows[r][1]} for t, r in per.items()}
                fitness = float(suite_fitness([m["fitness"] for m in metrics.values()],
                                              scorer.worst_task))
            metrics["lr_multiplier"] = rows[best][1]
            out.append({"fitness": fitness, "metrics": metrics,
                        "diverged": any(m["diverged"] for m in metrics.values()
                                        if isinstance(m, dict))})
        return out

    def evaluate(self, todo: dict[str, Program], generation: int) -> list[dict]:
        """Scores the keys in ``todo`` (each its next repeat); returns store evaluation rows."""
        rows: list[dict] = []
        if not todo:
            return rows
        keys = list(todo)
        repeats = [len(self.cache.scores.get(k, [])) for k in keys]
        if self.short is not None:
            short = []
            for at in range(0, len(keys), self.s.children):
                part = keys[at:at + self.s.children]
                short += self.score_programs(self.short, [todo[k] for k in part],
                                     repeats[at:at + len(part)], self.s.children)
            for k, j, r in zip(keys, repeats, short, strict=True):
                rows.append({"hash": k, "context": self.context("short", j), **r})
            threshold = (np.quantile(list(self.window), 1 - self.s.hurdle) if self.window
                         else math.inf)
            self.window.extend(r["fitness"] for r in short)
            ranked = sorted(range(len(keys)), key=lambda i: short[i]["fitness"])
            passed = [i for i in ranked if short[i]["fitness"] <= threshold][:self.full_batch]
            # a cut candidate keeps its short-run fitness, but never stands above the median of
            # recent full runs: the order among cut ones survives (selection still sees it)
            floor = float(np.median(self.full_window)) if self.full_window else CLIP
            for i, k in enumerate(keys):
                if i not in passed:
                    self.cache.failed[k] = max(short[i]["fitness"], floor)
                    self.cache.metrics[k] = short[i]["metrics"]
            keys = [keys[i] for i in passed]
            repeats = [repeats[i] for i in passed]
        rows += self.full(keys, todo, repeats)
        self.evaluated_total += len(todo)
        return rows

    def full(self, keys: list[str], todo: dict[str, Program], repeats: list[int]) -> list[dict]:
        """Full-budget scores of ``keys`` at their repeats, in fixed batches; store rows."""
        rows = []
        for at in range(0, len(keys), self.full_batch):
            part = keys[at:at + self.full_batch]
            scored = self.score_programs(self.scorer, [todo[k] for k in part],
                                 repeats[at:at + len(part)], self.full_batch)
            for k, j, r in zip(part, repeats[at:at + len(part)], scored, strict=True):
                rows.append({"hash": k, "context": self.context("full", j), **r})
                self.cache.failed.pop(k, None)
                self.cache.scores.setdefault(k, []).append(r["fitness"])
                self.full_window.append(r["fitness"])
                self.cache.metrics[k] = r["metrics"]
        return rows

    def confirm(self, todo: dict[str, Program]) -> list[dict]:
        """New functions whose first score beats the best so far are scored again at once, on
        fresh data (their fitness is then the mean): a lucky first score does not take over
        the population."""
        again = {k: p for k, p in todo.items() if k not in self.cache.failed
                 and len(self.cache.scores.get(k, [])) == 1
                 and self.cache.fitness(k) < self.best.fitness}
        return self.full(list(again), again, [1] * len(again)) if again else []

    # ---- the population -------------------------------------------------------------------------
    def seed_population(self) -> list[dict]:
        """The population warm-started from the start program; compiles every scoring shape
        (short and full batches) before generation 0. Returns the evaluations made."""
        key = self.keys([self.start])[0]
        self.cache.load([key], "full")
        rows = []
        if key not in self.cache.scores:
            repeat = [0]
            if self.short is not None:  # scored but not cut: the seed is the reference point
                r = self.score_programs(self.short, [self.start], repeat, self.s.children)[0]
                rows.append({"hash": key, "context": self.context("short", 0), **r})
                self.window.append(r["fitness"])
            rows += self.full([key], {key: self.start}, repeat)
        fit = self.cache.fitness(key)
        self.met.add(key)
        self.population = deque(Member(self.start, key, fit, -1) for _ in range(self.s.population))
        self.best = self.seed_member = self.population[0]
        return rows

    def tournament(self) -> Member:
        idx = self.rng.integers(len(self.population), size=self.s.tournament)
        return min((self.population[i] for i in idx), key=lambda m: m.fitness)

    @property
    def joins(self) -> bool:
        """Known children join unevaluated (``search.hits: join``, with the cache on): their
        ``forget`` draws are made in ``joining_children``, not in ``step``."""
        return self.s.cache and self.s.hits == "join"

    def children(self) -> tuple[list[Member], list[Program], list[str], dict, int, set]:
        """B children, and how many more were generated and recognized by the cache, then
        mutated again: symbolically their parent (``same``), or by fingerprint their parent's
        function, one this run has met, or a sibling's (``same_function``, ``known``). Every
        slot of the generation's evaluation batch then goes to a new function; after
        ``retries`` re-mutations a known child joins at its cached fitness. What other runs
        stored does not count as met: a run retraces the same steps whatever the store holds
        (it is only spared their evaluations). Without the cache (``search.cache: false``)
        none of this: each child is a single mutation. With ``search.hits: join``, known
        children join instead (``joining_children``). Last: how many children were made, and
        the known functions to evaluate again (``joining_children``'s; else none)."""
        if self.joins:
            return self.joining_children()
        parents = [self.tournament() for _ in range(self.s.children)]
        seen = {"same": 0, "same_function": 0, "known": 0, "inadmissible": 0}
        cache, length = self.s.cache, self.cfg.rule.max_len
        kids = [mutate(p.program, self.rng, length, stats=seen, distinct=cache) for p in parents]
        keys = self.keys(kids)
        # a known child is mutated again in the first ``retries`` rounds; one that breaks the
        # signature's constraints (no training run: a cheap check) is mutated afresh from its
        # parent for up to ``ADMISSIBLE_ROUNDS`` more
        for round_ in range(self.s.retries + ADMISSIBLE_ROUNDS if cache else 0):
            taken, again, fresh = set(), [], set()
            reasons = self.admissible(kids, keys)
            for i, (k, p) in enumerate(zip(keys, parents, strict=True)):
                if reasons[i]:
                    seen["inadmissible"] += 1
                    again.append(i)
                    fresh.add(i)
                elif round_ >= self.s.retries:
                    pass
                elif k == p.key:
                    seen["same_function"] += 1
                    again.append(i)
                elif k in taken or k in self.met:
                    seen["known"] += 1
                    again.append(i)
                taken.add(k)
            if not again:
                break
            for i in again:
                kids[i] = mutate(parents[i].program if i in fresh else kids[i], self.rng, length,
                                 stats=seen)
            new = self.keys([kids[i] for i in again])
            for i, k in zip(again, new, strict=True):
                keys[i] = k
        self.met.update(keys)
        return (parents, kids, keys, seen,
                len(kids) + seen["same"] + seen["same_function"] + seen["known"], set())

    def joining_children(self) -> tuple[list[Member], list[Program], list[str], dict, int,
                                        set]:
        """``search.hits: join``: children made in rounds (parents from the population the
        generation started with) until B take a slot of the evaluation batch, or B x (1 +
        retries) were made. A new function takes a slot, and so does a known one with fewer
        than ``evaluations`` scores or drawn by ``forget`` (evaluated again: the set returned
        last). Any other known child (``same``, ``same_function``, ``known`` as in
        ``children``) joins the population at its cached fitness, unevaluated, so neutral
        mutations drift and dead statements build up, as in the Lion search and AutoML-Zero;
        one that breaks the signature's constraints is mutated afresh from its parent."""
        seen = {"same": 0, "same_function": 0, "known": 0, "inadmissible": 0}
        parents: list[Member] = []
        kids: list[Program] = []
        keys: list[str] = []
        taken: set[str] = set()
        again: set[str] = set()
        length, cap, slots = self.cfg.rule.max_len, self.s.children * (1 + self.s.retries), 0
        while slots < self.s.children and len(kids) < cap:
            ps = [self.tournament() for _ in range(min(self.s.children - slots, cap - len(kids)))]
            ks = [mutate(p.program, self.rng, length, distinct=False) for p in ps]
            kk = self.keys(ks)
            for _ in range(ADMISSIBLE_ROUNDS):
                bad = [i for i, why in enumerate(self.admissible(ks, kk)) if why]
                if not bad:
                    break
                seen["inadmissible"] += len(bad)
                for i in bad:
                    ks[i] = mutate(ps[i].program, self.rng, length, distinct=False)
                for i, k in zip(bad, self.keys([ks[i] for i in bad]), strict=True):
                    kk[i] = k
            for p, c, k in zip(ps, ks, kk, strict=True):
                if k not in taken and k not in self.met:
                    slots += 1
                elif k not in taken and k not in self.cache.failed and (
                        len(self.cache.scores.get(k, [])) < self.s.evaluations
                        or (self.s.forget and self.rng.random() < self.s.forget)):
                    again.add(k)
                    slots += 1
                elif k != p.key:
                    seen["known"] += 1
                else:
                    seen["same" if symbolic_hash(c) == symbolic_hash(p.program)
                         else "same_function"] += 1
                taken.add(k)
            parents, kids, keys = parents + ps, kids + ks, keys + kk
        self.met.update(keys)
        return parents, kids, keys, seen, len(kids), again

    def admissible(self, kids: list[Program], keys: list[str]) -> list[str]:
        """Per child, why it may not be scored ("" if it may; a drift that breaks the
        constraints may not), each function checked once."""
        new = {k: p for k, p in zip(keys, kids, strict=True) if k not in self.reasons}
        if new:
            found = self.space.admissible(list(new.values()), self.length)
            self.reasons.update(zip(new, found, strict=True))
        return [self.reasons[k] for k in keys]

    def step(self, generation: int) -> dict:
        """One generation; returns what the store and the log need."""
        start = time.perf_counter()
        self.cache.as_of = (self.run_id, generation)
        parents, kids, keys, seen, n, again = self.children()
        self.cache.load(keys, "full")
        todo: dict[str, Program] = {}
        for k, p in zip(keys, kids, strict=True):
            count = len(self.cache.scores.get(k, []))
            if k in todo or (self.s.cache and k in self.cache.failed):
                continue
            if count < self.s.evaluations or not self.s.cache or k in again or (
                    self.s.forget and not self.joins and self.rng.random() < self.s.forget):
                todo[k] = p
        evaluations = self.evaluate(todo, generation)
        confirmed = self.confirm(todo) if self.s.confirm else []
        evaluations += confirmed
        members = []
        for parent, p, k in zip(parents, kids, keys, strict=True):
            m = Member(p, k, self.cache.fitness(k), generation, parent.key)
            self.population.append(m)
            members.append(m)
        for _ in range(len(kids)):
            self.population.popleft()  # the oldest leave (aging)
        best = min(members, key=lambda m: m.fitness)
        improved = self.best is None or best.fitness < self.best.fitness
        if improved:
            self.best = best
        self.since_best = 0 if improved else self.since_best + 1
        restart = None
        if self.s.plateau and self.since_best >= self.s.plateau:
            restart = self.restart()
        seconds = time.perf_counter() - start
        # n, children generated: those that join, plus those the cache recognized and replaced
        # (a child that broke the signature's constraints was never a candidate: not counted)
        evaluated = len(todo)
        per_eval = self.eval_seconds / max(self.evaluated_total, 1)
        fitness = np.asarray([m.fitness for m in members])
        stats = {"best": float(fitness.min()), "mean": float(fitness.mean()),
                 "hits": n - evaluated, "misses": evaluated, "hit_rate": 1 - evaluated / n,
                 "evaluated": evaluated, "seconds": seconds, "candidates_per_s": n / seconds,
                 "checkpoint": None}
        extra = {"time_saved_s": (n - evaluated) * per_eval, "restart": restart,
                 "children": len(kids), "confirmed": len(confirmed),
                 "same_as_parent_symbolic": seen["same"],
                 "same_as_parent_function": seen["same_function"],
                 "known_function": seen["known"], "inadmissible": seen["inadmissible"],
                 "hurdle_failed": sum(k in self.cache.failed for k in todo),
                 "best_so_far": self.best.fitness, "best_hash": self.best.key}
        return {"stats": stats, "extra": extra, "members": members,
                "evaluations": evaluations}

    def restart(self) -> str:
        """On a plateau: the population restarts from the start program or from the best so far
        (``search.restart``: in turn, as Chen et al. 2023, or always the one)."""
        self.restarts += 1
        if self.s.restart == "start" or (self.s.restart == "alternate" and self.restarts % 2):
            key = self.keys([self.start])[0]
            src, what = Member(self.start, key, self.cache.fitness(key), -1), "start"
        else:
            src, what = self.best, "best"
        self.population = deque(dataclasses.replace(src) for _ in range(self.s.population))
        self.since_best = 0
        return what
