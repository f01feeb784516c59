"""The program kind's driver in the core's generation loop: batched regularized evolution
(``evolution.Evolution``) one generation per step, then the stages after the search
(``finalize``).

The evolution's state (``Evolution.state``) is what the loop checkpoints; a resumed run reads the
store as of the generation it redoes, so it retraces an uninterrupted run exactly.
"""

from __future__ import annotations

import json

import numpy as np

from lab import treeio
from lab.console import log
from lab.core import hosts
from lab.core.loop import AfterSearch, Finalist, Step
from lab.kinds.program import evostate, finalize
from lab.kinds.program.evolution import Evolution
from lab.kinds.program.ir import Program, simplify
from lab.kinds.program.programs import genome_of, load_seed, read_program
from lab.kinds.program.signatures import signature
from lab.kinds.program.spaces import short_scorer, space_of
from lab.kinds.program.text import to_source


class ProgramDriver:
    """``lab.core.loop.Driver`` of ``kind: program``."""

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        start, where = describe_start(cfg)
        self.space = space = space_of(cfg)
        short = short_scorer(cfg, setup, space)
        self.evo = evo = Evolution(cfg, setup.store, setup.run_id, setup.scorer, short, start,
                                   space)
        self.validation = (finalize.MetaValidation(cfg, setup, evo)
                           if cfg.search.meta_validate_every else None)
        self.final_rows = evo.full_batch * len(evo.grid)
        self.programs: dict = {}  # final key -> (program, parent key, origin)
        log(f"program search from {where} ({len(start)} statements), population "
            f"{cfg.search.population}, {cfg.search.children} children per generation, lr grid "
            f"{list(evo.grid)}" + (f", hurdle {cfg.search.hurdle} at {short.budget} steps"
                                   if short else ""))

    def state(self, generation: int):
        return evostate.state(self.evo, generation)

    def template(self):
        return None  # the population's programs have the lengths they had: restored as saved

    def restore(self, tree, first: int) -> None:
        """The evolution as checkpointed, and what the lost process had in memory: scores and
        lr multipliers from the store as it was at generation ``first``."""
        evo = self.evo
        evostate.restore(evo, tree)
        evo.cache.as_of = (self.setup.run_id, first)
        evo.cache.load([m.key for m in [*evo.population, evo.best]], "full")
        if self.validation is not None:
            path = self.setup.store.run_dir(self.setup.run_id) / "metrics.jsonl"
            self.validation.history = hosts.leader_value(validation_history, path)

    def step(self, g: int) -> Step:
        evo = self.evo
        seeded = evo.seed_population() if g == 0 else []
        out = evo.step(g)
        stats, extra = out["stats"], out["extra"]
        joined = out["members"] + ([evo.seed_member] if g == 0 else [])
        candidates = [program_row(m.program, m.key, m.parent, evo.length,
                                  evo.cache.fingerprints.get(m.key), self.space.row)
                      for m in {m.key: m for m in reversed(joined)}.values()]
        members = [{"hash": m.key, "fitness": m.fitness, "generation": g} for m in joined]
        if self.validation is not None and (g + 1) % self.cfg.search.meta_validate_every == 0:
            extra["meta_validation"] = self.validation.check(g)
        evaluated = {e["hash"] for e in out["evaluations"]}
        hits = [m.key for m in out["members"] if m.key not in evaluated]
        return Step(stats, candidates, seeded + out["evaluations"], members, hits, extra,
                    evo.context("full", 0))

    def finalists(self) -> dict[str, Finalist]:
        """The best programs (their lr multipliers baked in), the start and the ES-tuned
        structures, each run once at multiplier 1 on the fixed seeds (the core scores them;
        ``after_search`` scores them again with ``lr_per_task`` or ``final_seeds``)."""
        setup, evo = self.setup, self.evo
        validated = ([v["hash"] for v in self.validation.history]
                     if self.validation is not None and self.cfg.search.select != "final"
                     else [])
        self.programs = finalize.finalists(self.cfg, setup.store, setup.run_id, setup, evo,
                                           validated)
        return {k: self._finalist(k, p, parent) for k, (p, parent, *_) in self.programs.items()}

    def _finalist(self, key: str, p, parent: str) -> Finalist:
        evo = self.evo
        return Finalist(self.space.genome(p, evo.length),
                        program_row(p, key, parent, evo.length, row=self.space.row))

    def after_search(self, finals: dict[str, Finalist], scores: dict[str, float]) -> AfterSearch:
        """The finalists scored again (``finalize.final_scoring``), the ablation of the best,
        the funnel (the selection, with ``select: funnel`` or ``both``), the meta-validation
        history."""
        more, more_scores, report, selection = finalize.after_search(
            self.cfg, self.setup, self.evo, self.programs, scores, self.validation)
        return AfterSearch({k: self._finalist(k, p, parent) for k, (p, parent, *_) in
                            more.items()}, more_scores, [], report, selection)


def validation_history(metrics_path) -> list[dict]:
    """The meta-validation history of the generations in ``metrics.jsonl`` (a resumed run's)."""
    if not metrics_path.exists():
        return []
    lines = [json.loads(ln) for ln in metrics_path.read_text().splitlines()]
    return [{"generation": d["generation"], "hash": d["best_hash"],
             "search_fitness": d["best_so_far"], "validation": d["meta_validation"]}
            for d in lines if "meta_validation" in d]


def program_row(m_program: Program, key: str, parent: str | None, length: int,
                fingerprint: np.ndarray | None = None, row=("program", "program")) -> dict:
    """A store candidate for a program (its genotype, introns included, as arrays), under the
    kind and family name ``row`` (its space's)."""
    genome = genome_of(m_program, max(length, len(m_program)))
    return {"hash": key, "kind": row[0], "name": row[1],
            "genome": treeio.tree_to_npz(genome), "readable": to_source(simplify(m_program)),
            "fingerprint": None if fingerprint is None else treeio.tree_to_npz(fingerprint),
            "parent": parent}


def describe_start(cfg) -> tuple[Program, str]:
    """The start program of a config: ``rule.file`` or the seed ``rule.seed`` (of the
    signature ``rule.signature``)."""
    sig = signature(cfg.rule.signature)
    if cfg.rule.file:
        p = read_program(cfg.rule.file, sig)
        return p, cfg.rule.file
    return load_seed(cfg.rule.seed, sig.name), f"seed {cfg.rule.seed}"

