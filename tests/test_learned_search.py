"""Meta-training learned optimizers (lab/kinds/learned): truncated unrolls (dynamic horizons, one
compilation, common random numbers, the NaN policy), per-slot resets, persistent ES's
accumulators, other strategies. The whole run through the core's loop is in ``test_kinds``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.core.config import ConfigError, load_config
from lab.core.fitness import CLIP, normalized_score
from lab.core.hashing import genome_digest
from lab.core.loop import Finalist, build_setup
from lab.core.rule import stack_genomes
from lab.kinds.learned.rule import Features, init_genome, learned_rule
from lab.kinds.learned.search import LearnedDriver, sample_horizon
from lab.kinds.learned.unroll import (
    compiled,
    make_unroll,
    normalized,
    reference_at,
    start_population,
    unroll_population,
)

SMOKE = "configs/lopt_smoke.yaml"
FAST = ["suite=tiny", "search.generations=2", "search.population=4", "search.validate_every=0",
        "evaluator.devices=1", "output.plots=false"]
FEATURES = Features(hidden=4, depth=1)


def population(n: int, log_step: float = np.log(1e-2)):
    genomes = [{**init_genome(FEATURES, jax.random.key(i)),
                "log_step": jnp.asarray(log_step, jnp.float32)} for i in range(n)]
    return stack_genomes(genomes)


def test_normalized_matches_the_fitness_formula():
    loss = np.array([0.5, 1.0, 2.0, 1e-12, 1e9, np.nan, np.inf], np.float32)
    want = normalized_score(loss, np.zeros(loss.shape, bool), ref=0.8, floor=0.1)
    np.testing.assert_allclose(normalized(jnp.asarray(loss), 0.8, 0.1), want, rtol=1e-5)


def test_unroll_carries_state_compiles_once_and_shares_data_within_a_slot(tiny_task,
                                                                          one_device_mesh):
    rule = learned_rule(FEATURES)
    u = make_unroll(tiny_task, rule, 5, 1.0, "mean_loss", ref=0.05)
    genomes = population(4)
    # members 0 and 1 share a key (a slot); 2 and 3 share another
    keys = jax.random.split(jax.random.key(0), 2)[np.array([0, 0, 1, 1])]
    inner = start_population(u, genomes, keys, one_device_mesh)
    reset = np.ones(4, bool)
    inner, m1 = unroll_population(u, genomes, inner, reset, np.full(4, 40), np.zeros(4), keys,
                                  one_device_mesh)
    assert np.asarray(inner.t).tolist() == [5] * 4
    # a second truncation at another horizon continues the runs, with no new compilation
    inner2, m2 = unroll_population(u, genomes, inner, np.zeros(4, bool), np.full(4, 400),
                                   np.zeros(4), keys, one_device_mesh)
    assert np.asarray(inner2.t).tolist() == [10] * 4
    assert np.all(np.asarray(m2["loss"]) < np.asarray(m1["loss"]))  # training goes on
    assert compiled(u.unroll, one_device_mesh, True)._cache_size() == 1
    # the same genome with the same key is the same run (common random numbers)
    same = jax.tree.map(lambda x: x[np.array([0, 0, 2, 2])], genomes)
    fresh = start_population(u, same, keys, one_device_mesh)
    _, m = unroll_population(u, same, fresh, reset, np.full(4, 40), np.zeros(4), keys,
                             one_device_mesh)
    loss = np.asarray(m["meta_loss"])
    assert loss[0] == loss[1] and loss[2] == loss[3] and loss[0] != loss[2]


@pytest.mark.parametrize("meta_loss", ["mean_loss", "final_loss", "eval_loss"])
def test_diverged_members_score_worst(tiny_task, one_device_mesh, meta_loss):
    rule = learned_rule(FEATURES)
    u = make_unroll(tiny_task, rule, 5, 1.0, meta_loss, ref=0.05)
    genomes = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), population(2),
                           population(2, log_step=80.0))  # exp(80) overflows float32
    keys = jax.random.split(jax.random.key(1), 4)
    inner = start_population(u, genomes, keys, one_device_mesh)
    _, m = unroll_population(u, genomes, inner, np.ones(4, bool), np.full(4, 20), np.zeros(4),
                             keys, one_device_mesh)
    assert np.asarray(m["diverged"]).tolist() == [False, False, True, True]
    loss = np.asarray(m["meta_loss"])
    assert np.all(loss[2:] == CLIP) and np.all(np.isfinite(loss)) and np.all(loss[:2] < CLIP)


def test_reference_knots_interpolate_log_log_and_clamp_outside():
    knots = ((200, 1e-2), (800, 1e-4))
    t = jnp.asarray([0, 100, 200, 400, 800, 3200], jnp.int32)
    # halfway in log steps between 200 and 800 is halfway in log loss: 1e-3
    np.testing.assert_allclose(reference_at(knots, t), [1e-2, 1e-2, 1e-2, 1e-3, 1e-4, 1e-4],
                               rtol=1e-4)
    assert reference_at(((5, 0.3),), t) == 0.3  # one knot: the number itself, no array
    with pytest.raises(ValueError, match="distinct step counts"):
        make_unroll(None, learned_rule(FEATURES), 5, 1.0, "final_loss", ((10, 1.0), (10, 2.0)))


# each case compiles several unrolls (10-20 s on 2 cores): slow, CI runs them; the
# interpolation's closed form and the driver's knots are fast tests
@pytest.mark.slow
@pytest.mark.parametrize("meta_loss", ["mean_loss", "final_loss"])
def test_a_knotted_reference_measures_each_loss_at_its_step(tiny_task, one_device_mesh,
                                                             meta_loss):
    """A run's loss after ``t`` updates is normalized against the knots' reference at ``t``:
    two equal knots are the plain number, and the final loss of a run that continues past the
    first knot is measured against the interpolated reference at its step count."""
    rule = learned_rule(FEATURES)
    genomes = population(2)
    keys = jnp.stack([jax.random.key(3)] * 2)

    def meta(ref, t_start):
        u = make_unroll(tiny_task, rule, 5, 1.0, meta_loss, ref)
        inner = start_population(u, genomes, keys, one_device_mesh)
        _, m = unroll_population(u, genomes, inner, np.ones(2, bool), np.full(2, 40),
                                 np.full(2, t_start), keys, one_device_mesh)
        return np.asarray(m["meta_loss"]), np.asarray(m["loss"])

    flat, _ = meta(0.05, 0)
    np.testing.assert_allclose(meta(((1, 0.05), (1000, 0.05)), 0)[0], flat, rtol=1e-6)
    # steps 10..15 of a run: every reference step lies between the knots 5 and 20, whose
    # losses bracket the run's (so that no score is clipped)
    raw = float(np.mean(meta(0.05, 10)[1]))
    a, b = 4 * raw, raw / 4
    knots = ((5, a), (20, b))
    got, _ = meta(knots, 10)
    at = {t: a * (b / a) ** (np.log(t / 5) / np.log(4)) for t in range(10, 16)}
    if meta_loss == "final_loss":  # the same run, measured at 15 against the number at 15
        want, _ = meta(float(at[15]), 10)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    else:  # each step's loss against its own reference: strictly between the knots' scores
        low, _ = meta(a, 10)
        high, _ = meta(b, 10)
        assert np.all(low < got) and np.all(got < high)
        assert not np.allclose(got, meta(float(at[10]), 10)[0])


def test_horizons_are_log_uniform_and_offsets_whole_unrolls_only_at_the_start():
    cfg = load_config(SMOKE, ["search.unroll=10", "search.horizon_min=20",
                              "search.horizon_max=640"])
    draws = [sample_horizon(0, g, slot, cfg) for g in range(0, 40) for slot in range(8)]
    horizons = np.array([h for h, _ in draws])
    assert horizons.min() >= 20 and horizons.max() <= 640 and len(set(horizons)) > 100
    # log-uniform: about as many below the geometric middle (113) as above
    assert 0.35 < np.mean(horizons < 113) < 0.65
    assert all(o == 0 for _, o in draws[8:])
    first = draws[:8]
    assert any(o for _, o in first) and all(o % 10 == 0 and o < h for h, o in first)
    assert sample_horizon(0, 3, 1, cfg) == sample_horizon(0, 3, 1, cfg)  # reproducible


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_a_run_stops_at_its_horizon_inside_an_unroll(tiny_task, one_device_mesh):
    """Whole runs of sampled horizons in one static unroll: steps past the horizon change
    nothing and count for nothing."""
    rule = learned_rule(FEATURES)
    u = make_unroll(tiny_task, rule, 12, 1.0, "mean_loss", ref=0.05)
    genomes = population(2)
    keys = jnp.stack([jax.random.key(2)] * 2)
    inner = start_population(u, genomes, keys, one_device_mesh)
    short, m_short = unroll_population(u, genomes, inner, np.ones(2, bool), np.array([5, 12]),
                                       np.zeros(2), keys, one_device_mesh)
    assert np.asarray(short.t).tolist() == [5, 12]
    u5 = make_unroll(tiny_task, rule, 5, 1.0, "mean_loss", ref=0.05)
    inner = start_population(u5, genomes, keys, one_device_mesh)
    five, m_five = unroll_population(u5, genomes, inner, np.ones(2, bool), np.array([5, 5]),
                                     np.zeros(2), keys, one_device_mesh)
    np.testing.assert_allclose(short.params["x"][0], five.params["x"][0], rtol=1e-6)
    np.testing.assert_allclose(m_short["meta_loss"][0], m_five["meta_loss"][0], rtol=1e-6)


def test_config_refuses_inconsistent_meta_training(tmp_path):
    with pytest.raises(ConfigError, match="search.persistent.*Open_ES"):
        load_config(SMOKE, ["search.persistent=true", "search.strategy=PGPE"])
    with pytest.raises(ConfigError, match="search.horizon_max.*shorter than one unroll"):
        load_config(SMOKE, ["search.unroll=100", "search.horizon_min=10",
                            "search.horizon_max=50"])
    with pytest.raises(ConfigError, match="unknown meta_loss 'final'.*final_loss"):
        load_config(SMOKE, ["search.meta_loss=final"])
    with pytest.raises(ConfigError, match="rule.hiden: unknown key; did you mean hidden"):
        load_config(SMOKE, ["rule.hiden=3"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_slots_reset_together_on_divergence_and_at_their_horizon(store):
    cfg = load_config(SMOKE, FAST)
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    st = mt.tree
    mt.generation(0)
    assert np.all(st["t"] > 0) and not st["reset"].any()
    slots = mt.slots
    # runs of a slot share horizon and step
    for slot in np.unique(slots):
        assert len(set(st["horizon"][slots == slot])) == 1 and len(set(st["t"][slots == slot])) == 1
    # make slot 0's run end now: it restarts next generation, the others continue
    st["t"][slots == 0] = st["horizon"][slots == 0]
    before = st["t"].copy()
    out = mt.generation(1)
    assert out["extra"]["resets"] == int(np.sum(slots == 0))
    np.testing.assert_array_equal(st["t"][slots != 0], before[slots != 0] + cfg.search.unroll)
    # a diverging mean: every member diverges, every slot restarts, the fraction is counted
    flat = np.asarray(st["es"].mean).copy()
    marker = mt.flat.unravel(jnp.arange(flat.size, dtype=jnp.float32))
    flat[int(marker["log_step"])] = 80.0
    st["es"] = st["es"].replace(mean=jnp.asarray(flat))
    out = mt.generation(2)
    assert out["stats"]["diverged"] == 1.0 and out["stats"]["best"] == CLIP
    assert st["reset"].all()


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_persistent_es_accumulates_perturbations_until_the_slot_resets(store, monkeypatch):
    from lab.core import es
    cfg = load_config(SMOKE, [*FAST, "search.persistent=true", "search.horizon_min=1000",
                              "search.horizon_max=1000", "search.unroll=5"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    st, seen, ask = mt.tree, [], es.ask

    def spy(spec, key, state):
        pop, state = ask(spec, key, state)
        seen.append(np.asarray(pop) - np.asarray(state.mean))
        return pop, state
    monkeypatch.setattr(es, "ask", spy)
    mt.generation(0)
    np.testing.assert_allclose(st["accum"], seen[0], atol=1e-6)
    st["t"][:] = 0  # whatever the first offsets, no run ends within the next generations
    mt.generation(1)
    np.testing.assert_allclose(st["accum"], seen[0] + seen[1], atol=1e-6)
    st["reset"][mt.slots == 1] = True  # slot 1's run restarts: its members start over
    mt.generation(2)
    ones = mt.slots == 1
    np.testing.assert_allclose(st["accum"][ones], seen[2][ones], atol=1e-6)
    np.testing.assert_allclose(st["accum"][~ones], (seen[0] + seen[1] + seen[2])[~ones],
                               atol=1e-6)


# the mean's case is slow (make test's time): the ranks' case takes the same path
@pytest.mark.parametrize("task_fitness", [pytest.param("mean", marks=pytest.mark.slow), "ranks"])
def test_task_fitness_tells_the_es_each_tasks_centered_ranks_or_the_mean(store, monkeypatch,
                                                                        task_fitness):
    """``search.task_fitness``: the ES is told the members' meta-losses averaged over the tasks,
    or each task's centered ranks averaged, so a task with 100x the spread does not outvote the
    others; the generation's stats keep the raw mean either way."""
    from lab.core import es
    from lab.kinds.learned import search
    cfg = load_config(SMOKE, [*FAST, "search.population=8", f"search.task_fitness={task_fitness}"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    (name, u), = mt.unrolls.items()
    mt.unrolls["spread"] = u  # a second task: the same runs, meta-losses flipped and 100x
    mt.tree["inner"]["spread"] = jax.tree.map(np.copy, mt.tree["inner"][name])
    seen, told, real_unroll, real_tell = [], [], search.unroll_population, es.tell

    def unroll(*args):
        inner, m = real_unroll(*args)
        m = {**m, "meta_loss": m["meta_loss"] * (-100.0 if len(seen) % 2 else 1.0)}
        seen.append(np.asarray(m["meta_loss"], np.float64))
        return inner, m

    def tell(spec, key, pop, fitness, state):
        told.append(np.asarray(fitness, np.float64))
        return real_tell(spec, key, pop, fitness, state)
    monkeypatch.setattr(search, "unroll_population", unroll)
    monkeypatch.setattr(es, "tell", tell)
    out = mt.generation(0)
    losses = np.stack(seen)  # [tasks, population]
    assert losses.shape == (2, 8) and len(np.unique(losses[0])) == 8
    want = losses.mean(0) if task_fitness == "mean" else \
        es.centered_ranks(losses, axis=1).mean(0)
    np.testing.assert_allclose(told[0], want, rtol=1e-6, atol=1e-7)
    if task_fitness == "ranks":  # the 100x task no longer decides the order alone
        assert not np.array_equal(np.argsort(told[0]), np.argsort(losses[1]))
    assert out["stats"]["best"] == pytest.approx(losses.mean(0).min())


# slow tests (make test's time; CI runs them): every other test meta-trains with the default
# strategy (Open_ES) through the same driver
@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.slow)
                                      for s in ("PGPE", "SNES", "CMA_ES")])
def test_other_strategies_meta_train(store, strategy):
    cfg = load_config(SMOKE, [*FAST, f"search.strategy={strategy}"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    before = np.asarray(mt.flat.flat)
    out = mt.generation(0)
    assert np.isfinite(out["stats"]["best"]) and out["stats"]["diverged"] == 0.0
    mt.generation(1)
    assert not np.allclose(np.asarray(mt.mean_genome()["w0"]), mt.flat.unravel(before)["w0"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_validation_at_a_longer_horizon_selects_the_answer(store):
    """``validate_scale: K``: each validation is the mean of the ES mean's full-run scores at 1x
    and at K times every horizon (each a scorer's at that scale), and the run's answer is the
    finalist with the lowest such mean, kept as its selection score."""
    import json

    from lab.core.fitness import suite_scorer
    from lab.core.loop import launch
    with pytest.raises(ConfigError, match="search.validate_scale"):
        load_config(SMOKE, ["search.validate_scale=0"])
    cfg = load_config(SMOKE, [*FAST, "search.generations=3", "search.validate_every=1",
                              "search.validate_scale=3", "search.sigma=0.3", "search.lr=0.3"])
    run_id = launch(cfg, store, name="longer")
    folder = store.run_dir(run_id)
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    setup = build_setup(cfg, store)
    longer = suite_scorer(cfg, setup.rule, store, setup.mesh, scale=3)
    assert longer.context.key() != setup.scorer.context.key()
    validated = store.best_members(run_id, k=10)
    for line in lines:
        assert line["validation"] == pytest.approx(
            (line["validation_x1"] + line["validation_x3"]) / 2)
    # the longer scores are the scorer's at 3x (served from the store's cache in that context)
    report = json.loads((folder / "finalists.json").read_text())
    finalists = {f["hash"]: f for f in report["finalists"]}
    cached = store.lookup(list(finalists), longer.context.key())
    assert set(cached) == set(finalists)
    for h, f in finalists.items():
        assert f["x3"] == pytest.approx(cached[h]["fitness"])
        assert f["selection"] == pytest.approx((f["final"] + f["x3"]) / 2)
    chosen = min(finalists, key=lambda h: finalists[h]["selection"])
    assert report["selection"]["hash"] == chosen
    assert validated[0]["hash"] == chosen == store.get_run(run_id)["best_hash"]
    assert validated[0]["selection"] == pytest.approx(finalists[chosen]["selection"])
    # two finalists: each selection score is the mean of its 1x and its 3x score (each equal to
    # the scorer's own at that scale), and the lowest is selected
    from lab.core.loop import Finalist, score_fixed
    driver = LearnedDriver(cfg, setup)
    base = driver.mean_genome()
    finals = {}
    for i, log_step in enumerate((np.log(0.03), np.log(0.3))):
        genome = {**base, "log_step": np.asarray(log_step, np.float32)}
        finals[f"h{i}"] = Finalist(genome, {})
    scores, _, _ = score_fixed(setup.scorer, store, {h: f.genome for h, f in finals.items()}, 1)
    after = driver.after_search(finals, scores)
    for h, f in finals.items():
        at3 = longer.score(jax.tree.map(lambda x: np.asarray(x)[None], f.genome))
        assert after.selection[h] == pytest.approx(
            (scores[h] + float(at3["fitness"][0])) / 2, abs=1e-5)
    assert after.selection["h0"] != pytest.approx(after.selection["h1"])
    assert after.report["selection"]["hash"] == min(after.selection, key=after.selection.get)
    assert {e["context"] for e in after.evaluations} == {longer.context.key()}
    # the run's answer re-scored directly at 3x gives the stored number
    from lab.commands.targets import resolve
    target = resolve(run_id, store)
    assert target.store_hash == chosen
    direct = longer.score(jax.tree.map(lambda x: np.asarray(x)[None], target.genome))
    assert float(direct["fitness"][0]) == pytest.approx(finalists[chosen]["x3"], abs=1e-5)


@pytest.mark.parametrize("validate_by", ["mean", "worst"])
def test_validate_by_combines_the_scales_by_their_mean_or_the_worse(store, monkeypatch,
                                                                     validate_by):
    """``search.validate_by``: a validation score is the mean of the 1x and K x scores, or the
    larger of the two; the ES mean kept as the best validated and the finalist selected follow
    it (one finalist wins at 1x and loses at 3x, the other is close to even at both)."""
    from lab.kinds.learned import search
    with pytest.raises(ConfigError, match="search.validate_by"):
        load_config(SMOKE, [*FAST, "search.validate_by=worst"])
    with pytest.raises(ConfigError, match="search.validate_by"):
        load_config(SMOKE, [*FAST, "search.validate_scale=3", "search.validate_by=median"])
    cfg = load_config(SMOKE, [*FAST, "search.validate_scale=3",
                              f"search.validate_by={validate_by}"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    at = {mt.scorers[0].context.key(): {"short": -0.8, "even": -0.1},  # 1x
          mt.scorers[1].context.key(): {"short": 0.4, "even": 0.05}}  # 3x
    named = {}

    def score_fixed(scorer, store, genomes, rows):
        table = at[scorer.context.key()]
        return {h: table[named.get(h, h)] for h in genomes}, [], []
    monkeypatch.setattr(search, "score_fixed", score_fixed)
    combine = (lambda a, b: max(a, b)) if validate_by == "worst" else (lambda a, b: (a + b) / 2)
    finals = {h: Finalist(mt.mean_genome(), {}) for h in ("short", "even")}
    after = mt.after_search(finals, at[mt.scorers[0].context.key()])
    assert after.selection == pytest.approx({"short": combine(-0.8, 0.4),
                                             "even": combine(-0.1, 0.05)})
    want = "even" if validate_by == "worst" else "short"
    assert after.report["selection"]["hash"] == want
    assert after.report["selection"]["combined"] == validate_by
    # validation during the search: the ES mean's score is combined the same way, and the
    # best-so-far kept by it
    for h in ("short", "even"):
        named[genome_digest(mt.rule, mt.mean_genome())] = h
        _, _, _, scores = mt.validate()
        assert scores["validation"] == pytest.approx(combine(at[mt.scorers[0].context.key()][h],
                                                             at[mt.scorers[1].context.key()][h]))
        assert scores["validation_x3"] == at[mt.scorers[1].context.key()][h]
        named.clear()
    assert float(mt.tree["best"]) == pytest.approx(min(after.selection.values()))


def test_meta_reference_horizon_knots_tuned_adam_at_1x_and_the_validation_scale(store):
    with pytest.raises(ConfigError, match="search.meta_reference.*validate_scale"):
        load_config(SMOKE, ["search.meta_reference=horizon"])
    with pytest.raises(ConfigError, match="search.meta_reference"):
        load_config(SMOKE, ["search.meta_reference=longest"])
    from lab.core.fitness import suite_scorer
    cfg = load_config(SMOKE, [*FAST, "search.validate_scale=3",
                              "search.meta_reference=horizon"])
    setup = build_setup(cfg, store)
    driver = LearnedDriver(cfg, setup)
    longer = suite_scorer(cfg, setup.rule, store, setup.mesh, scale=3)
    fixed = LearnedDriver(load_config(SMOKE, [*FAST, "search.validate_scale=3"]), setup)
    for task in setup.scorer.tasks:
        steps = setup.scorer.steps(task)
        assert driver.reference(task) == ((steps, setup.scorer.refs[task.name]),
                                          (3 * steps, longer.refs[task.name]))
        assert fixed.reference(task) == ((steps, setup.scorer.refs[task.name]),)
        assert longer.refs[task.name] < setup.scorer.refs[task.name]  # Adam gains with time
    assert np.isfinite(driver.generation(0)["stats"]["mean"])


def test_random_search_keeps_the_best_members_and_they_are_finalists(store, monkeypatch):
    """``lr: 0`` on whole runs: the ES mean never moves, the driver keeps the ``top_k`` members
    with the lowest fitness over all generations, and they are finalists beside the mean;
    truncated or persistent runs refuse it."""
    from lab.core import es
    from lab.core.hashing import genome_digest
    with pytest.raises(ConfigError, match="search.lr: lr 0 is a random search.*whole runs"):
        load_config(SMOKE, ["search.lr=0", "search.unroll=5", "search.horizon_max=50"])
    with pytest.raises(ConfigError, match="search.lr: lr 0 is a random search.*persistent true"):
        load_config(SMOKE, ["search.lr=0", "search.persistent=true", "search.unroll=50",
                            "search.horizon_min=50", "search.horizon_max=50"])
    cfg = load_config(SMOKE, [*FAST, "search.lr=0", "search.sigma=0.3", "search.unroll=20",
                              "search.horizon_min=10", "search.horizon_max=20",
                              "output.top_k=3"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    start = np.asarray(mt.flat.flat).copy()
    told, tell = [], es.tell

    def spy(spec, key, population, fitness, state):
        told.append((np.asarray(population), np.asarray(fitness)))
        return tell(spec, key, population, fitness, state)
    monkeypatch.setattr(es, "tell", spy)
    for g in range(4):
        mt.generation(g)
    np.testing.assert_array_equal(np.asarray(es.mean_of(mt.spec, mt.tree["es"])), start)
    members = np.concatenate([p for p, _ in told])
    fitness = np.concatenate([f for _, f in told])
    best = np.argsort(fitness, kind="stable")[:3]
    np.testing.assert_allclose(mt.tree["top_fitness"], fitness[best], rtol=1e-6)
    np.testing.assert_array_equal(mt.tree["top"], members[best])
    finals = mt.finalists()
    assert len(finals) == 1 + 3  # the mean (never validated: the best is the start) + top 3
    for row in members[best]:
        assert genome_digest(mt.rule, jax.tree.map(np.asarray, mt.flat.unravel(row))) in finals


def test_meta_training_starts_from_an_artifacts_weights(store, tmp_path, capsys):
    """``rule.init: discovered/NAME`` (a warm start): the ES starts at the artifact's weights,
    bit for bit; an artifact of another network or kind, or no artifact, is a config error
    naming ``rule.init`` (exit 2 from ``lab launch``)."""
    import shutil

    from lab.cli import main
    from lab.commands.artifacts import load_artifact
    from lab.core.es import Flattener
    art = tmp_path / "lopt"
    shutil.copytree("discovered/lopt-long-train", art)
    same = ["rule.step=0.03", "rule.exp_mult=1.0"]  # its network: hidden 8, depth 1 as smoke's
    cfg = load_config(SMOKE, [*FAST, *same, f"rule.init={art}"])
    mt = LearnedDriver(cfg, build_setup(cfg, store))
    want = Flattener.of(load_artifact(art).genome).flat
    np.testing.assert_array_equal(np.asarray(mt.flat.flat), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(es_mean(mt)), np.asarray(want))
    mt.generation(0)  # it meta-trains from there
    assert not np.array_equal(np.asarray(es_mean(mt)), np.asarray(want))
    with pytest.raises(ConfigError, match=r"rule.init: .*its network differs from the rule "
                                          r"section's: hidden 8 \(the config: 4\)"):
        load_config(SMOKE, [*same, "rule.hidden=4", f"rule.init={art}"])
    with pytest.raises(ConfigError, match="rule.init: .*an artifact of kind 'pbt'"):
        load_config(SMOKE, [*same, "rule.init=discovered/pbt-train"])
    rc = main(["launch", SMOKE, "--store", str(tmp_path / "x.db"), "--set",
               f"rule.init={tmp_path / 'nope'}"])
    assert rc == 2
    assert "is neither 'adam', 'random' nor an artifact folder" in capsys.readouterr().err


def es_mean(mt):
    from lab.core import es
    return es.mean_of(mt.spec, mt.tree["es"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_tune_lr_scales_the_rules_rate_through_its_log_step(tiny_task, one_device_mesh):
    """``--tune-lr`` for a learned rule: each multiplier is a shift of ``log_step``, the same
    run as the rule at that multiple of its rate; the pick is the best mean final loss, so it is
    never worse than the rule's own rate (a multiplier of the grid)."""
    from lab.core.evaluate import evaluate, task_keys
    from lab.core.replay import TUNE_MULTIPLIERS, replay_train
    from lab.kinds.learned import tune_lr
    rule = learned_rule(FEATURES)
    genome = {**init_genome(FEATURES, jax.random.key(0)),
              "log_step": jnp.asarray(np.log(1e-3), jnp.float32)}  # too small a step to start
    keys = task_keys(2, 1)
    m, lr = tune_lr(tiny_task, rule, genome, 0.5, 30, keys, one_device_mesh)
    multiplier = lr / 0.5
    assert np.isclose(TUNE_MULTIPLIERS, multiplier, rtol=1e-6).sum() == 1 and multiplier > 1

    def run(rate):
        return evaluate(replay_train(tiny_task, rule, 30, rate), stack_genomes([genome]), keys,
                        one_device_mesh)

    np.testing.assert_allclose(m["final_loss"], run(lr)["final_loss"], rtol=1e-3)
    assert np.mean(m["final_loss"]) < np.mean(run(0.5)["final_loss"])


@pytest.mark.slow  # the CLI path of test_tune_lr_scales_the_rules_rate_through_its_log_step
def test_replay_of_a_learned_artifact_tunes_its_rate_per_task(cli):
    """``lab replay ARTIFACT --tune-lr`` for a learned optimizer: a second row per task at the
    best of the multipliers of its own rate, never worse by mean final loss than its own."""
    import json

    from lab.core.replay import TUNE_MULTIPLIERS
    rc, out, err = cli("replay", "discovered/lopt-train", "--suite", "tiny", "--seeds", "2",
                       "--tune-lr", "--baselines", "adam", "--json")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert {r["rule"] for r in rows} == {"lopt-train", "lopt-train (lr tuned)", "tuned adam"}
    for own, tuned in zip(*[[r for r in rows if r["rule"] == name]
                            for name in ("lopt-train", "lopt-train (lr tuned)")], strict=True):
        assert np.isclose(TUNE_MULTIPLIERS, tuned["lr"], rtol=1e-5).sum() == 1  # its rate is 1
        assert np.mean(tuned["final_loss"]) <= np.mean(own["final_loss"]) * (1 + 1e-5)
