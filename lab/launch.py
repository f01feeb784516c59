"""`lab launch`: one population search from a config, recorded generation by generation.

Continuous genomes (kind ``baseline`` here, learned rules later) are searched with an evosax
strategy. Each generation: ask -> hash -> consult the cache -> evaluate the misses in one compiled
call per task (the population padded to its fixed size) -> tell -> one store transaction.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import tasks as task_registry
from lab import __version__, treeio
from lab.checkpoints import Checkpoints
from lab.config import Config, config_hash, config_to_dict, dump_yaml, load_config
from lab.console import log
from lab.evaluate import chunk_for_memory, make_mesh
from lab.fitness import SuiteScorer, row_metrics, task_keys
from lab.progress import GenerationProgress
from lab.references import LR_GRID, References
from lab.rules.base import UpdateRule, genome_at
from lab.rules.baselines import make_baseline
from lab.search import es
from lab.store import Store


def rule_from_config(cfg: Config) -> UpdateRule:
    """The rule family a config searches over (its default genome is the starting point)."""
    if cfg.kind == "baseline":
        return make_baseline(cfg.rule.name, {**cfg.rule.fixed, **cfg.rule.init})
    if cfg.kind == "program":
        from lab.rules.program import program_rule
        return program_rule()
    if cfg.kind == "learned":
        from lab.rules.learned import init_genome, learned_rule
        features = cfg.rule.features()
        genome = init_genome(features, jax.random.key(cfg.rule.init_seed),
                             skip="adam" if cfg.rule.init == "adam" else None)
        return learned_rule(features, genome)
    if cfg.kind == "drift":
        from lab.rl.objectives import objective_from_name
        return objective_from_name(cfg.rule.family_name())
    raise ValueError(f"kind {cfg.kind!r} has no search yet")


def genome_hash(rule: UpdateRule, genome: Any) -> str:
    """Identity of a continuous genome: its float32 values in canonical (sorted-key) order.

    ES members almost never collide functionally, so they are not fingerprinted here (DESIGN.md);
    what is reported, exported or checked is.
    """
    flat, _ = ravel_pytree(jax.tree.map(lambda x: np.asarray(x, np.float32), genome))
    h = hashlib.blake2b(f"{rule.kind}:{rule.name}:".encode(), digest_size=16)
    h.update(np.asarray(flat, np.float32).tobytes())
    return h.hexdigest()


@dataclass
class Setup:
    """What a search needs, built once per run."""

    rule: UpdateRule
    scorer: SuiteScorer
    mesh: Any
    store: Store
    checkpoints: Checkpoints | None = None


def build_setup(cfg: Config, store: Store, rule: UpdateRule | None = None) -> Setup:
    rule = rule or rule_from_config(cfg)
    mesh = make_mesh(cfg.evaluator.devices)
    tasks = task_registry.get_suite(cfg.suite)
    if cfg.kind == "drift":
        from lab.rl.scoring import RLReferences, RLScorer
        refs = RLReferences(store, mesh)
        pairs = {t.name: refs.pair(t, cfg.budget or t.steps, cfg.seeds) for t in tasks}
        scorer = RLScorer(cfg.suite, task_registry.suite_version(cfg.suite), tasks, rule,
                          cfg.budget, cfg.seeds, pairs, cfg.search.fitness, mesh,
                          cfg.evaluator.chunk)
        return Setup(rule, scorer, mesh, store)
    refs = References(store, mesh)
    ref_loss = {t.name: refs.adam_loss(t, cfg.budget or t.steps, cfg.seeds) for t in tasks}
    scorer = SuiteScorer(cfg.suite, task_registry.suite_version(cfg.suite), tasks, rule,
                         cfg.budget, cfg.seeds, ref_loss, lr=cfg.rule.lr, mesh=mesh,
                         chunk=cfg.evaluator.chunk, unroll=cfg.evaluator.unroll, lr_grid=LR_GRID)
    return Setup(rule, scorer, mesh, store)


def launch(cfg: Config, store: Store, name: str | None = None, resume: str | None = None) -> str:
    """Runs the search a config describes; returns the run id.

    With ``resume`` (a run id or name), continues that run from its latest checkpoint that the
    store also recorded, with the run's own stored config (``cfg`` is then ignored).
    """
    if resume is not None:
        run = store.get_run(resume)
        cfg = load_config(str(store.run_dir(run["id"]) / "config.yaml"))
        run_id, name = run["id"], run["name"]
    if cfg.kind not in SEARCHES:
        raise ValueError(f"kind {cfg.kind!r} is not searchable yet")
    setup = build_setup(cfg, store)
    if resume is None:
        name = name or cfg.name
        run_id = store.create_run(name, cfg.kind, config_to_dict(cfg), config_hash(cfg),
                                  __version__, setup.scorer.context.key(),
                                  setup.scorer.context.to_json())
        (store.run_dir(run_id) / "config.yaml").write_text(dump_yaml(cfg))
    else:
        store.finish_run(run_id, "running")
    log(f"run {run_id} ({name}): {cfg.kind}:{setup.rule.name} on suite {cfg.suite}, "
        f"{cfg.search.strategy} population {cfg.search.population} x "
        f"{cfg.search.generations} generations, {len(jax.devices())} device(s) "
        f"[{jax.default_backend()}], mesh {setup.mesh.devices.size}")
    try:
        best = SEARCHES[cfg.kind](cfg, store, run_id, setup)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    run = store.get_run(run_id)
    store.finish_run(run_id, "done", run["best"], run["best_hash"])
    zero = "PPO-clip" if cfg.kind == "drift" else "tuned Adam"
    if cfg.kind == "drift" and cfg.search.fitness != "ppo_normalized":
        zero = f"minus the {cfg.search.fitness.replace('_', ' ')}"
    log(f"done: run {run_id} best fitness {best:.4f} (lower is better; 0 = {zero})")
    return run_id


def run_es(cfg: Config, store: Store, run_id: str, setup: Setup) -> float:
    """The generation loop of an evosax search; returns the best final score."""
    rule, scorer = setup.rule, setup.scorer
    flat = es.Flattener.of(rule.genome)
    spec = es.ESSpec(cfg.search.strategy, cfg.search.population, int(flat.flat.size),
                     cfg.search.sigma, cfg.search.lr, cfg.search.optimizer,
                     cfg.search.elite_ratio)
    key = jax.random.key(cfg.search.seed)
    state = es.init(spec, jax.random.fold_in(key, 0), flat.flat)
    state, first = resume_state(cfg, store, run_id, setup, state)
    slots = np.asarray(es.task_key_index(spec))
    if cfg.evaluator.memory_mb > 0:
        probe = flat.population(np.asarray(flat.flat)[None])
        scorer.chunk = min(chunk_for_memory(t, probe, task_keys(cfg.seeds, 1), setup.mesh,
                                            cfg.evaluator.memory_mb)
                           for t in scorer.trains.values())
    metrics_path = store.run_dir(run_id) / "metrics.jsonl"
    truncate_metrics(metrics_path, first)
    best_so_far = float("inf")
    with GenerationProgress(cfg.search.generations) as progress, open(metrics_path, "a") as mf:
        for g in range(first, cfg.search.generations):
            start = time.perf_counter()
            k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g + 1))
            flat_pop, state = es.ask(spec, k_ask, state)
            genomes = flat.population(flat_pop)
            on_host = jax.tree.map(np.asarray, genomes)
            host = [genome_at(on_host, i) for i in range(spec.population)]
            hashes = [genome_hash(rule, x) for x in host]
            ctx_key = scorer.context.for_generation(g, slots, cfg.search.seed).key()
            cached = store.lookup(sorted(set(hashes)), ctx_key)
            misses = [h for h in dict.fromkeys(hashes) if h not in cached]
            result = None
            evaluations, rejected = [], 0
            if misses:
                result = scorer.score(genomes, generation=g, slots=slots, stream=cfg.search.seed)
                rejected = int(np.sum(result.get("rejected", 0)))
                index = {h: i for i, h in reversed(list(enumerate(hashes)))}
                evaluations = [_evaluation(h, ctx_key, result, index[h]) for h in misses]
            fresh = {e["hash"]: e["fitness"] for e in evaluations}
            fitness = np.array([fresh[h] if h in fresh else cached[h]["fitness"] for h in hashes])
            state, _ = es.tell(spec, k_tell, flat_pop, np.asarray(fitness, np.float32), state)
            hits = [h for h in hashes if h in cached]
            unique = {h: i for i, h in enumerate(hashes)}
            candidates = [_candidate(rule, h, host[i]) for h, i in unique.items()]
            members = [{"hash": h, "fitness": float(fitness[i]), "generation": g}
                       for i, h in enumerate(hashes)]
            seconds = time.perf_counter() - start
            stats = {"best": float(np.min(fitness)), "mean": float(np.mean(fitness)),
                     "hits": len(hits), "misses": len(misses),
                     "hit_rate": len(hits) / len(hashes), "evaluated": len(misses),
                     "seconds": seconds, "candidates_per_s": len(hashes) / max(seconds, 1e-9),
                     "checkpoint": None}
            if setup.checkpoints is not None and (
                    (g + 1) % cfg.output.checkpoint_every == 0 or g + 1 == cfg.search.generations):
                stats["checkpoint"] = setup.checkpoints.save(g, state)
            store.record_generation(run_id, g, candidates, evaluations, members, stats, hits,
                                    context=ctx_key)
            best_so_far = min(best_so_far, stats["best"])
            extra = {"rejected": rejected} if "rejected" in (result or {}) else {}
            mf.write(json.dumps({"generation": g, **stats, **extra,
                                 "best_so_far": best_so_far}) + "\n")
            mf.flush()
            progress.update(g, stats, best_so_far)
    final = _finalists(cfg, store, run_id, setup, flat.unravel(es.mean_of(spec, state)),
                       spec.population)
    if cfg.output.plots:
        from lab.plots import fitness_over_generations
        label = {} if cfg.kind != "drift" else {"ylabel": f"fitness ({cfg.search.fitness}; "
                                                         "lower is better, 0 = PPO-clip)"}
        fitness_over_generations(store.generations(run_id),
                                 store.run_dir(run_id) / "fitness.png", f"{cfg.name} ({run_id})",
                                 **label)
    return final


def _program_search(cfg: Config, store: Store, run_id: str, setup: Setup) -> float:
    from lab.search.program_search import run_program_search
    return run_program_search(cfg, store, run_id, setup)


def _meta_training(cfg: Config, store: Store, run_id: str, setup: Setup) -> float:
    from lab.search.lopt import run_meta_training
    return run_meta_training(cfg, store, run_id, setup)


# kind -> the search loop: (cfg, store, run id, setup) -> best final score. Drift objectives
# are continuous genomes scored by whole PPO runs: the same ES loop with ``RLScorer``.
SEARCHES = {"baseline": run_es, "program": _program_search, "learned": _meta_training,
            "drift": run_es}


def resume_state(cfg: Config, store: Store, run_id: str, setup: Setup,
                 state: Any) -> tuple[Any, int]:
    """(state, first generation): the search state of any kind restored from the newest orbax
    checkpoint that the store also recorded (``state`` is the template, and the answer for a
    new run); sets ``setup.checkpoints`` when the config asks for checkpoints."""
    if not cfg.output.checkpoint_every:
        return state, 0
    setup.checkpoints = ckpt = Checkpoints(store.run_dir(run_id) / "checkpoints")
    step = ckpt.resume_step(g["idx"] for g in store.generations(run_id) if g["checkpoint"])
    if step is None:
        return state, 0
    log(f"resuming run {run_id} after generation {step + 1} from {ckpt.folder}")
    return ckpt.restore(step, state), step + 1


def truncate_metrics(path, first: int) -> None:
    """Drops the lines of generations that a resumed run (of any kind) is about to redo."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["generation"] < first]
    path.write_text("".join(ln + "\n" for ln in keep))


def _candidate(rule: UpdateRule, h: str, genome: Any) -> dict:
    return {"hash": h, "kind": rule.kind, "name": rule.name, "genome": treeio.tree_to_npz(genome),
            "readable": rule.describe(genome), "fingerprint": None, "parent": None}


def _evaluation(h: str, context: str, result: dict, i: int) -> dict:
    metrics = row_metrics(result, i)
    return {"hash": h, "context": context, "fitness": float(result["fitness"][i]),
            "diverged": any(m["diverged"] for m in metrics.values()), "metrics": metrics}


def _finalists(cfg: Config, store: Store, run_id: str, setup: Setup, mean: Any,
               population: int) -> float:
    """Re-scores the search's answer (the ES mean) and its ``top_k`` best members on the fixed
    evaluation seeds, the context that references, replay and every other run share: a run's
    best and its ranks come from these scores, not from one lucky generation's keys."""
    rule, scorer = setup.rule, setup.scorer
    mean = jax.tree.map(np.asarray, mean)
    genomes = {genome_hash(rule, mean): mean}
    for row in store.best_members(run_id, k=cfg.output.top_k):
        genomes.setdefault(row["hash"], treeio.tree_from_npz(row["genome"]))
    ctx_key = scorer.context.key()
    cached = store.lookup(list(genomes), ctx_key)
    todo = [h for h in genomes if h not in cached]
    evaluations = []
    for start in range(0, len(todo), population):  # in the run's compiled population shape
        part = todo[start:start + population]
        padded = part + [part[-1]] * (population - len(part))
        batch = jax.tree.map(lambda *xs: np.stack(xs), *[genomes[h] for h in padded])
        result = scorer.score(batch)
        evaluations += [_evaluation(h, ctx_key, result, i) for i, h in enumerate(part)]
    scores = {**{h: c["fitness"] for h, c in cached.items()},
              **{e["hash"]: e["fitness"] for e in evaluations}}
    last = cfg.search.generations - 1
    members = [{"hash": h, "final": scores[h], "generation": last} for h in genomes]
    stats = store.generations(run_id)[-1]
    stats = {k: stats[k] for k in ("best", "mean", "hits", "misses", "hit_rate", "evaluated",
                                   "seconds", "candidates_per_s", "checkpoint")}
    store.record_generation(run_id, last, [_candidate(rule, h, g) for h, g in genomes.items()],
                            evaluations, members, stats, [h for h in genomes if h in cached],
                            context=ctx_key)
    mean_score = scores[next(iter(genomes))]
    log(f"final scores on the fixed evaluation seeds: ES mean {mean_score:.4f}, best "
        f"{min(scores.values()):.4f} of {len(genomes)} finalists")
    return float(min(scores.values()))
