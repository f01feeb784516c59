"""After a program search: constants tuned by ES, finalists re-scored on the fixed evaluation
seeds, a knock-out ablation of the best, the funnel to larger runs, meta-validation.

* **ES on constants** (``search.es.top`` structures): evosax over ``log|k|`` of each structure's
  nonzero constants, through the compiled path (one compilation per structure, the population
  vmapped over constants).
* **Finalists**: the ``output.top_k`` best programs, each with the lr multiplier the search
  picked baked into it (``bake_lr``), plus the ES-tuned and the ablated programs, scored on the
  fixed evaluation seeds without the grid; these scores rank the run. With
  ``search.lr_per_task`` or ``search.final_seeds`` they are scored again (``final_scoring``):
  on ``final_seeds`` seeds, each task at its own multiplier of the search's grid (with
  ``lr_per_task``; the multiplier a finalist carries divided out, so its grid is the search's).
* **Knock-out ablation**: every live statement of the best finalist dropped in turn (its readers
  read its first argument), all variants scored in one batched call; the drop that costs least
  is kept while it costs at most ``simplify_tolerance``; repeated.
* **Funnel** (``search.funnel``): the best finalists at ``funnel_scale`` x the budget; with
  ``search.lr_per_task`` each task at its own multiplier of the search's grid (as the
  held-out replay tunes a program's learning rate per task), else as baked.
* **Meta-validation** (``search.meta_validate_every``): the best-so-far at the funnel's budget
  during the search, so meta-overfitting (search fitness improving, validation not) shows.
* **Selection** (``search.select: funnel`` or ``both``): the programs meta-validation scored
  join the finalists and the funnel, and the funnel's scores (or the mean of the final and the
  funnel's) rank them: the run's answer is the best at the longer horizon (or at both), on
  train-side tasks, not the proxy's winner.

References: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab import treeio
from lab.console import log
from lab.core import es
from lab.core.rule import UpdateRule
from lab.kinds.program.compiled import structure_rule, with_constants
from lab.kinds.program.evolution import Evolution
from lab.kinds.program.ir import (
    Stmt,
    bake_lr,
    is_valid,
    live_statements,
    reads,
    simplify,
)
from lab.kinds.program.ops import OPS
from lab.kinds.program.programs import Program
from lab.kinds.program.spaces import scorer_at
from lab.kinds.program.text import to_source


def _multiplier(evo: Evolution, key: str) -> float:
    return float((evo.cache.metrics.get(key) or {}).get("lr_multiplier", 1.0))


def constants_rule(p: Program, lr: float) -> tuple[UpdateRule, np.ndarray, np.ndarray]:
    """``p``'s structure as a rule over ``z = log|k|`` of its nonzero constants (signs kept).

    Returns (rule with genome ``{"z": [n]}``, indices of those constants, their signs).
    """
    base = structure_rule(p, simplify_first=False)
    k0 = np.asarray(base.genome["k"], np.float32)
    idx = np.asarray([i for i, s in enumerate(p.stmts) if OPS[s.op].uses_k and k0[i] != 0],
                     np.int32)
    signs = np.sign(k0[idx]).astype(np.float32)

    def ks(genome):
        return jnp.asarray(k0).at[idx].set(jnp.asarray(signs) * jnp.exp(genome["z"]))

    def init(genome, params):
        return base.init({"k": ks(genome), "lr": lr}, params)

    def update(genome, grads, state, params, ctx):
        return base.update({"k": ks(genome), "lr": jnp.asarray(lr)}, grads, state, params, ctx)

    genome = {"z": np.log(np.abs(k0[idx])).astype(np.float32)}
    rule = UpdateRule("program", "program-constants", init, update, genome,
                      lambda g: to_source(with_constants(p, np.asarray(ks(g)))))
    return rule, idx, signs


def tune_constants(cfg, setup, evo: Evolution, p: Program, lr: float,
                   stream: int) -> Program | None:
    """ES (evosax, the core's driver) on ``p``'s constants; the program at the ES mean
    (update rules: the compiled path is an update rule over the constants)."""
    e = cfg.search.es
    rule, idx, signs = constants_rule(p, lr)
    if idx.size == 0:
        return None
    scorer = scorer_at(cfg, setup, evo.space, cfg.budget, rule=rule)
    spec = es.ESSpec(e.strategy, e.population, int(idx.size), e.sigma, e.lr)
    key = jax.random.fold_in(jax.random.key(cfg.search.seed), 1_000_003 + stream)
    state = es.init(spec, jax.random.fold_in(key, 0), jnp.asarray(rule.genome["z"]))
    slots = np.asarray(es.task_key_index(spec))
    for g in range(e.generations):
        k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g + 1))
        pop, state = es.ask(spec, k_ask, state)
        result = scorer.score({"z": pop}, generation=g, slots=slots, stream=stream)
        state, _ = es.tell(spec, k_tell, pop, jnp.asarray(result["fitness"], jnp.float32), state)
    z = np.asarray(es.mean_of(spec, state))
    k = np.asarray([s.k for s in p.stmts], np.float32)
    k[idx] = signs * np.exp(z)
    return with_constants(p, k)


def knock_out(p: Program, i: int) -> Program | None:
    """``p`` without live statement ``i``: its readers read its first argument."""
    s = p.stmts[i]
    args = reads(s)
    if not args:
        return None
    reg, repl = p.n_in + i, args[0]
    f = lambda r: repl if r == reg else (r - 1 if r > reg else r)  # noqa: E731
    stmts = tuple(Stmt(t.op, f(t.a), f(t.b), t.k) for j, t in enumerate(p.stmts) if j != i)
    q = p.but(stmts, [f(r) for r in p.out])
    return simplify(q) if is_valid(q) else None


def fixed_scores(evo: Evolution, programs: list[Program], scorer=None, tuned: bool = False,
                 baked: list[float] | None = None) -> list[dict]:
    """``programs``' scores on the fixed evaluation seeds (``scorer``'s, default the run's): at
    their baked multiplier, or ``tuned``, each task at its best of the search's grid (``baked``:
    the multiplier each program carries, divided out); in calls of one shape, the one the
    finalists are scored in. Per program ``score_programs``' row (``fitness``, ``metrics``)."""
    scorer = scorer or evo.scorer
    per = evo.full_batch if tuned else evo.full_batch * len(evo.grid)
    out: list[dict] = []
    for at in range(0, len(programs), per):
        part = programs[at:at + per]
        out += evo.score_programs(scorer, part, [0] * len(part), evo.full_batch, fixed=True,
                                  tuned=tuned, baked=None if baked is None else baked[at:at + per])
    return out


def task_scores(row: dict) -> dict[str, float]:
    """Each task's score in a ``score_programs`` row (at its own multiplier with
    ``lr_per_task``): which task a finalist fails, beside the suite's fitness."""
    return {t: m["fitness"] for t, m in row["metrics"].items() if isinstance(m, dict)}


def final_scoring(cfg, setup, evo: Evolution) -> tuple[Any, bool] | None:
    """The scorer the finalists are scored again with and whether each task counts at its own
    multiplier (``search.lr_per_task``); None when the core's scores stand (at the baked
    multiplier, on the run's seeds)."""
    s = cfg.search
    if not (s.lr_per_task or s.final_seeds):
        return None
    return scorer_at(cfg, setup, evo.space, cfg.budget, seeds=s.final_seeds), s.lr_per_task


def ablate(evo: Evolution, p: Program, score: float, tolerance: float, rounds: int = 8,
           scoring: tuple[Any, bool] | None = None,
           baked: float = 1.0) -> tuple[Program, float, list[dict]]:
    """Greedy knock-out ablation on the fixed evaluation seeds (``scoring``: ``final_scoring``'s
    scorer and tuning; ``baked``: the multiplier ``p`` carries), one batched call per round."""
    scorer, tuned = scoring or (None, False)
    steps = []
    for _ in range(rounds):
        variants = [(i, q) for i in live_statements(p) if (q := knock_out(p, i)) is not None]
        if not variants:
            break
        scores = [r["fitness"] for r in fixed_scores(evo, [q for _, q in variants], scorer,
                                                     tuned, [baked] * len(variants))]
        best = int(np.argmin(scores))
        if scores[best] > score + tolerance:
            break
        i, q = variants[best]
        steps.append({"op": OPS[p.stmts[i].op].name, "statement": i, "score": scores[best],
                      "before": score})
        p, score = q, scores[best]
    return p, score, steps


class MetaValidation:
    """The best-so-far program at ``funnel_scale`` x the budget, every few generations."""

    def __init__(self, cfg, setup, evo: Evolution):
        self.evo = evo
        self.scorer = scorer_at(cfg, setup, evo.space, cfg.budget, scale=cfg.search.funnel_scale)
        self.last: tuple[str, float] | None = None
        self.history: list[dict] = []

    def check(self, generation: int) -> float:
        best = self.evo.best
        if self.last is None or self.last[0] != best.key:
            m = _multiplier(self.evo, best.key)
            r = self.evo.score_programs(self.scorer, [bake_lr(simplify(best.program), m)], [0],
                                        1, fixed=True, rows_to=1, tuned=self.evo.s.lr_per_task,
                                        baked=[m])[0]
            self.last = (best.key, r["fitness"])
        self.history.append({"generation": generation, "hash": best.key,
                             "search_fitness": best.fitness, "validation": self.last[1]})
        return self.last[1]


def finalists(cfg, store, run_id: str, setup, evo: Evolution, validated: list[str] = ()
              ) -> dict[str, tuple[Program, str, str, float]]:
    """The ``output.top_k`` best programs of the run with the lr multiplier the search picked
    baked in, the warm start (so the report says what the search added), the ES-tuned
    structures and the ``validated`` search keys (those meta-validation scored, when the funnel
    selects): final key -> (program, parent key, origin, the multiplier baked in)."""
    s = cfg.search
    rows = [(r, "search") for r in store.best_members(run_id, k=max(cfg.output.top_k,
                                                                      s.es.top, 1))]
    rows += [(store.candidate(h), "validation") for h in dict.fromkeys(validated)
             if h not in {r["hash"] for r, _ in rows}]
    found: list[tuple[str, Program, str]] = []  # (search key, program, origin)
    for row, origin in rows:
        genome = treeio.tree_from_npz(row["genome"])
        found.append((row["hash"], Program.from_arrays(genome, "program", evo.start.sig),
                      origin))
    finals: dict[str, tuple[Program, str, str, float]] = {}
    known = [k for k, _, _ in found] + evo.keys([evo.start])
    for stage in ("full", "short") if evo.short is not None else ("full",):
        evo.cache.load_metrics(known, stage)  # a resumed run has not seen every key here

    def add(p: Program, parent: str, origin: str) -> None:
        m = _multiplier(evo, parent)
        q = bake_lr(p, m)
        finals.setdefault(evo.keys([q])[0], (q, parent, origin, m))

    for n, (key, p, origin) in enumerate(found):
        if n < cfg.output.top_k or key in validated:
            add(simplify(p), key, origin)
    add(simplify(evo.start), evo.keys([evo.start])[0], "start")
    for n, (key, p, _) in enumerate([f for f in found if f[2] == "search"][:s.es.top]):
        log(f"ES on the constants of structure {n + 1}/{s.es.top} ({key[:10]})")
        tuned = tune_constants(cfg, setup, evo, simplify(p), _multiplier(evo, key), n)
        if tuned is not None:
            add(tuned, key, "es")
    return finals


def after_search(cfg, setup, evo: Evolution, finals: dict[str, tuple[Program, str, str, float]],
                 scores: dict[str, float], validation: MetaValidation | None
                 ) -> tuple[dict[str, tuple[Program, str, str, float]], dict[str, float], dict,
                            dict[str, float]]:
    """The finalists scored again (``final_scoring``), the knock-out ablation of the best, the
    funnel and the report: (new finalists and the finalists scored again, their scores, the
    report of ``finalists.json``, the selection scores: the funnel's, or its mean with the
    final score, when it selects, else none)."""
    s = cfg.search
    more: dict[str, tuple[Program, str, str, float]] = {}
    more_scores: dict[str, float] = {}
    baked = scores
    scoring = final_scoring(cfg, setup, evo)
    per_task: dict[str, dict[str, float]] = {}
    if scoring is not None:
        keys = list(finals)
        rows = fixed_scores(evo, [finals[k][0] for k in keys], *scoring,
                            [finals[k][3] for k in keys])
        scores = {k: r["fitness"] for k, r in zip(keys, rows, strict=True)}
        per_task = {k: task_scores(r) for k, r in zip(keys, rows, strict=True)}
        more_scores = dict(scores)  # the core's scores at the baked multiplier give way
        log(f"finalists scored again ({scoring[0].seeds} seeds"
            f"{', each task at its own multiplier' if scoring[1] else ''}): best "
            f"{min(scores.values()):+.4f}")
    report: dict[str, Any] = {"finalists": [
        {"hash": k, "parent": parent, "origin": origin, "multiplier": m, "final": scores[k],
         **({"baked": baked[k], "tasks": per_task[k]} if scoring is not None else {}),
         "source": to_source(p)}
        for k, (p, parent, origin, m) in finals.items()]}
    if s.simplify:
        best_key = min(scores, key=scores.get)
        p, parent, _, m = finals[best_key]
        q, q_score, steps = ablate(evo, p, scores[best_key], s.simplify_tolerance,
                                   scoring=scoring, baked=m)
        report["ablation"] = {"from": best_key, "steps": steps, "source": to_source(q)}
        if steps:
            key = evo.keys([q])[0]
            if key not in finals:
                more[key] = (q, best_key, "ablation", m)
                more_scores[key] = q_score
            report["ablation"]["hash"] = key
            log(f"ablation: {len(steps)} statement(s) dropped, score {scores[best_key]:.4f} -> "
                f"{q_score:.4f}")
    selection: dict[str, float] = {}
    if s.funnel:
        every = {**finals, **more}
        seen = {v["hash"] for v in validation.history} if validation is not None else set()
        validated = [k for k, (_, parent, origin, _) in every.items()
                     if s.select != "final" and origin in ("search", "validation")
                     and parent in seen]
        report["funnel"] = _funnel(cfg, setup, evo, every, {**scores, **more_scores}, s.funnel,
                                   validated)
        if s.select != "final":
            selection = {r["hash"]: r["funnel"] if s.select == "funnel"
                         else (r["final"] + r["funnel"]) / 2 for r in report["funnel"]
                         if np.isfinite(r["funnel"]) and np.isfinite(r["final"])}
        if selection:
            best = min(selection, key=selection.get)
            row = next(r for r in report["funnel"] if r["hash"] == best)
            report["selection"] = {"by": s.select, "scale": s.funnel_scale, "hash": best,
                                   "score": selection[best], "funnel": row["funnel"],
                                   "final": row["final"]}
            log(f"selected by {'the funnel' if s.select == 'funnel' else 'final and funnel'} "
                f"(x{s.funnel_scale}): {best[:10]} {selection[best]:+.4f}")
    if validation is not None:
        report["meta_validation"] = validation.history
    return more, more_scores, report, selection


def _funnel(cfg, setup, evo: Evolution, finals: dict, scores: dict, top: int,
            also: list[str] = ()) -> list[dict]:
    """The ``top`` best finalists by their final score and the ``also`` keys, at
    ``funnel_scale`` x the budget on the fixed evaluation seeds."""
    scorer = scorer_at(cfg, setup, evo.space, cfg.budget, scale=cfg.search.funnel_scale)
    keys = list(dict.fromkeys(sorted(scores, key=scores.get)[:top] + list(also)))
    res = evo.score_programs(scorer, [finals[k][0] for k in keys], [0] * len(keys), len(keys),
                             fixed=True, rows_to=len(keys), tuned=cfg.search.lr_per_task,
                             baked=[finals[k][3] for k in keys])
    out = [{"hash": k, "final": scores[k], "funnel": r["fitness"],
            "scale": cfg.search.funnel_scale, "tasks": task_scores(r)}
           for k, r in zip(keys, res, strict=True)]
    for row in out:
        log(f"funnel x{row['scale']}: {row['hash'][:10]} {row['final']:+.4f} -> "
            f"{row['funnel']:+.4f}")
    return out
