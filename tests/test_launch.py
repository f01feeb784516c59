"""The search loop in-process: compile once per task shape, cache, resume, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from lab import treeio
from lab.config import load_config
from lab.evaluate import _compiled
from lab.fitness import SuiteScorer
from lab.launch import build_setup, launch
from lab.rules import rule_from_name
from lab.rules.base import stack_genomes
from lab.store import Store

SMALL = ["suite=smoke", "search.population=4", "search.generations=3", "evaluator.devices=1",
         "seeds=2", "rule.init={learning_rate: 0.01}"]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lab.db") as s:
        yield s


def test_generations_compile_once_and_are_recorded(store, monkeypatch):
    setups = []
    real = build_setup

    def spy(*a, **k):
        setups.append(real(*a, **k))
        return setups[-1]
    monkeypatch.setattr("lab.launch.build_setup", spy)
    cfg = load_config(None, SMALL)
    run_id = launch(cfg, store, name="t")
    (setup,) = setups
    for train in setup.scorer.trains.values():
        assert _compiled(train, setup.mesh)._cache_size() == 1  # three generations, one compile
    gens = store.generations(run_id)
    assert [g["idx"] for g in gens] == [0, 1, 2]
    assert all(g["misses"] == 4 and g["hits"] == 0 for g in gens)
    run = store.get_run(run_id)
    finalists = [m for m in store.best_members(run_id, k=100) if m["final"] is not None]
    assert 1 <= len(finalists) <= cfg.output.top_k + 1  # the top members and the ES mean
    assert run["status"] == "done" and run["best"] == min(m["final"] for m in finalists)
    assert store.best_members(run_id, k=1)[0]["hash"] == run["best_hash"]


def test_stored_result_replays_exactly(store):
    """Every reported number is reproducible from (config, seed, code): re-score the best."""
    cfg = load_config(None, SMALL)
    run_id = launch(cfg, store, name="t")
    best = min((m for m in store.best_members(run_id, k=100) if m["final"] is None),
               key=lambda m: m["search_fitness"])
    best["fitness"] = best["search_fitness"]
    row = store.candidate(best["hash"])
    rule = rule_from_name(row["kind"], row["name"])
    genome = treeio.tree_from_npz(row["genome"])
    setup = build_setup(cfg, store, rule)
    scorer: SuiteScorer = setup.scorer
    gen = best["generation"]
    from lab.search import es
    flat = es.Flattener.of(rule.genome)
    spec = es.ESSpec(cfg.search.strategy, cfg.search.population, int(flat.flat.size),
                     cfg.search.sigma, cfg.search.lr, cfg.search.optimizer,
                     cfg.search.elite_ratio)
    slots = np.asarray(es.task_key_index(spec))
    # the member's own slot: score it as a population of one in that slot
    members = [h for h in store.conn.execute(
        "select hash from members where run_id = ? and generation = ?", (run_id, gen))]
    assert members
    # the same compiled shape as the run: the best genome in every lane, each lane its slot's keys
    out = scorer.score(stack_genomes([genome] * len(slots)), generation=gen, slots=slots)
    gaps = np.abs(out["fitness"] - best["fitness"])
    assert gaps.min() <= 1e-6 * max(1.0, abs(best["fitness"]))


def test_resume_after_failure_matches_uninterrupted_run(store, monkeypatch, tmp_path):
    cfg = load_config(None, [*SMALL, "output.checkpoint_every=1"])
    full = launch(cfg, store, name="full")
    calls = {"n": 0}
    real = SuiteScorer.score

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in generation 3")
        return real(self, *a, **k)
    monkeypatch.setattr(SuiteScorer, "score", flaky)
    other = Store(tmp_path / "other" / "lab.db")  # a fresh cache, so generations really run
    with pytest.raises(RuntimeError):
        launch(load_config(None, [*SMALL, "output.checkpoint_every=1", "name=again"]), other)
    crashed = [r for r in other.runs() if r["name"] == "again"][0]
    assert crashed["status"] == "failed" and crashed["generations"] == 2
    monkeypatch.setattr(SuiteScorer, "score", real)
    # the cache would answer everything; resume must still restore the ES state exactly
    resumed = launch(None, other, resume=crashed["id"])
    assert resumed == crashed["id"]
    assert other.generations(resumed)[-1]["hits"] == 0
    a, b = store.get_run(full), other.get_run(resumed)
    assert b["status"] == "done" and b["generations"] == 3
    assert b["best"] == pytest.approx(a["best"], rel=1e-12)
    ga = [g["best"] for g in store.generations(full)]
    gb = [g["best"] for g in other.generations(resumed)]
    assert gb == pytest.approx(ga, rel=1e-12)
