"""Environment levels and the drift kind's curricula: levels from seeds, PPO on levels, the PLR
sampler, regret, the curriculum driver and its run outputs."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import lab.kinds  # noqa: F401 - registers the kinds
import tasks
from lab.core.config import ConfigError, load_config
from lab.core.evaluate import compile_count, evaluate, task_keys
from lab.core.loop import build_setup, launch
from lab.core.rule import stack_genomes
from lab.core.store import Store
from lab.kinds.drift.curriculum import (
    CurriculumDriver,
    empty_buffer,
    insert,
    replay_probabilities,
)
from lab.kinds.drift.objectives import ppo_clip
from lab.kinds.drift.ppo import make_level_train, make_train
from lab.kinds.drift.scoring import level_fitness
from tasks.levels import (
    HELDOUT_SEED,
    SPACES,
    level_overrides,
    level_task,
    stacked_overrides,
)

SMOKE = "configs/lpo_curriculum_smoke.yaml"
TINY = ["budget=512", "search.population=4", "rule.hidden=4", "output.plots=false",
        "output.top_k=1"]


# ---- levels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", sorted(SPACES))
def test_levels_are_reproducible_from_their_seeds(env_id):
    a, b = level_overrides(env_id, 7), level_overrides(env_id, 7)
    assert a == b and a != level_overrides(env_id, 8)
    assert set(a) == set(SPACES[env_id].names)
    defaults = tasks.rl.default_params(env_id)
    for name, low, high in SPACES[env_id].factors:  # within the space (4-digit rounding)
        base = float(getattr(defaults, name))
        assert low * base * 0.999 <= a[name] <= high * base * 1.001, name
    stacked = stacked_overrides(env_id, [7, 8, 7])
    assert {k: float(v[0]) for k, v in stacked.items()} == \
        {k: float(np.float32(v)) for k, v in a.items()}
    np.testing.assert_array_equal(stacked[name][0], stacked[name][2])


def test_cartpole_levels_keep_derived_parameters_consistent():
    p = level_overrides("CartPole-v1", 3)
    assert p["total_mass"] == pytest.approx(p["masscart"] + p["masspole"], rel=1e-3)
    assert p["polemass_length"] == pytest.approx(p["masspole"] * p["length"], rel=1e-3)


def test_environments_without_a_level_space_have_one_level():
    assert level_overrides("Catch-bsuite", 5) == {} and stacked_overrides("Catch-bsuite", [1]) == {}


def test_heldout_levels_are_seeds_no_search_draws():
    held = tasks.get_suite("rl-levels-heldout")
    assert len(held) == 6
    for t in held:
        base = tasks.get_task(t.name.split("_level_")[0])
        seed = HELDOUT_SEED + int(t.name.rsplit("_h", 1)[1])
        assert dict(t.env_params) == level_overrides(t.env_id, seed)
        assert (t.env_id, t.steps, t.lr) == (base.env_id, base.steps, base.lr)
    assert tasks.suite_version("rl-levels-heldout") == tasks.suite_version("rl-levels-heldout")


# ---- PPO on levels ----------------------------------------------------------------------------

def _tiny_task():
    return tasks.get_task("cartpole_smoke")


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_level_train_at_no_overrides_is_the_task_bit_for_bit():
    task, o = _tiny_task(), ppo_clip()
    keys = task_keys(2, 1)
    plain = evaluate(make_train(task, o, 512), stack_genomes([o.genome]), keys)
    level = evaluate(make_level_train(task, o, 512), (stack_genomes([o.genome]), {}), keys)
    for k in plain:
        np.testing.assert_array_equal(plain[k], level[k])


@pytest.mark.slow  # two PPO compiles (~9 s)
def test_level_train_runs_the_level_its_seed_names():
    task, o = _tiny_task(), ppo_clip()
    keys = task_keys(2, 1)
    seed = 11
    baked = evaluate(make_train(level_task(task, seed), o, 512), stack_genomes([o.genome]), keys)
    traced = evaluate(make_level_train(task, o, 512),
                      (stack_genomes([o.genome]), stacked_overrides(task.env_id, [seed])), keys)
    np.testing.assert_allclose(traced["final_return"], baked["final_return"], rtol=1e-5)
    default = evaluate(make_train(task, o, 512), stack_genomes([o.genome]), keys)
    assert not np.array_equal(default["final_return"], traced["final_return"])


# ---- the sampler and the buffer -------------------------------------------------------------

def test_rank_prioritization_closed_form():
    scores = np.array([0.1, 0.9, -0.2, 0.5], np.float32)
    p = replay_probabilities(scores, np.zeros(4), 3, temperature=1.0, staleness=0.0)
    h = 1.0 / np.array([3.0, 1.0, 4.0, 2.0])
    np.testing.assert_allclose(p, h / h.sum())
    stale = replay_probabilities(scores, np.array([3, 3, 0, 3]), 3, temperature=1.0,
                                 staleness=1.0)
    np.testing.assert_allclose(stale, [0, 0, 1, 0])


def test_sampler_favours_high_regret_levels_on_a_fixed_buffer():
    scores = np.linspace(-0.5, 1.0, 10).astype(np.float32)
    last = np.zeros(10, np.int32)
    p = replay_probabilities(scores, last, 5, temperature=0.3, staleness=0.3)
    assert np.isclose(p.sum(), 1.0) and np.all(p > 0)
    assert np.all(np.diff(p) > 0)  # the higher the regret, the likelier the replay
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.choice(10, 20_000, p=p), minlength=10)
    assert counts[-1] > 3 * counts[0] and counts[-3:].sum() > counts[:3].sum() * 3
    # staleness: a level left unsampled longest gains probability
    last[0] = -20
    assert replay_probabilities(scores, last, 5, 0.3, 0.3)[0] > p[0]


def test_buffer_keeps_the_highest_regret_levels():
    buf = empty_buffer(3)
    for seed, score in ((1, 0.2), (2, 0.5), (3, 0.1)):
        assert insert(buf, seed, score, 0, 10.0, 1.0)
    assert int(buf["count"]) == 3
    assert not insert(buf, 4, 0.05, 1, 10.0, 1.0)  # lower than every kept level
    assert insert(buf, 5, 0.3, 1, 10.0, 1.0)  # replaces the lowest (seed 3)
    assert sorted(buf["seed"].tolist()) == [1, 2, 5]
    assert buf["seed"].dtype == np.int32 and buf["score"].dtype == np.float32


# ---- regret ----------------------------------------------------------------------------------

def _driver(tmp_path, *overrides):
    cfg = load_config(SMOKE, [*TINY, *overrides])
    setup = build_setup(cfg, Store(tmp_path / "lab.db"))
    return CurriculumDriver(cfg, setup)


@pytest.mark.slow  # a driver's reference runs and PPO on every level (~25 s)
def test_regret_of_ppo_clip_against_itself_is_zero(tmp_path):
    d = _driver(tmp_path, "seeds=2")
    d.prepare(0)
    task = d.level_tasks[0]
    lv = d.levels[task.name]
    assert (lv.index == -1).all() and (lv.seeds < HELDOUT_SEED).all()
    # PPO-clip trained on each level on the seeds its reference was measured on
    o, n = ppo_clip(), len(lv.seeds)
    m = evaluate(make_level_train(task, o, d.scorer.steps(task)),
                 (stack_genomes([o.genome] * n), lv.overrides), task_keys(2, n))
    regret = level_fitness(m, lv.ppo, lv.random)
    np.testing.assert_array_equal(regret, np.zeros(n))
    # a random policy's return on a level scores 1 (where PPO-clip beats it clearly)
    clear = lv.ppo - lv.random > 0.5 * np.abs(lv.ppo)
    random_like = {"final_return": lv.random[:, None], "diverged": np.zeros((n, 1), bool)}
    np.testing.assert_allclose(level_fitness(random_like, lv.ppo, lv.random)[clear], 1.0)


@pytest.mark.slow  # two drivers' reference runs (~14 s); the run test below replays too
def test_uniform_never_replays_and_regret_replays_from_the_buffer(tmp_path):
    uni = _driver(tmp_path / "u", "search.curriculum=uniform")
    reg = _driver(tmp_path / "r", "search.curriculum=regret", "search.replay_prob=1.0")
    pop = uni.spec.population
    metrics = [{"cartpole_smoke": {"fitness": 0.1 * i}} for i in range(pop)]
    for d in (uni, reg):
        for g in range(3):
            d.prepare(g)
            d.observe(g, np.zeros(pop), metrics)
    assert int(uni.buffers["cartpole_smoke"]["count"]) == 0
    assert all((lv.index == -1).all() for lv in uni.levels.values())
    # generation 0 filled the buffer with its 2 fresh levels; 1 and 2 replayed them all
    assert int(reg.buffers["cartpole_smoke"]["count"]) == 2
    assert (reg.levels["cartpole_smoke"].index >= 0).all()
    # the levels each slot ran get the mean regret of its members (slots i % 2)
    np.testing.assert_allclose(sorted(reg.buffers["cartpole_smoke"]["score"][:2]), [0.1, 0.2])


def test_curriculum_needs_the_regret_fitness():
    with pytest.raises(ConfigError, match="search.curriculum"):
        load_config(SMOKE, ["search.fitness=final_return"])
    with pytest.raises(ConfigError, match="curriculum"):
        load_config(SMOKE, ["search.curriculum=hardest"])


def test_curriculum_on_a_suite_without_levels_is_an_error(tmp_path):
    cfg = load_config(SMOKE, [*TINY, "suite=rl-heldout", "budget=0"])  # shipped references
    with pytest.raises(ValueError, match="no environment of suite rl-heldout has levels"):
        CurriculumDriver(cfg, build_setup(cfg, Store(tmp_path / "lab.db")))


# ---- a whole run ------------------------------------------------------------------------------

@pytest.mark.slow  # a whole search with reference runs per level (~30 s)
def test_curriculum_run_compiles_once_and_reports_regret(tmp_path):
    cfg = load_config(SMOKE, [*TINY, "search.generations=5", "search.buffer=3",
                              "output.plots=true"])
    store = Store(tmp_path / "lab.db")
    counts = []
    run_id = launch(cfg, store, on_generation=lambda g: counts.append(compile_count()))
    assert counts[1:] == [counts[1]] * (len(counts) - 1), counts  # nothing after generation 1
    folder = store.run_dir(run_id)
    lines = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    cur = [ln["curriculum"]["cartpole_smoke"] for ln in lines]
    assert [c["buffer"] for c in cur][-1] == 3  # the buffer is full and stays at its size
    assert any(any(c["replayed"]) for c in cur[1:])
    report = json.loads((folder / "finalists.json").read_text())["curriculum"]
    env = report["environments"]["cartpole_smoke"]
    assert env["levels_sampled"] == 5 * 2 and env["buffer"] == 3
    assert env["replays"] == sum(sum(c["replayed"]) for c in cur)
    assert [h["regret"] for h in env["hardest"]] == sorted(
        [h["regret"] for h in env["hardest"]], reverse=True)
    assert (folder / "regret.png").stat().st_size > 0 and report["plot"].endswith("regret.png")
    # the generation's context names its levels: the same genome on other levels is not a hit
    ctxs = {row["context"] for row in store.conn.execute(
        "SELECT DISTINCT context FROM evaluations").fetchall()}
    assert len(ctxs) >= 5
    jax.clear_caches()


@pytest.mark.slow  # PPO on six held-out levels x three objectives (~2 min on 2 cores)
def test_export_of_a_curriculum_run_replays_on_unseen_levels(cli, tmp_path):
    rc, out, err = cli("launch", SMOKE, *[a for o in [*TINY, "search.generations=2"]
                                          for a in ("--set", o)], "--name", "cur")
    assert rc == 0, err
    rc, out, err = cli("export", "cur:0", "--name", "cur-art", "--out", str(tmp_path / "art"),
                       "--suite", "rl-smoke", "--seeds", "1")
    assert rc == 0, err
    art = tmp_path / "art" / "cur-art"
    metrics = json.loads((art / "metrics.json").read_text())
    levels = metrics["levels"]
    assert levels["suite"] == "rl-levels-heldout" and levels["seeds"] == 1
    assert {r["task"] for r in levels["rows"]} == set(tasks.SUITES["rl-levels-heldout"])
    assert {r["rule"] for r in levels["rows"]} == {"cur:0", "ppo_clip", "dpo"}
    assert all(r["score"] == 0.0 for r in levels["rows"] if r["rule"] == "ppo_clip")
    assert "## Unseen levels (rl-levels-heldout, 1 seeds)" in (art / "README.md").read_text()
    doc = json.loads(cli("inspect", "cur", "--json")[1])
    assert doc["after_search"]["curriculum"]["mode"] == "regret"


def test_an_artifact_exported_again_replays_on_the_unseen_levels_of_its_curriculum(
        monkeypatch, tmp_path):
    """The curriculum comes from the artifact's metrics.json (no run config travels with it)."""
    from lab.commands.artifacts import load_artifact
    from lab.kinds.drift import replay as R
    target = load_artifact(Path("discovered/lpo-curriculum-regret"))
    assert target.curriculum == "regret" and target.trained_on == "rl-levels"
    suites = []
    monkeypatch.setattr(R, "replay_rl", lambda t, suite, seeds, *a, **k: suites.append(suite))
    R.export(target, None, "rl-heldout", 1)
    assert suites == ["rl-heldout", "rl-levels", R.LEVELS_HELDOUT]
    plain = load_artifact(Path("discovered/lpo-rl-train"))
    assert plain.curriculum is None
    suites.clear()
    R.export(plain, None, "rl-heldout", 1)
    assert R.LEVELS_HELDOUT not in suites
    # a metrics.json whose search record is not what it should be says nothing
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree("discovered/lpo-curriculum-regret", broken)
    (broken / "metrics.json").write_text('{"search": {"after_search": [1, 2]}}')
    assert load_artifact(broken).curriculum is None
