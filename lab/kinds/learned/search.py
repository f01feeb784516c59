"""Meta-training learned optimizers: evosax over the network's weights, scored on truncated
unrolls of the suite's tasks, with per-member inner runs that reset on their own schedule.

Every member carries one inner run per task. Members that share a task-key slot (an antithetic
pair for Open_ES and PGPE; the whole generation otherwise) share the task's init, its batches,
the run's horizon and its resets (common random numbers). Horizons are drawn log-uniformly, and
the first runs start at random offsets, so runs end and restart at different generations for
different slots (per-member resets, unlike evosax's lockstep PES). With ``unroll`` equal to
``horizon_max`` every generation trains whole runs of sampled horizons (full-run ES).

Two estimators:
- truncated ES (default): the members of a slot start each truncation from one state (the
  slot's first member's), so a pair's loss difference measures its perturbation over one
  truncation; the strategy's own ``tell`` takes the population as sampled.
- persistent ES (``persistent: true``, Open_ES): each member keeps its own run and accumulates
  its perturbations since that run started; ``tell`` sees ``mean + accumulated`` in place of
  the population, which turns Open_ES's gradient into PES's (Vicol et al. 2021).

With ``lr: 0`` (Open_ES on whole runs) the ES mean stays at the start and every generation is a
random sample around it: the driver keeps the ``output.top_k`` best members it has seen, and they
are finalists beside the mean (the random-search control at equal compute).

A diverged member scores worst (``+C``) and its slot restarts; the diverged fraction is shown and
stored with each generation. Every ``validate_every`` generations the ES mean is scored on full
runs of the suite on the fixed evaluation seeds (the lab's fitness: 0 = tuned Adam), and the best
such mean is the run's answer. With ``validate_scale`` K > 1 the validation score is the mean of
the full-run scores at 1x and at K times every horizon (references: tuned Adam at those steps),
or with ``validate_by: worst`` the larger of the two (the answer is the rule that does best at
its weaker horizon), and the finalists are selected by it, so a rule meta-trained on long
horizons is not chosen at the short ones alone; with ``meta_reference: horizon`` the meta-loss
too is measured against tuned Adam at the inner run's step count (log-log between the 1x and K x
references; the 1x reference alone clips a long run's loss on the tasks where tuned Adam gains
more than ``e^C`` from 1x to K x). The whole state (ES, inner runs, horizons, accumulators) is
checkpointed with orbax before the generation's store row.

References:
  Salimans et al. 2017, https://arxiv.org/abs/1703.03864 (OpenAI-ES);
  Vicol et al. 2021, https://arxiv.org/abs/2112.13835 (PES);
  Metz et al. 2019, https://arxiv.org/abs/1810.10180 (truncated meta-training).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab.console import log
from lab.core import es
from lab.core.evaluate import task_keys
from lab.core.fitness import suite_scorer
from lab.core.hashing import genome_digest
from lab.core.hosts import gather
from lab.core.loop import AfterSearch, Finalist, Step, candidate_row, score_fixed
from lab.kinds.learned.unroll import make_unroll, start_population, unroll_population


def sample_horizon(seed: int, generation: int, slot: int, cfg) -> tuple[int, int]:
    """(horizon, offset) of a slot's run that starts at ``generation``: the horizon an integer
    log-uniform in [horizon_min, horizon_max]; the offset (first runs only) a random whole
    number of unrolls into it, so that runs do not all end in the same generation."""
    s = cfg.search
    rng = np.random.default_rng([seed, generation, slot])
    h = int(round(math.exp(rng.uniform(math.log(s.horizon_min), math.log(s.horizon_max)))))
    h = min(max(h, s.horizon_min), s.horizon_max)
    offset = int(rng.integers(0, max(1, h // s.unroll))) if generation == 0 else 0
    return h, offset * s.unroll


class LearnedDriver:
    """Meta-training of a learned optimizer: ``lab.core.loop.Driver`` of ``kind: learned``."""

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        s = cfg.search
        self.rule, self.scorer = setup.rule, setup.scorer
        self.scorers = [self.scorer]  # validation's scorers: 1x, and validate_scale x
        if s.validate_scale > 1:
            self.scorers.append(suite_scorer(cfg, self.rule, setup.store, setup.mesh,
                                             scale=s.validate_scale))
        self.spec, self.flat = es.spec_of(s, self.rule.genome)
        self.final_rows = 1  # the validations' shape: one genome on full runs
        self.key = jax.random.key(s.seed)
        self.slots = np.asarray(es.task_key_index(self.spec))
        self.leader = np.array([int(np.flatnonzero(self.slots == k)[0]) for k in self.slots])
        self.unrolls = {t.name: make_unroll(t, self.rule, s.unroll, cfg.rule.lr, s.meta_loss,
                                            self.reference(t))
                        for t in self.scorer.tasks}
        pop = s.population
        genomes = self.flat.population(jnp.repeat(self.flat.flat[None], pop, 0))
        keys = task_keys(1, pop, 0, self.slots, s.seed)[:, 0]
        self.tree: dict[str, Any] = {
            "es": es.init(self.spec, jax.random.fold_in(self.key, 0), self.flat.flat),
            "inner": {n: start_population(u, genomes, keys, setup.mesh)
                      for n, u in self.unrolls.items()},
            "t": np.zeros(pop, np.int32), "horizon": np.zeros(pop, np.int32),
            "reset": np.ones(pop, bool),  # every run starts fresh in generation 0
            "accum": np.zeros((pop, self.spec.num_dims), np.float32),
            "best": np.asarray(np.inf, np.float64),
            "best_mean": np.asarray(self.flat.flat, np.float32),
        }
        if s.lr == 0:  # random search: the best members seen, whole runs each
            k = cfg.output.top_k
            self.tree["top"] = np.zeros((k, self.spec.num_dims), np.float32)
            self.tree["top_fitness"] = np.full(k, np.inf, np.float64)
        against = "the run's step count" if s.meta_reference == "horizon" else "1x"
        log(f"meta-training {self.rule.describe(self.rule.genome)}: {s.strategy} population "
            f"{s.population}, sigma {s.sigma}, {'persistent' if s.persistent else 'truncated'} "
            f"ES, unroll {s.unroll}, horizons {s.horizon_min}-{s.horizon_max}, meta-loss "
            f"{s.meta_loss} against tuned Adam at {against}")

    def reference(self, task) -> tuple[tuple[int, float], ...]:
        """The meta-loss's reference knots on ``task``: tuned Adam's final loss at 1x, and with
        ``meta_reference: horizon`` also at the validation's longer horizons."""
        scorers = self.scorers if self.cfg.search.meta_reference == "horizon" else self.scorers[:1]
        return tuple((sc.steps(task), sc.refs[task.name]) for sc in scorers)

    # ---- one generation ----------------------------------------------------------------------
    def generation(self, g: int) -> dict:
        """Asks, unrolls every task once, tells; returns the generation's stats and fitness."""
        s, st = self.cfg.search, self.tree
        start = time.perf_counter()
        k_ask, k_tell = jax.random.split(jax.random.fold_in(self.key, g + 1))
        flat_pop, st["es"] = es.ask(self.spec, k_ask, st["es"])
        mean = np.asarray(es.mean_of(self.spec, st["es"]))
        reset = np.asarray(st["reset"]) | (st["t"] >= st["horizon"])
        t_start = np.zeros_like(st["t"])
        horizon = np.array(st["horizon"])
        for slot in np.unique(self.slots[reset]):
            h, offset = sample_horizon(s.seed, g, int(slot), self.cfg)
            horizon[self.slots == slot], t_start[self.slots == slot] = h, offset
        if s.persistent:
            accum = np.where(reset[:, None], 0.0, st["accum"])
            st["accum"] = (accum + (np.asarray(flat_pop) - mean)).astype(np.float32)
        genomes = self.flat.population(flat_pop)
        keys = task_keys(1, s.population, g, self.slots, s.seed)[:, 0]
        losses, diverged = [], []
        for j, (name, u) in enumerate(self.unrolls.items()):
            task_key = jax.vmap(lambda k, j=j: jax.random.fold_in(k, j))(keys)
            inner, m = unroll_population(u, genomes, st["inner"][name], reset, horizon,
                                         t_start, task_key, self.setup.mesh)
            if not s.persistent:  # the slot continues from its first member's run
                inner = jax.tree.map(lambda x: x[self.leader], inner)
            st["inner"][name] = inner
            losses.append(np.asarray(gather(m["meta_loss"]), np.float64))
            diverged.append(gather(m["diverged"]))
        fitness = np.mean(losses, axis=0)  # what the stats, the store and the top-k keep
        told_fitness = fitness if s.task_fitness == "mean" else \
            np.mean(es.centered_ranks(np.stack(losses), axis=1), axis=0)
        bad = np.any(diverged, axis=0)
        told = mean + st["accum"] if s.persistent else flat_pop
        st["es"], _ = es.tell(self.spec, k_tell, jnp.asarray(told, jnp.float32),
                              jnp.asarray(told_fitness, jnp.float32), st["es"])
        if "top" in st:  # random search: keep the top_k members (ties: the earlier)
            every = np.concatenate([st["top_fitness"], fitness])
            keep = np.argsort(every, kind="stable")[:len(st["top_fitness"])]
            st["top"] = np.concatenate([st["top"], np.asarray(flat_pop, np.float32)])[keep]
            st["top_fitness"] = every[keep]
        st["t"] = np.minimum(np.where(reset, t_start, st["t"]) + s.unroll, horizon)
        st["horizon"] = horizon
        # a slot restarts when its carried run diverged (the leader's, or any member's for PES)
        restart = np.zeros(s.population, bool)
        for slot in np.unique(self.slots):
            members = self.slots == slot
            restart[members] = bad[members].any() if s.persistent else bad[self.leader[members][0]]
        st["reset"] = restart
        seconds = time.perf_counter() - start
        steps = s.population * len(self.unrolls) * s.unroll
        stats = {"best": float(np.min(fitness)), "mean": float(np.mean(fitness)), "hits": 0,
                 "misses": s.population, "hit_rate": 0.0, "evaluated": s.population,
                 "seconds": seconds, "candidates_per_s": s.population / max(seconds, 1e-9),
                 "diverged": float(np.mean(bad)), "checkpoint": None}
        extra = {"resets": int(np.sum(reset)), "inner_steps_per_s": steps / max(seconds, 1e-9),
                 "horizon_mean": float(np.mean(horizon)),
                 "progress_mean": float(np.mean(st["t"] / np.maximum(horizon, 1)))}
        return {"stats": stats, "extra": extra}

    # ---- the ES mean on full runs --------------------------------------------------------------
    def mean_genome(self):
        return jax.tree.map(np.asarray, self.flat.unravel(es.mean_of(self.spec,
                                                                     self.tree["es"])))

    def best_genome(self):
        return jax.tree.map(np.asarray, self.flat.unravel(jnp.asarray(self.tree["best_mean"])))

    def scored(self, genomes: dict, at_1x: dict | None = None
               ) -> tuple[dict, list[dict], list[dict]]:
        """Validation scores of ``genomes`` (hash -> genome) on the fixed evaluation seeds:
        (the scales' scores combined by hash: their mean, or with ``validate_by: worst`` their
        maximum; each scale's scores, new evaluations);
        ``at_1x``: their 1x scores where already known (the finalists')."""
        per, evaluations = [] if at_1x is None else [at_1x], []
        for scorer in self.scorers[len(per):]:
            scores, new, _ = score_fixed(scorer, self.setup.store, genomes, self.final_rows)
            per.append(scores)
            evaluations += new
        combine = np.max if self.cfg.search.validate_by == "worst" else np.mean
        return {h: float(combine([p[h] for p in per])) for h in genomes}, per, evaluations

    def validate(self) -> tuple[list[dict], list[dict], list[dict], dict]:
        """Scores the ES mean on full runs (fixed seeds); (candidates, evaluations, members,
        scores: ``validation`` and, with ``validate_scale``, each scale's); keeps the best such
        mean."""
        genome = self.mean_genome()
        h = genome_digest(self.rule, genome)
        combined, per, evaluations = self.scored({h: genome})
        score = combined[h]
        if score < float(self.tree["best"]):
            self.tree["best"] = np.asarray(score, np.float64)
            self.tree["best_mean"] = np.asarray(es.mean_of(self.spec, self.tree["es"]),
                                                np.float32)
        scores = {"validation": score}
        if len(per) > 1:
            scores |= {"validation_x1": per[0][h],
                       f"validation_x{self.cfg.search.validate_scale}": per[1][h]}
        return ([candidate_row(self.rule, h, genome)], evaluations,
                [{"hash": h, "fitness": per[0][h]}], scores)

    # ---- the loop's driver --------------------------------------------------------------------
    def state(self, generation: int):
        return self.tree

    def template(self):
        return self.tree

    def restore(self, tree, first: int) -> None:
        self.tree = tree

    def step(self, g: int) -> Step:
        """One generation; the ES mean is validated every ``validate_every`` and at the end."""
        s = self.cfg.search
        out = self.generation(g)
        stats, extra = out["stats"], out["extra"]
        candidates, evaluations, members = [], [], []
        if (s.validate_every and (g + 1) % s.validate_every == 0) or g + 1 == s.generations:
            candidates, evaluations, members, scores = self.validate()
            extra |= scores
            parts = ", ".join(f"{k.removeprefix('validation_')} {v:+.4f}"
                              for k, v in scores.items() if k != "validation")
            log(f"gen {g + 1}: ES mean on full runs {scores['validation']:+.4f}"
                f"{f' ({parts})' if parts else ''} (best {float(self.tree['best']):+.4f}; "
                f"0 = tuned Adam)")
        return Step(stats, candidates, evaluations, members, [], extra,
                    self.scorer.context.key())

    def finalists(self) -> dict[str, Finalist]:
        """The final ES mean and the best validated mean (and with random search, the best
        members seen)."""
        out = {}
        top = [self.flat.unravel(jnp.asarray(x)) for x, f in
               zip(self.tree.get("top", ()), self.tree.get("top_fitness", ()), strict=True)
               if np.isfinite(f)]
        for genome in (self.mean_genome(), self.best_genome(),
                       *(jax.tree.map(np.asarray, g) for g in top)):
            h = genome_digest(self.rule, genome)
            out.setdefault(h, Finalist(genome, candidate_row(self.rule, h, genome)))
        return out

    def after_search(self, finals, scores) -> AfterSearch:
        """With ``validate_scale``, the finalists are selected by their validation score (the
        mean of 1x and the longer horizons, or the worse of the two with ``validate_by:
        worst``); else by their final score."""
        log("final scores on the fixed evaluation seeds: "
            f"{', '.join(f'{scores[h]:+.4f}' for h in finals)} (ES mean, best validated"
            f"{', best members' if 'top' in self.tree else ''})")
        if len(self.scorers) == 1:
            return AfterSearch()
        k = self.cfg.search.validate_scale
        combined, (_, longer), evaluations = self.scored(
            {h: f.genome for h, f in finals.items()}, at_1x=scores)
        best = min(combined, key=combined.get)
        rows = [{"hash": h, "final": scores[h], f"x{k}": longer[h], "selection": combined[h]}
                for h in finals]
        report = {"selection": {"by": "validation", "scales": [1, k],
                                "combined": self.cfg.search.validate_by, "hash": best,
                                "selection": combined[best], "final": scores[best],
                                f"x{k}": longer[best]},
                  "finalists": rows}
        log(f"selected by validation at 1x and {k}x ({self.cfg.search.validate_by}): "
            f"{best[:10]} {combined[best]:+.4f} (1x {scores[best]:+.4f}, {k}x {longer[best]:+.4f})")
        return AfterSearch(evaluations=evaluations, report=report, selection=combined)
