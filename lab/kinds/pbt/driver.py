"""Population-based training in the generation loop (``lab.core.loop.Driver``): one generation
is one interval of every member's runs.

Each generation advances every member on every task of the suite by one interval
(``population.advance``, one compiled call per task), scores the members by that interval's mean
training loss (per task the lab's normalized score against tuned Adam's final loss, averaged over
tasks), records each new trajectory as a store candidate (family ``pbt(NAME)``: the first
interval's, and each copy's once explored, its parent the trajectory of the member it copied:
the store holds the lineage), then, but after the last interval, exploits and explores
(``population.choose``; ``population.gather`` copies the runs on device). A member's trajectory
is the hyperparameters it trained with in each interval; a copy inherits the copied member's.

The answer is the final members' trajectories (``output.top_k`` best by the last interval), each
a rule of the family: the loop scores them from scratch on the fixed evaluation seeds, as every
rule is scored, so what PBT found is a schedule that replays anywhere.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from lab.console import log
from lab.core import hosts
from lab.core.checkpoints import array_to_strings, strings_to_array
from lab.core.evaluate import put, task_keys
from lab.core.fitness import normalized_score
from lab.core.hashing import genome_digest
from lab.core.loop import AfterSearch, Finalist, Step, candidate_row
from lab.kinds.pbt.base import base_for, tuned_names
from lab.kinds.pbt.population import (
    Members,
    advance,
    choose,
    gather,
    init_members,
    members_sharding,
)

LOG1M_MAX = float(np.log1p(-1e-3))  # a decay rate stays at least 1e-3
NO_PARENT = "0" * 32  # a genome digest's width: the checkpoint's array keeps one shape


class PBTDriver:
    def __init__(self, cfg, setup):
        s = cfg.search
        self.cfg, self.s, self.setup = cfg, s, setup
        self.rule, self.scorer = setup.rule, setup.scorer
        base = base_for(cfg.rule, s.hparams)
        self.base = base
        self.keys = list(base.start)
        self.tuned = tuned_names(tuple(s.hparams), self.keys)
        self.lo, self.hi = {}, {}
        for k in self.tuned:
            z0, width = base.start[k], float(np.log(s.spread))
            hi = min(z0 + width, LOG1M_MAX) if k in base.log1m else z0 + width
            self.lo[k], self.hi[k] = z0 - width, hi
        pop, g = s.population, s.generations
        self.shard = members_sharding(setup.mesh, pop)
        if self.shard is None and setup.mesh is not None and setup.mesh.devices.size > 1:
            log(f"pbt: {pop} members do not divide over {setup.mesh.devices.size} devices: "
                "they run on one" + (" in every process" if hosts.count() > 1 else ""))
        self.final_rows = min(cfg.output.top_k, pop)
        self.ids = np.arange(pop, dtype=np.int64)
        self.hparams = {k: np.full(pop, base.start[k], np.float32) for k in self.keys}
        for j in range(pop):  # initial draws, log-uniform within the bounds, keyed by member id
            rng = np.random.default_rng([s.seed, 1_000_003, j])
            for k in self.tuned:
                self.hparams[k][j] = np.float32(rng.uniform(self.lo[k], self.hi[k]))
        self.history = {k: np.zeros((pop, g), np.float32) for k in self.keys}
        self.copied_from = np.full((pop, g), -1, np.int64)  # member id copied after interval
        self.scores = np.zeros((pop, g), np.float64)
        self.last_hash = [NO_PARENT] * pop  # the trajectory each member continues
        ids = self.ids.astype(np.int32)
        self.members = {t.name: init_members(
            t, base.rule, self._genomes(),
            self._put(task_keys(self.scorer.seeds_of(t.name), pop, 0, ids, s.seed)), self.shard)
            for t in self.scorer.tasks}

    def _put(self, tree):
        """Host values (the same in every process) on the members' layout: one device, or
        sharded over the mesh (each process lays out its own devices' rows)."""
        if self.shard is None:
            return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x),
                                tree)
        return put(tree, self.shard)

    def _genomes(self) -> dict:
        return self._put(self.base.genomes(self.hparams))

    def _trajectory(self, j: int, g: int) -> dict:
        """Member ``j``'s trajectory after interval ``g`` (later intervals at its current
        hyperparameters): the family's genome."""
        return self.base.family({k: np.concatenate([
            self.history[k][j, :g + 1], np.full(self.s.generations - g - 1, self.hparams[k][j],
                                                np.float32)]).astype(np.float32)
            for k in self.keys})

    # ---- the loop's driver ------------------------------------------------------------------
    def state(self, generation: int):
        return {"hparams": self.hparams, "history": self.history, "ids": self.ids,
                "copied_from": self.copied_from, "scores": self.scores,
                "last_hash": strings_to_array(self.last_hash),
                "members": {k: m._asdict() for k, m in self.members.items()}}  # the loop gathers

    def template(self):
        return self.state(-1)

    def restore(self, tree, first: int) -> None:
        self.hparams = {k: np.asarray(v, np.float32) for k, v in tree["hparams"].items()}
        self.history = {k: np.asarray(v, np.float32) for k, v in tree["history"].items()}
        self.ids = np.asarray(tree["ids"], np.int64)
        self.copied_from = np.asarray(tree["copied_from"], np.int64)
        self.scores = np.asarray(tree["scores"], np.float64)
        self.last_hash = array_to_strings(tree["last_hash"])
        self.members = {k: self._put(Members(**m)) for k, m in tree["members"].items()}

    def step(self, g: int) -> Step:
        start, s = time.perf_counter(), self.s
        genomes = self._genomes()
        per_task = []
        for task in self.scorer.tasks:
            steps = self.scorer.steps(task)
            self.members[task.name], loss, diverged = advance(
                task, self.base.rule, steps, s.generations, self.cfg.rule.lr, genomes,
                self.members[task.name], g, self.shard)
            with np.errstate(all="ignore"):
                mean = loss.mean(axis=1)
            per_task.append(normalized_score(mean, diverged.any(axis=1),
                                             self.scorer.refs[task.name], task.floor))
        score = np.mean(per_task, axis=0)
        self.scores[:, g] = score
        for k in self.keys:
            self.history[k][:, g] = self.hparams[k]
        rows, members, hashes = [], [], []
        for j in range(len(self.ids)):
            traj = self._trajectory(j, g)
            h = genome_digest(self.rule, traj)
            hashes.append(h)
            if h != self.last_hash[j]:  # a new trajectory: the first, or a copy explored
                parent = None if self.last_hash[j] == NO_PARENT else self.last_hash[j]
                rows.append(candidate_row(self.rule, h, traj, parent))
            members.append({"hash": h, "fitness": float(score[j]), "generation": g})
        copies = 0
        if g + 1 < s.generations:
            c = choose(score, self.ids, self.hparams, self.tuned, self.lo, self.hi,
                       s.truncation, tuple(s.perturb), s.resample, s.seed, g)
            self.members = {k: gather(m, c.src, self.shard) for k, m in self.members.items()}
            self.history = {k: v[c.src] for k, v in self.history.items()}
            self.hparams = c.hparams
            self.copied_from[:, g] = np.where(c.copied, self.ids[c.src], -1)
            copies = int(c.copied.sum())
            hashes = [hashes[int(i)] for i in c.src]  # a copy continues the copied trajectory
        self.last_hash = hashes
        seconds = time.perf_counter() - start
        pop = len(self.ids)
        stats = {"best": float(np.min(score)), "mean": float(np.mean(score)), "hits": 0,
                 "misses": pop, "hit_rate": 0.0, "evaluated": pop, "seconds": seconds,
                 "candidates_per_s": pop / max(seconds, 1e-9)}
        extra = {"copies": copies}
        for k in ("learning_rate", "lr"):  # an optimizer's learning rate, a program's multiplier
            if k in self.hparams:
                extra[f"{k}_median"] = float(np.median(np.exp(self.hparams[k])))
        return Step(stats, rows, [], members, [], extra)

    def finalists(self) -> dict:
        last = self.s.generations - 1
        order = np.lexsort((self.ids, self.scores[:, last]))[:self.final_rows]
        out = {}
        for j in order:
            traj = self._trajectory(int(j), last)
            h = genome_digest(self.rule, traj)
            out.setdefault(h, Finalist(traj, candidate_row(self.rule, h, traj)))
        return out

    def after_search(self, finals, scores) -> AfterSearch:
        best = min(scores, key=scores.get)
        log(f"the best final trajectory scores {scores[best]:.4f} from scratch on the fixed "
            "evaluation seeds")
        lineage = [{"interval": g, "copies": [
            {"member": int(self.ids[j]), "from": int(self.copied_from[j, g])}
            for j in range(len(self.ids)) if self.copied_from[j, g] >= 0]}
            for g in range(self.s.generations - 1)]
        return AfterSearch(report={"lineage": lineage,
                                   "interval_scores": self.scores.tolist()})
