"""`lab launch`: the run lifecycle and the one generation loop that every kind runs.

A kind supplies a ``Driver`` (its search step in evosax's ask/tell style: ask for candidates,
evaluate them through the run's ``Scorer``, tell the search what they scored) and this module does
the rest, the same way for every kind:

* the run's lifecycle in the store (created, running, done / failed / interrupted), its resolved
  config beside it, and a log line naming the kind, suite and mesh;
* per generation: the driver's ``step``, a checkpoint at the configured cadence (orbax,
  committed before the store's row that names it), one store transaction, a line in
  ``metrics.jsonl``, the progress bar and the caller's ``on_generation`` hook;
* exact resume (``--resume RUN``): the newest checkpoint the store also recorded is restored into
  the driver, and the generations after it are run again;
* finalists: the driver names its answer and best candidates, they are scored on the fixed
  evaluation seeds (the context shared with references and replay; the cache serves what was
  scored before), and these scores rank the run;
* several processes (``lab.core.hosts``): every process runs this loop over its shard of each
  generation with the store's answers shared from process 0, which alone writes the store, the
  run's files, the checkpoints (as host arrays, shared back on resume) and the progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from lab import __version__, treeio
from lab.console import log
from lab.core import hosts
from lab.core.checkpoints import Checkpoints
from lab.core.config import config_hash, config_to_dict, dump_yaml, load_config
from lab.core.evaluate import make_mesh
from lab.core.fitness import Scorer
from lab.core.kind import Kind, get
from lab.core.store import Store
from lab.progress import GenerationProgress


@dataclasses.dataclass
class Setup:
    """What a run's driver works with, built once per run."""

    cfg: Any
    kind: Kind
    rule: Any
    scorer: Scorer
    mesh: Any
    store: Store
    run_id: str = ""


class Step(NamedTuple):
    """What one generation gives the loop to record.

    Attributes:
      stats: best, mean, hits, misses, hit_rate, evaluated, seconds, candidates_per_s, and
        diverged where the kind measures it (the store's generation row).
      candidates: new store candidate rows (``candidate_row``).
      evaluations: new cache entries (``evaluation_row``).
      members: ``{"hash", "fitness", "generation"}`` per member of the generation.
      hits: hashes served from the cache (each adds one hit to its evaluation).
      extra: more numbers for ``metrics.jsonl`` (``best_so_far`` where the driver keeps its own).
      context: the evaluation context key of the generation's scores (default: the run's).
    """

    stats: dict
    candidates: list = []
    evaluations: list = []
    members: list = []
    hits: list = []
    extra: dict = {}
    context: str | None = None


class Finalist(NamedTuple):
    """A candidate scored at the end: its genome (in the scorer's form) and store row."""

    genome: Any
    row: dict


class AfterSearch(NamedTuple):
    """What a driver adds after the finalists are scored: more finalists with their scores
    (and the evaluations that produced them), a report (``finalists.json``), and where the
    driver selects by another score than the final one (a longer horizon), that score of the
    finalists it ranks first (``selection``: hash -> score, lower is better; the run's answer
    is the lowest)."""

    finalists: dict = {}
    scores: dict = {}
    evaluations: list = []
    report: dict = {}
    selection: dict = {}


class Driver(Protocol):
    """A kind's search, stepped by the loop (``Kind.make_driver(cfg, setup) -> Driver``).

    Attributes:
      final_rows: the population shape the finalists are scored in (one the search compiled).
    """

    final_rows: int

    def state(self, generation: int) -> Any:
        """The search state after ``generation``, a pytree of arrays (an orbax checkpoint)."""

    def template(self) -> Any:
        """The pytree ``state`` restores into (None: as saved)."""

    def restore(self, tree: Any, first: int) -> None:
        """Puts the search where ``state`` found it; ``first`` is the next generation."""

    def step(self, generation: int) -> Step:
        """One generation: ask, score through the scorer, tell."""

    def finalists(self) -> dict[str, Finalist]:
        """The search's answer and its best candidates, by store hash."""

    def after_search(self, finals: dict[str, Finalist], scores: dict[str, float]) -> AfterSearch:
        """Stages after the finalists are scored (ablation, funnel, ...)."""


def candidate_row(rule: Any, h: str, genome: Any, parent: str | None = None,
                  fingerprint: np.ndarray | None = None) -> dict:
    """A store candidate: ``genome`` of ``rule`` under hash ``h``."""
    return {"hash": h, "kind": rule.kind, "name": rule.name,
            "genome": treeio.tree_to_npz(jax.tree.map(np.asarray, genome)),
            "readable": rule.describe(genome), "parent": parent,
            "fingerprint": None if fingerprint is None else treeio.tree_to_npz(fingerprint)}


def evaluation_row(h: str, context: str, scorer: Scorer, result: dict, i: int) -> dict:
    """A cache entry: member ``i`` of a scorer's ``result`` under hash ``h``."""
    metrics = scorer.row_metrics(result, i)
    return {"hash": h, "context": context, "fitness": float(result["fitness"][i]),
            "diverged": any(m.get("diverged", False) for m in metrics.values()
                            if isinstance(m, dict)), "metrics": metrics}


def build_setup(cfg: Any, store: Store) -> Setup:
    """The kind, its rule family, the mesh and the scorer of a config."""
    kind = get(cfg.kind)
    rule = kind.make_rule(cfg)
    mesh = make_mesh(cfg.evaluator.devices)
    return Setup(cfg, kind, rule, kind.make_scorer(cfg, rule, store, mesh), mesh, store)


def launch(cfg: Any, store: Store, name: str | None = None, resume: str | None = None,
           on_generation: Callable[[int], None] | None = None) -> str:
    """Runs the search a config describes; returns the run id.

    Args:
      cfg: a ``Config`` (ignored with ``resume``).
      store: where the run is recorded (over several processes a ``hosts.SharedStore``).
      name: the run's name (default: the config's).
      resume: a run id or name: continue that run from its latest checkpoint that the store
        also recorded, with the run's own stored config.
      on_generation: called with the index of each generation once it is committed.
    """
    if resume is not None:
        row = store.get_run(resume)
        path = store.run_dir(row["id"]) / "config.yaml"
        cfg = load_config(path, text=hosts.leader_value(path.read_text))
        run_id, name = row["id"], row["name"]
    agree_on_config(cfg)
    setup = build_setup(cfg, store)
    if resume is None:
        name = name or cfg.name
        run_id = store.create_run(name, cfg.kind, config_to_dict(cfg), config_hash(cfg),
                                  __version__, setup.scorer.context.key(),
                                  setup.scorer.context.to_json())
        folder = store.run_dir(run_id)
        if hosts.is_leader():
            (folder / "config.yaml").write_text(dump_yaml(cfg))
    else:
        store.finish_run(run_id, "running")
    setup.run_id = run_id
    search = cfg.search
    strategy, population = getattr(search, "strategy", cfg.kind), getattr(search, "population", "?")
    processes = f" over {hosts.count()} processes" if hosts.count() > 1 else ""
    log(f"run {run_id} ({name}): {cfg.kind}:{setup.rule.name} on suite {cfg.suite}, {strategy} "
        f"population {population} x {search.generations} generations, {len(jax.devices())} "
        f"device(s) [{jax.default_backend()}]{processes}, mesh {setup.mesh.devices.size}")
    path = getattr(store, "path", None)
    if path is not None:  # a lost peer stops this process: the run is marked failed first
        hosts.on_lost(lambda: Store(path).finish_run(run_id, "failed"))
    try:
        driver = setup.kind.make_driver(cfg, setup)
        best = run(setup, driver, on_generation)
    except BaseException as e:
        if hosts.is_leader():  # the others wait on process 0's answers: only it writes
            store.finish_run(run_id, "interrupted" if isinstance(e, KeyboardInterrupt)
                             else "failed")
        raise
    row = store.get_run(run_id)
    store.finish_run(run_id, "done", row["best"], row["best_hash"])
    log(f"done: run {run_id} best fitness {best:.4f} (lower is better; 0 = "
        f"{setup.scorer.zero})")
    return run_id


def agree_on_config(cfg: Any) -> None:
    """Over several processes: every process must run process 0's config (same file, same
    ``--set``), else it stops with one line saying so."""
    mine = config_hash(cfg)
    first = hosts.share(mine)
    if first != mine:
        raise hosts.HostsError(f"process {hosts.index()} loaded a different config than "
                               f"process 0 (digest {mine} vs {first}): give every process the "
                               "same file and --set overrides")


def host_tree(tree: Any) -> Any:
    """A driver state as host arrays (sharded leaves gathered): what process 0 checkpoints."""
    return jax.tree.map(hosts.gather, tree)


def run(setup: Setup, driver: Driver, on_generation: Callable[[int], None] | None = None
        ) -> float:
    """Resumes where the store and the checkpoints agree, runs the remaining generations, scores
    the finalists; returns the run's best final score."""
    cfg, store, run_id = setup.cfg, setup.store, setup.run_id
    folder, leader = store.run_dir(run_id), hosts.is_leader()
    every, checkpoints, first = cfg.output.checkpoint_every, None, 0
    if every:
        recorded = [g["idx"] for g in store.generations(run_id) if g["checkpoint"]]
        if leader:
            checkpoints = Checkpoints(folder / "checkpoints")
        step = hosts.leader_value(lambda: checkpoints.resume_step(recorded))
        if step is not None:
            log(f"resuming run {run_id} after generation {step + 1} from "
                f"{folder / 'checkpoints'}")
            first = step + 1
    metrics_path = folder / "metrics.jsonl"
    if leader:
        truncate_metrics(metrics_path, first)
    if first:
        like = host_tree(driver.template())

        def restore():  # process 0 reads it; the others get the leaves (they know the tree)
            tree = checkpoints.restore(first - 1, like)
            return tree if like is None else jax.tree.leaves(tree)
        tree = hosts.leader_value(restore)
        if like is not None:
            tree = jax.tree.unflatten(jax.tree.structure(like), tree)
        driver.restore(tree, first)
    generations = cfg.search.generations
    best_so_far = min((g["best"] for g in store.generations(run_id)
                       if g["idx"] < first and g["best"] is not None), default=math.inf)
    with GenerationProgress(generations) as progress, \
            open(metrics_path, "a") if leader else contextlib.nullcontext() as mf:
        for g in range(first, generations):
            out = driver.step(g)
            stats = {"checkpoint": None, **out.stats}
            if every and ((g + 1) % every == 0 or g + 1 == generations):
                state = host_tree(driver.state(g))
                if leader:
                    stats["checkpoint"] = checkpoints.save(g, state)
            store.record_generation(run_id, g, out.candidates, out.evaluations, out.members,
                                    stats, out.hits, context=out.context)
            best_so_far = min(best_so_far, stats["best"])
            line = {"generation": g, **stats, **out.extra}
            line.setdefault("best_so_far", best_so_far)
            if leader:
                mf.write(json.dumps(line) + "\n")
                mf.flush()
            progress.update(g, stats, line["best_so_far"])
            if on_generation is not None:
                on_generation(g)
    best = finish(setup, driver)
    if cfg.output.plots:
        rows = store.generations(run_id)  # every process asks: process 0's store answers
        if leader:
            from lab.plots import fitness_over_generations
            fitness_over_generations(rows, folder / "fitness.png", f"{cfg.name} ({run_id})",
                                     ylabel=setup.scorer.label)
    return best


def score_fixed(scorer: Scorer, store: Store, genomes: dict[str, Any], rows: int
                ) -> tuple[dict[str, float], list[dict], list[str]]:
    """Scores on the fixed evaluation seeds, served from the cache where it can: ``(score by
    hash, new evaluations, hashes the cache served)``; the misses are scored ``rows`` at a time
    (padded), a population shape the run compiled already."""
    ctx = scorer.context.key()
    cached = store.lookup(list(genomes), ctx)
    scores = {h: float(c["fitness"]) for h, c in cached.items()}
    todo = [h for h in genomes if h not in cached]
    evaluations = []
    for start in range(0, len(todo), rows):
        part = todo[start:start + rows]
        padded = part + [part[-1]] * (rows - len(part))
        batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                             *[genomes[h] for h in padded])
        result = scorer.score(batch)
        for i, h in enumerate(part):
            evaluations.append(evaluation_row(h, ctx, scorer, result, i))
            scores[h] = evaluations[-1]["fitness"]
    return scores, evaluations, list(cached)


def finish(setup: Setup, driver: Driver) -> float:
    """Scores the driver's finalists on the fixed evaluation seeds, lets it add its stages after
    the search, and records them all as the last generation's finalists."""
    cfg, store, run_id = setup.cfg, setup.store, setup.run_id
    finals = driver.finalists()
    genomes = {h: f.genome for h, f in finals.items()}
    scores, evaluations, hits = score_fixed(setup.scorer, store, genomes, driver.final_rows)
    after = driver.after_search(finals, scores)
    finals = {**finals, **after.finalists}
    scores = {**scores, **after.scores}
    last = cfg.search.generations - 1
    stats = store.generations(run_id)[-1]
    store.record_generation(
        run_id, last, [f.row for f in finals.values()], evaluations + list(after.evaluations),
        [{"hash": h, "final": scores[h], "generation": last,
          **({"selection": after.selection[h]} if h in after.selection else {})}
         for h in finals],
        {k: stats[k] for k in ("best", "mean", "hits", "misses", "hit_rate", "evaluated",
                               "seconds", "candidates_per_s", "checkpoint", "diverged")},
        hits, context=setup.scorer.context.key())
    folder = store.run_dir(run_id)
    if after.report and hosts.is_leader():
        (folder / "finalists.json").write_text(
            json.dumps(after.report, indent=1) + "\n")
    best = min(scores.values())
    log(f"final scores on the fixed evaluation seeds: best {best:.4f} of {len(finals)} "
        "finalists")
    if after.selection:
        h = min(after.selection, key=after.selection.get)
        best = scores[h]
        log(f"selected {h[:10]}: selection score {after.selection[h]:.4f}, final {best:.4f}")
    return float(best)


def truncate_metrics(path, first: int) -> None:
    """Drops the lines of generations that a resumed run is about to redo."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["generation"] < first]
    path.write_text("".join(ln + "\n" for ln in keep))
