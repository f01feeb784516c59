"""The core's one generation loop (lab/core/loop.py), through a toy kind whose driver and scorer
are plain Python: lifecycle and statuses, metrics.jsonl, checkpoint cadence, exact resume after a
crash, finalists and the report after the search. And one stored result re-scored exactly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lab import treeio
from lab.core import kind as K
from lab.core.config import load_config
from lab.core.es import spec_of, task_key_index
from lab.core.fitness import EvalContext
from lab.core.loop import AfterSearch, Finalist, Step, build_setup, candidate_row, launch
from lab.core.rule import stack_genomes
from lab.core.schema import field


@dataclasses.dataclass(frozen=True)
class ToyRule:
    start: float = field(10.0)
    lr: float = 1.0


@dataclasses.dataclass(frozen=True)
class ToySearch:
    population: int = field(3, ge=1)
    generations: int = field(5, ge=1)
    crash_at: int = -1  # a generation whose step raises (the test's crash)
    interrupt_at: int = -1  # a generation whose step raises KeyboardInterrupt


class ToyScorer:
    """fitness = x^2 (no JAX); the protocol's attributes."""

    def __init__(self):
        self.context = EvalContext("tiny", "0", 0, 1, 1.0, ())
        self.tasks, self.trains, self.zero, self.label = [], {}, "x = 0", "x^2"

    def score(self, genomes, generation=None, slots=None, stream=0):
        x = np.asarray(genomes["x"], np.float64)
        return {"fitness": x**2, "tasks": {}}

    def row_metrics(self, result, i):
        return {"toy": {"fitness": float(result["fitness"][i]), "diverged": False}}


class ToyRuleFamily:
    kind, name = "toy", "toy"
    genome = {"x": np.float32(0.0)}

    @staticmethod
    def describe(genome):
        return f"x = {float(genome['x']):g}"


class ToyDriver:
    """Halves x each generation; its population is x and x +- 1."""

    def __init__(self, cfg, setup):
        self.cfg, self.setup = cfg, setup
        self.x = {"x": np.asarray(cfg.rule.start, np.float64)}
        self.final_rows = 2

    def state(self, generation):
        return self.x

    def template(self):
        return self.x

    def restore(self, tree, first):
        self.x = tree

    def step(self, g):
        if g == self.cfg.search.crash_at:
            raise RuntimeError(f"crash in generation {g}")
        if g == self.cfg.search.interrupt_at:
            raise KeyboardInterrupt
        self.x = {"x": np.asarray(self.x["x"] / 2, np.float64)}
        pop = {"x": float(self.x["x"]) + np.arange(-1, 2, dtype=np.float32)}
        fitness = self.setup.scorer.score(pop)["fitness"]
        rule = self.setup.rule
        genomes = [{"x": np.float32(v)} for v in pop["x"]]
        hashes = [f"{g}-{i}" for i in range(3)]
        return Step({"best": float(fitness.min()), "mean": float(fitness.mean()), "hits": 0,
                     "misses": 3, "hit_rate": 0.0, "evaluated": 3, "seconds": 0.0,
                     "candidates_per_s": 0.0},
                    [candidate_row(rule, h, x) for h, x in zip(hashes, genomes, strict=True)],
                    [], [{"hash": h, "fitness": float(f)} for h, f in
                         zip(hashes, fitness, strict=True)], extra={"x": float(self.x["x"])})

    def finalists(self):
        rule, out = self.setup.rule, {}
        for row in self.setup.store.best_members(self.setup.run_id, k=2):
            genome = treeio.tree_from_npz(row["genome"])
            out[row["hash"]] = Finalist(genome, candidate_row(rule, row["hash"], genome))
        return out

    def after_search(self, finals, scores):
        return AfterSearch(report={"finalists": sorted(finals)})


@pytest.fixture
def toy(monkeypatch):
    kind = dataclasses.replace(
        K.get("baseline"), name="toy", rule_config=ToyRule, search_config=ToySearch,
        make_rule=lambda cfg: ToyRuleFamily, make_scorer=lambda *a: ToyScorer(),
        make_driver=ToyDriver)
    monkeypatch.setitem(K._REGISTERED, "toy", kind)
    return kind


def toy_config(*sets):
    return load_config(None, ["kind=toy", "suite=tiny", "output.plots=false", *sets])


def test_lifecycle_metrics_and_finalists(toy, store):
    calls = []
    run_id = launch(toy_config(), store, name="toy", on_generation=calls.append)
    assert calls == [0, 1, 2, 3, 4]
    run = store.get_run(run_id)
    assert run["status"] == "done" and run["generations"] == 5 and run["kind"] == "toy"
    lines = [json.loads(ln) for ln in (store.run_dir(run_id) / "metrics.jsonl").read_text()
             .splitlines()]
    assert [ln["generation"] for ln in lines] == [0, 1, 2, 3, 4]
    assert [ln["x"] for ln in lines] == [5.0, 2.5, 1.25, 0.625, 0.3125]
    assert lines[-1]["best_so_far"] == min(ln["best"] for ln in lines)
    finals = [m for m in store.best_members(run_id, k=100) if m["final"] is not None]
    assert len(finals) == 2 and run["best"] == min(m["final"] for m in finals)
    report = json.loads((store.run_dir(run_id) / "finalists.json").read_text())
    assert report == {"finalists": sorted(m["hash"] for m in finals)}
    assert (store.run_dir(run_id) / "config.yaml").exists()


def test_checkpoint_cadence_crash_and_exact_resume(toy, store, tmp_path):
    straight = launch(toy_config("output.checkpoint_every=2"), store, name="straight")
    with pytest.raises(RuntimeError, match="crash in generation 3"):
        launch(toy_config("output.checkpoint_every=2", "search.crash_at=3"), store, name="cut")
    cut = store.get_run("cut")
    assert cut["status"] == "failed" and cut["generations"] == 3
    gens = store.generations(cut["id"])
    assert [g["checkpoint"] is not None for g in gens] == [False, True, False]
    # the config stored with the run says crash_at=3: resume from a copy without it
    folder = store.run_dir(cut["id"])
    text = (folder / "config.yaml").read_text().replace("crash_at: 3", "crash_at: -1")
    (folder / "config.yaml").write_text(text)
    assert launch(None, store, resume="cut") == cut["id"]
    a, b = store.get_run(straight), store.get_run(cut["id"])
    assert b["status"] == "done" and b["generations"] == 5 and b["best"] == a["best"]
    hist = [(g["idx"], g["best"], g["mean"]) for g in store.generations(b["id"])]
    assert hist == [(g["idx"], g["best"], g["mean"]) for g in store.generations(straight)]
    # generation 2 was redone from generation 1's checkpoint: metrics.jsonl holds it once
    lines = [json.loads(ln)["generation"] for ln in (folder / "metrics.jsonl").read_text()
             .splitlines()]
    assert lines == [0, 1, 2, 3, 4]
    assert [g["checkpoint"] is not None for g in store.generations(b["id"])] == \
        [False, True, False, True, True]  # every 2 generations, and the last


def test_interrupted_run_is_marked(toy, store):
    with pytest.raises(KeyboardInterrupt):
        launch(toy_config("search.interrupt_at=1"), store, name="int")
    assert store.get_run("int")["status"] == "interrupted"


def test_stored_result_replays_exactly(store):
    """Every reported number is reproducible from (config, seed, code): re-score a member of a
    baseline run in its generation's context."""
    cfg = load_config(None, ["suite=tiny", "search.population=4", "search.generations=2",
                             "evaluator.devices=1", "seeds=2", "output.plots=false",
                             "rule.init={learning_rate: 0.01}"])
    run_id = launch(cfg, store, name="t")
    best = min((m for m in store.best_members(run_id, k=100) if m["final"] is None),
               key=lambda m: m["search_fitness"])
    row = store.candidate(best["hash"])
    setup = build_setup(cfg, store)
    genome = treeio.tree_from_npz(row["genome"])
    spec, _ = spec_of(cfg.search, setup.rule.genome)
    slots = np.asarray(task_key_index(spec))
    # the run's compiled shape: the genome in every lane, each lane its slot's keys
    out = setup.scorer.score(stack_genomes([genome] * len(slots)),
                             generation=best["generation"], slots=slots)
    gaps = np.abs(out["fitness"] - best["search_fitness"])
    assert gaps.min() <= 1e-6 * max(1.0, abs(best["search_fitness"]))
