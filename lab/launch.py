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

import tasks as task_registry
from lab import __version__, treeio
from lab.checkpoints import Checkpoints
from lab.config import Config, config_hash, config_to_dict, dump_yaml, load_config
from lab.console import log
from lab.evaluate import chunk_for_memory, make_mesh
from lab.fitness import SuiteScorer, task_keys
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
    raise ValueError(f"kind {cfg.kind!r} has no search yet")


def genome_hash(rule: UpdateRule, genome: Any) -> str:
    """Cheap identity of a continuous genome (ES members almost never collide functionally)."""
    h = hashlib.blake2b(f"{rule.kind}:{rule.name}:".encode(), digest_size=16)
    h.update(treeio.tree_to_npz(genome))
    return h.hexdigest()


@dataclass
class Setup:
    """What a search needs, built once per run."""

    rule: UpdateRule
    scorer: SuiteScorer
    mesh: Any


def build_setup(cfg: Config, store: Store, rule: UpdateRule | None = None) -> Setup:
    rule = rule or rule_from_config(cfg)
    mesh = make_mesh(cfg.evaluator.devices)
    tasks = task_registry.get_suite(cfg.suite)
    refs = References(store, mesh)
    ref_loss = {t.name: refs.adam_loss(t, cfg.budget or t.steps, cfg.seeds) for t in tasks}
    scorer = SuiteScorer(cfg.suite, task_registry.suite_version(cfg.suite), tasks, rule,
                         cfg.budget, cfg.seeds, ref_loss, lr=cfg.rule.lr, mesh=mesh,
                         chunk=cfg.evaluator.chunk, unroll=cfg.evaluator.unroll, lr_grid=LR_GRID)
    return Setup(rule, scorer, mesh)


def launch(cfg: Config, store: Store, name: str | None = None, resume: str | None = None) -> str:
    """Runs the search a config describes; returns the run id.

    With ``resume`` (a run id or name), continues that run from its latest checkpoint that the
    store also recorded, with the run's own stored config (``cfg`` is then ignored).
    """
    if resume is not None:
        run = store.get_run(resume)
        cfg = load_config(str(store.run_dir(run["id"]) / "config.yaml"))
        run_id, name = run["id"], run["name"]
    if cfg.kind != "baseline":
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
        best = run_es(cfg, store, run_id, setup)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    run = store.get_run(run_id)
    store.finish_run(run_id, "done", run["best"], run["best_hash"])
    log(f"done: run {run_id} best fitness {best:.4f} (lower is better; 0 = tuned Adam)")
    return run_id


def run_es(cfg: Config, store: Store, run_id: str, setup: Setup) -> float:
    rule, scorer = setup.rule, setup.scorer
    flat = es.Flattener.of(rule.genome)
    spec = es.ESSpec(cfg.search.strategy, cfg.search.population, int(flat.flat.size),
                     cfg.search.sigma, cfg.search.lr, cfg.search.optimizer,
                     cfg.search.elite_ratio)
    key = jax.random.key(cfg.search.seed)
    state = es.init(spec, jax.random.fold_in(key, 0), flat.flat)
    ckpt = (Checkpoints(store.run_dir(run_id) / "checkpoints")
            if cfg.output.checkpoint_every > 0 else None)
    first = 0
    if ckpt is not None:
        done = [g["idx"] for g in store.generations(run_id) if g["checkpoint"]]
        step = ckpt.latest(at_most=max(done)) if done else None
        if step is not None:
            state = ckpt.restore(step, state)
            first = step + 1
            log(f"resuming run {run_id} after generation {step + 1} from {ckpt.folder}")
    slots = np.asarray(es.task_key_index(spec))
    if cfg.evaluator.memory_mb > 0:
        probe = flat.population(np.asarray(flat.flat)[None])
        scorer.chunk = min(chunk_for_memory(t, probe, task_keys(cfg.seeds, 1), setup.mesh,
                                            cfg.evaluator.memory_mb)
                           for t in scorer.trains.values())
    metrics_path = store.run_dir(run_id) / "metrics.jsonl"
    best_overall = float("inf")
    with GenerationProgress(cfg.search.generations) as progress, open(metrics_path, "a") as mf:
        for g in range(first, cfg.search.generations):
            start = time.perf_counter()
            k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g + 1))
            flat_pop, state = es.ask(spec, k_ask, state)
            genomes = flat.population(flat_pop)
            on_host = jax.tree.map(np.asarray, genomes)
            host = [genome_at(on_host, i) for i in range(spec.population)]
            hashes = [genome_hash(rule, g_i) for g_i in host]
            context = scorer.context.for_generation(g, slots)
            ctx_key = context.key()
            cached = store.lookup(sorted(set(hashes)), ctx_key)
            misses = [h for h in dict.fromkeys(hashes) if h not in cached]
            fitness = np.empty(spec.population)
            evaluations = []
            if misses:
                result = scorer.score(genomes, generation=g, slots=slots)
                index = {h: i for i, h in reversed(list(enumerate(hashes)))}
                for h in misses:
                    i = index[h]
                    evaluations.append({"hash": h, "context": ctx_key,
                                        "fitness": float(result["fitness"][i]),
                                        "diverged": bool(any(m["diverged"][i].any()
                                                             for m in result["tasks"].values())),
                                        "metrics": _row_metrics(result, i)})
                fresh = {e["hash"]: e["fitness"] for e in evaluations}
            else:
                fresh = {}
            for i, h in enumerate(hashes):
                fitness[i] = fresh[h] if h in fresh else cached[h]["fitness"]
            state, _ = es.tell(spec, k_tell, flat_pop, np.asarray(fitness, np.float32), state)
            seconds = time.perf_counter() - start
            hits = [h for h in hashes if h in cached]
            stats = {"best": float(np.min(fitness)), "mean": float(np.mean(fitness)),
                     "hits": len(hits), "misses": len(misses),
                     "hit_rate": len(hits) / len(hashes), "evaluated": len(misses),
                     "seconds": seconds, "candidates_per_s": len(hashes) / max(seconds, 1e-9),
                     "checkpoint": None}
            every = cfg.output.checkpoint_every
            if ckpt is not None and ((g + 1) % every == 0 or g + 1 == cfg.search.generations):
                stats["checkpoint"] = ckpt.save(g, state)
            candidates = [{"hash": h, "kind": rule.kind, "name": rule.name,
                           "genome": treeio.tree_to_npz(host[i]),
                           "readable": rule.describe(host[i]),
                           "fingerprint": None, "parent": None}
                          for h, i in {h: i for i, h in enumerate(hashes)}.items()]
            members = [{"hash": h, "fitness": float(fitness[i]), "generation": g}
                       for i, h in enumerate(hashes)]
            if g + 1 == cfg.search.generations:
                final = _score_mean(rule, scorer, flat.unravel(es.mean_of(spec, state)),
                                    spec.population, store, g)
                candidates.append(final["candidate"])
                members.append(final["member"])
                if final["evaluation"] is not None:
                    evaluations.append(final["evaluation"])
                what = ("best member" if es.STRATEGIES[spec.strategy].population_based
                        else "ES mean")
                log(f"final {what} on the fixed evaluation seeds: "
                    f"fitness {final['member']['fitness']:.4f}")
            store.record_generation(run_id, g, candidates, evaluations, members, stats, hits,
                                    context=ctx_key)
            stored = store.get_run(run_id)["best"]  # includes generations before a resume
            best_overall = min(best_overall, stats["best"], np.inf if stored is None else stored)
            mf.write(json.dumps({"generation": g, **stats, "best_so_far": best_overall}) + "\n")
            mf.flush()
            progress.update(g, stats, best_overall)
    return best_overall


def _score_mean(rule: UpdateRule, scorer: SuiteScorer, genome: Any, population: int,
                store: Store, generation: int) -> dict:
    """Scores the search's final answer on the fixed evaluation seeds (the context references,
    replay and every other run share), reusing the compiled population shape."""
    host = jax.tree.map(np.asarray, genome)
    h = genome_hash(rule, host)
    ctx_key = scorer.context.key()
    cached = store.lookup([h], ctx_key)
    if h in cached:
        fitness, metrics = cached[h]["fitness"], None
    else:
        tiled = jax.tree.map(lambda x: np.repeat(x[None], population, axis=0), host)
        result = scorer.score(tiled)
        fitness, metrics = float(result["fitness"][0]), _row_metrics(result, 0)
    evaluation = None if metrics is None else {
        "hash": h, "context": ctx_key, "fitness": fitness,
        "diverged": any(m["diverged"] for m in metrics.values()), "metrics": metrics}
    return {"candidate": {"hash": h, "kind": rule.kind, "name": rule.name,
                          "genome": treeio.tree_to_npz(host), "readable": rule.describe(host),
                          "fingerprint": None, "parent": None},
            "evaluation": evaluation,
            "member": {"hash": h, "fitness": fitness, "generation": generation}}


def _row_metrics(result: dict, i: int) -> dict:
    """Per-task metrics of candidate i, JSON-able (means over seeds, curves kept)."""
    out = {}
    for name, m in result["tasks"].items():
        out[name] = {"fitness": float(m["fitness"][i]),
                     "final_loss": [float(x) for x in m["final_loss"][i]],
                     "eval_loss": [float(x) for x in m["eval_loss"][i]],
                     "curve": np.asarray(m["curve"][i]).mean(axis=0).tolist(),
                     "diverged": bool(m["diverged"][i].any())}
    return out
