"""`lab launch` for ``kind: program``: the generation loop of the evolution, recorded in the
store one transaction per generation, then the stages after the search (``finalize.py``).

Every ``output.checkpoint_every`` generations the evolution's state (``Evolution.state``) is an
orbax checkpoint, written before the store's row that names it; a resumed run restores the
newest one the store recorded and goes on from the generation after it.
"""

from __future__ import annotations

import json

import tasks as task_registry
from lab.checkpoints import Checkpoints
from lab.console import log
from lab.fitness import SuiteScorer
from lab.progress import GenerationProgress
from lab.references import LR_GRID, References
from lab.search import finalize
from lab.search.evolution import Evolution, candidate_row, describe_start


def short_scorer(cfg, setup) -> SuiteScorer | None:
    """The hurdle's short-run scorer (None without a hurdle)."""
    s = cfg.search
    if not s.hurdle:
        return None
    budget = s.hurdle_budget or cfg.budget // 5
    if budget <= 0:
        raise ValueError("search.hurdle_budget: set it (or budget) when search.hurdle > 0: the "
                         "short run needs a number of inner steps")
    return scorer_at(cfg, setup, budget)


def scorer_at(cfg, setup, budget: int, scale: int = 1, rule=None) -> SuiteScorer:
    """A scorer like the run's at another budget, or ``scale`` times its budget (references at
    that budget), or for another rule family."""
    base = setup.scorer
    refs = References(setup.store, setup.mesh)
    ref_loss = {t.name: refs.adam_loss(t, (budget or t.steps) * scale, cfg.seeds)
                for t in base.tasks}
    return SuiteScorer(cfg.suite, task_registry.suite_version(cfg.suite), base.tasks,
                       rule or base.rule, budget, cfg.seeds, ref_loss, lr=cfg.rule.lr,
                       mesh=setup.mesh, chunk=cfg.evaluator.chunk, unroll=cfg.evaluator.unroll,
                       lr_grid=LR_GRID, scale=scale)


def run_program_search(cfg, store, run_id: str, setup) -> float:
    """The generation loop; returns the best final score."""
    from lab.launch import truncate_metrics
    start, where = describe_start(cfg)
    short = short_scorer(cfg, setup)
    evo = Evolution(cfg, store, run_id, setup.scorer, short, start)
    run_dir = store.run_dir(run_id)
    first = 0
    if cfg.output.checkpoint_every:
        setup.checkpoints = ckpt = Checkpoints(run_dir / "checkpoints")
        step = ckpt.resume_step(g["idx"] for g in store.generations(run_id) if g["checkpoint"])
        if step is not None:
            log(f"resuming run {run_id} after generation {step + 1} from {ckpt.folder}")
            first = evo.restore(ckpt.restore(step))
    log(f"program search from {where} ({len(start)} statements), population "
        f"{cfg.search.population}, {cfg.search.children} children per generation, lr grid "
        f"{list(evo.grid)}" + (f", hurdle {cfg.search.hurdle} at {short.budget} steps"
                               if short else ""))
    seeded = evo.seed_population() if first == 0 else []
    if first:  # what the lost process had in memory: scores and lr multipliers from the store
        evo.cache.as_of = (run_id, first)
        evo.cache.load([m.key for m in [*evo.population, evo.best]], "full")
    metrics_path = run_dir / "metrics.jsonl"
    truncate_metrics(metrics_path, first)
    validation = finalize.MetaValidation(cfg, setup, evo) if cfg.search.meta_validate_every \
        else None
    if validation is not None and first:
        validation.history = validation_history(metrics_path)
    with GenerationProgress(cfg.search.generations) as progress, open(metrics_path, "a") as mf:
        for g in range(first, cfg.search.generations):
            out = evo.step(g)
            stats, extra = out["stats"], out["extra"]
            evaluations, seeded = seeded + out["evaluations"], []
            joined = out["members"] + ([evo.seed_member] if g == 0 else [])
            candidates = [candidate_row(m.program, m.key, m.parent, evo.length,
                                        evo.cache.fingerprints.get(m.key))
                          for m in {m.key: m for m in reversed(joined)}.values()]
            members = [{"hash": m.key, "fitness": m.fitness, "generation": g} for m in joined]
            if validation is not None and (g + 1) % cfg.search.meta_validate_every == 0:
                extra["meta_validation"] = validation.check(g)
            if setup.checkpoints is not None and ((g + 1) % cfg.output.checkpoint_every == 0
                                                  or g + 1 == cfg.search.generations):
                stats["checkpoint"] = setup.checkpoints.save(g, evo.state(g))
            evaluated = {e["hash"] for e in out["evaluations"]}
            hits = [m.key for m in out["members"] if m.key not in evaluated]
            store.record_generation(run_id, g, candidates, evaluations, members, stats, hits,
                                    context=evo.context("full", 0))
            mf.write(json.dumps({"generation": g, **stats, **extra}) + "\n")
            mf.flush()
            progress.update(g, stats, extra["best_so_far"])
    return finalize.finish(cfg, store, run_id, setup, evo, validation)


def validation_history(metrics_path) -> list[dict]:
    """The meta-validation history of the generations in ``metrics.jsonl`` (a resumed run's)."""
    if not metrics_path.exists():
        return []
    lines = [json.loads(ln) for ln in metrics_path.read_text().splitlines()]
    return [{"generation": d["generation"], "hash": d["best_hash"],
             "search_fitness": d["best_so_far"], "validation": d["meta_validation"]}
            for d in lines if "meta_validation" in d]
