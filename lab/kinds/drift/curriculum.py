"""Curricula over environment levels for drift searches: uniform sampling, and regret-driven
prioritized level replay (PLR) as GROOVE uses it (``search.curriculum``).

Each generation, every antithetic pair of the ES population (the members that share task keys,
``lab.core.es.task_key_index``) trains on one level of each environment of the suite
(``tasks.levels``: the environment with parameters drawn from a seed). A member's fitness on a
level is its normalized algorithmic regret there, ``(R_ppo - R) / scale`` clipped to +-C
(``scoring.normalized_return``), with ``R_ppo`` PPO-clip's (the tuned reference) and the random
policy's returns on that level, measured once per level on the fixed evaluation seeds. Its
fitness is the mean over environments, as without a curriculum.

* ``uniform``: fresh random levels every generation (domain randomization).
* ``regret``: a buffer of levels scored by their latest regret (the mean over the members that
  trained on them). Each of a generation's level slots replays a buffered level with probability
  ``replay_prob`` (once the buffer holds a generation's worth), drawn by

      P(i) = (1 - staleness) * P_rank(i) + staleness * P_stale(i),
      P_rank(i) ∝ (1 / rank(score_i)) ** (1 / temperature),  P_stale(i) ∝ g - last_i,

  (Jiang et al. 2021); the other slots take fresh random levels, which enter the buffer once
  scored, replacing its lowest-scoring level when it is full and they score higher.

Environments without levels (Catch, MinAtar) are scored at their default parameters, as
without a curriculum. Everything is a function of ``(search.seed, generation)`` and the buffer,
which is part of the checkpoint, so a resumed search repeats an uninterrupted one.

References: Jiang et al. 2021, https://arxiv.org/abs/2010.03934 (PLR); Jackson et al. 2023,
https://arxiv.org/abs/2310.02782 (GROOVE: algorithmic regret); jaxued's defaults for
``replay_prob``, ``temperature`` and ``staleness`` (0.5, 0.3, 0.3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import numpy as np

from lab.console import log
from lab.core.es import ESDriver
from lab.core.evaluate import evaluate, task_keys
from lab.core.rule import stack_genomes
from lab.kinds.drift.objectives import ppo_clip
from lab.kinds.drift.ppo import make_level_train, random_returns
from tasks.levels import HELDOUT_SEED, level_overrides, space_of, stacked_overrides


def replay_probabilities(scores: np.ndarray, last: np.ndarray, generation: int,
                         temperature: float, staleness: float) -> np.ndarray:
    """PLR's replay distribution over buffered levels (module docstring): rank
    prioritization of ``scores`` (higher regret, higher probability; ties by position) mixed
    with staleness, ``generation - last`` (uniform when every level is fresh)."""
    n = scores.shape[0]
    ranks = np.empty(n, np.float64)
    ranks[np.argsort(-np.asarray(scores, np.float64), kind="stable")] = np.arange(1, n + 1)
    h = (1.0 / ranks) ** (1.0 / temperature)
    p_rank = h / h.sum()
    age = np.maximum(generation - np.asarray(last, np.float64), 0.0)
    p_stale = age / age.sum() if age.sum() > 0 else np.full(n, 1.0 / n)
    return (1.0 - staleness) * p_rank + staleness * p_stale


def empty_buffer(capacity: int) -> dict:
    """A level buffer: seeds, regret scores, the generation each was last sampled, PPO-clip's
    and the random policy's returns, and how many entries are filled (fixed shapes: it is
    checkpointed)."""
    return {"seed": np.zeros(capacity, np.int32), "score": np.zeros(capacity, np.float32),
            "last": np.zeros(capacity, np.int32), "ppo": np.zeros(capacity, np.float32),
            "random": np.zeros(capacity, np.float32), "count": np.zeros((), np.int32)}


def insert(buffer: dict, seed: int, score: float, generation: int, ppo: float,
           random: float) -> bool:
    """Adds a scored fresh level (in place): appended while there is room, else in place of
    the lowest-scoring level if it scores higher. Returns whether it entered."""
    n = int(buffer["count"])
    if n < buffer["seed"].shape[0]:
        i = n
        buffer["count"] = np.asarray(n + 1, np.int32)
    else:
        i = int(np.argmin(buffer["score"]))
        if score <= buffer["score"][i]:
            return False
    for k, v in (("seed", seed), ("score", score), ("last", generation), ("ppo", ppo),
                 ("random", random)):
        buffer[k][i] = v
    return True


@dataclasses.dataclass
class Levels:
    """One environment's levels in one generation: a seed per key slot, where each came from
    (its buffer index, or -1 for a fresh level), and their references."""

    seeds: np.ndarray
    index: np.ndarray
    ppo: np.ndarray
    random: np.ndarray
    overrides: dict


class CurriculumDriver(ESDriver):
    """``ESDriver`` whose generations are scored on sampled environment levels (module
    docstring). Its checkpoint holds the ES state and one level buffer per environment."""

    def __init__(self, cfg, setup):
        super().__init__(cfg, setup)
        s = cfg.search
        self.mode, self.replay_prob = s.curriculum, s.replay_prob
        self.temperature, self.staleness = s.temperature, s.staleness
        self.n_slots = int(self.slots.max()) + 1
        self.level_tasks = [t for t in self.scorer.tasks if space_of(t.env_id) is not None]
        if not self.level_tasks:
            raise ValueError(f"search.curriculum={self.mode}: no environment of suite "
                             f"{cfg.suite} has levels (tasks.levels.SPACES)")
        steps = {t.name: self.scorer.steps(t) for t in self.level_tasks}
        self.level_trains = {t.name: make_level_train(t, self.rule, steps[t.name])
                             for t in self.level_tasks}
        self.ref_trains = {t.name: make_level_train(t, ppo_clip(), steps[t.name])
                           for t in self.level_tasks}
        self.buffers = {t.name: empty_buffer(s.buffer) for t in self.level_tasks}
        self.levels: dict[str, Levels] = {}
        self.prepared: int | None = None
        self.ref_runs = 0

    # ---- the checkpoint: the ES state and the buffers --------------------------------------

    def state(self, generation: int):
        return {"es": self.es, "buffers": self.buffers}

    def template(self):
        return self.state(0)

    def restore(self, tree, first: int) -> None:
        self.es = tree["es"]
        self.buffers = {name: {k: np.asarray(v).copy() for k, v in b.items()}
                        for name, b in tree["buffers"].items()}

    # ---- a generation's levels --------------------------------------------------------------

    def prepare(self, g: int) -> None:
        """Draws generation ``g``'s levels and measures the references of the fresh ones."""
        if self.prepared == g:
            return
        self.ref_runs = 0
        for i, task in enumerate(self.level_tasks):
            rng = np.random.default_rng([self.cfg.search.seed, g, i])
            buf = self.buffers[task.name]
            n, L = int(buf["count"]), self.n_slots
            replay = 0
            if self.mode == "regret" and n >= L:
                replay = int(rng.binomial(L, self.replay_prob))
            index = np.full(L, -1, np.int64)
            if replay:
                p = replay_probabilities(buf["score"][:n], buf["last"][:n], g,
                                         self.temperature, self.staleness)
                index[:replay] = rng.choice(n, replay, replace=False, p=p)
            fresh = rng.integers(0, HELDOUT_SEED, L - replay)
            seeds = np.concatenate([buf["seed"][index[:replay]], fresh]).astype(np.int64)
            ppo = np.concatenate([buf["ppo"][index[:replay]], np.zeros(L - replay)])
            rand = np.concatenate([buf["random"][index[:replay]], np.zeros(L - replay)])
            if replay < L:
                ppo[replay:], rand[replay:] = self.references(task, fresh)
            self.levels[task.name] = Levels(seeds, index, ppo.astype(np.float64),
                                            rand.astype(np.float64),
                                            stacked_overrides(task.env_id, seeds))
        self.prepared = g

    def references(self, task, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PPO-clip's and the random policy's mean final return on each level (the fixed
        evaluation seeds), in shapes that do not depend on how many levels are fresh (so no
        generation compiles): PPO-clip in calls of half a generation's slots, the random
        policy on a whole generation's, padded by repeating the last level."""
        n, seeds_n = len(seeds), self.scorer.seeds_of(task.name)
        size = max(1, self.n_slots // 2)
        calls = -(-n // size)
        padded = np.concatenate([seeds, np.repeat(seeds[-1:], calls * size - n)])
        genomes = stack_genomes([ppo_clip().genome] * size)
        keys = task_keys(seeds_n, size)
        ppo = []
        for c in range(calls):
            over = stacked_overrides(task.env_id, padded[c * size:(c + 1) * size])
            m = evaluate(self.ref_trains[task.name], (genomes, over), keys, self.scorer.mesh)
            ppo.append(np.mean(np.asarray(m["final_return"], np.float64), axis=1))
        self.ref_runs += calls * size * seeds_n
        padded = np.concatenate([seeds, np.repeat(seeds[-1:], self.n_slots - n)])
        rows = {k: np.repeat(v, seeds_n)
                for k, v in stacked_overrides(task.env_id, padded).items()}
        keys = jax.random.wrap_key_data(np.tile(
            np.asarray(jax.random.key_data(task_keys(seeds_n, 1)[0])), (self.n_slots, 1)))
        rand = random_returns(task, self.scorer.steps(task), keys, rows)
        return (np.concatenate(ppo)[:n],
                rand.reshape(self.n_slots, seeds_n).mean(axis=1)[:n])

    def context(self, g: int):
        self.prepare(g)
        doc = {name: [lv.seeds.tolist(), np.round(lv.ppo, 6).tolist(),
                      np.round(lv.random, 6).tolist()] for name, lv in self.levels.items()}
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
        ctx = super().context(g)
        return dataclasses.replace(ctx, refs=f"{ctx.refs}+levels-{digest}")

    def score(self, genomes, g: int) -> dict:
        """``DriftScorer.score`` with each member on its slot's level of every environment."""
        self.prepare(g)
        levels = {name: (self.level_trains[name],
                         {k: v[self.slots] for k, v in lv.overrides.items()},
                         lv.ppo[self.slots], lv.random[self.slots])
                  for name, lv in self.levels.items()}
        return self.scorer.score(genomes, generation=g, slots=self.slots,
                                 stream=self.cfg.search.seed, levels=levels)

    def observe(self, g: int, fitness: np.ndarray, metrics: list[dict]) -> dict:
        """Scores this generation's levels by their regret (the mean fitness of the members
        that trained on them, rejected members left out) and updates the buffers."""
        out = {}
        for task in self.level_tasks:
            lv, buf = self.levels[task.name], self.buffers[task.name]
            regret = np.full(self.n_slots, np.nan)
            for slot in range(self.n_slots):
                vals = [m[task.name]["fitness"] for m, s in zip(metrics, self.slots, strict=True)
                        if s == slot and "rejected" not in m[task.name]]
                if vals:
                    regret[slot] = float(np.mean(vals))
            entered = 0
            for slot in range(self.n_slots):
                if np.isnan(regret[slot]):
                    continue
                i = int(lv.index[slot])
                if i >= 0:
                    buf["score"][i], buf["last"][i] = regret[slot], g
                elif self.mode == "regret":
                    entered += insert(buf, int(lv.seeds[slot]), float(regret[slot]), g,
                                      float(lv.ppo[slot]), float(lv.random[slot]))
            n = int(buf["count"])
            out[task.name] = {"levels": lv.seeds.tolist(),
                              "replayed": (lv.index >= 0).tolist(),
                              "regret": [None if np.isnan(r) else float(r) for r in regret],
                              "ppo": lv.ppo.tolist(), "buffer": n, "entered": int(entered),
                              "buffer_mean": float(np.mean(buf["score"][:n])) if n else None}
        return {"curriculum": out, "reference_runs": self.ref_runs}

    def after_search(self, finals, scores):
        after = super().after_search(finals, scores)
        report = curriculum_report(self.store.run_dir(self.setup.run_id), self.buffers,
                                   {t.name: t.env_id for t in self.level_tasks}, self.mode,
                                   f"{self.cfg.name} ({self.setup.run_id})")
        return after._replace(report={**after.report, "curriculum": report})


def curriculum_report(folder, buffers: dict, env_ids: dict, mode: str, title: str) -> dict:
    """What ``finalists.json`` records of a curriculum: per environment the levels sampled,
    how many were replays, and the buffer's highest-regret levels with their parameters; and
    the plot of regret per level over generations (``regret.png`` in the run folder)."""
    from lab.kinds.drift.plots import draw_regret
    history = curriculum_history(folder)
    out = {"mode": mode, "environments": {}}
    for name, buf in buffers.items():
        n = int(buf["count"])
        order = np.argsort(-buf["score"][:n], kind="stable")[:5]
        rows = [h[name] for h in history if name in h]
        out["environments"][name] = {
            "levels_sampled": int(sum(len(r["levels"]) for r in rows)),
            "distinct_levels": len({s for r in rows for s in r["levels"]}),
            "replays": int(sum(sum(r["replayed"]) for r in rows)),
            "buffer": n,
            "hardest": [{"seed": int(buf["seed"][i]), "regret": float(buf["score"][i]),
                         "params": level_overrides(env_ids[name], int(buf["seed"][i]))}
                        for i in order]}
    try:
        out["plot"] = str(draw_regret(history, folder / "regret.png", title))
    except OSError as e:
        log(f"curriculum: cannot draw regret.png ({e})")
    return out


def curriculum_history(folder) -> list[dict]:
    """The ``curriculum`` entries of a run's ``metrics.jsonl``, one per generation."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [{"generation": ln["generation"], **ln["curriculum"]} for ln in lines
            if "curriculum" in ln]
