"""Population-based training (``kind: pbt``): the trajectory rule equals optax's
inject_hyperparams with piecewise-constant schedules; a member's intervals are the steps of a
whole run of its trajectory; exploit copies a member's runs bit for bit; explore stays in its
bounds; the population's order is irrelevant; a generation does not recompile; the store keeps
the lineage; configs are checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab.core.config import ConfigError, load_config
from lab.core.evaluate import compile_count, make_train, task_keys
from lab.core.optimizers import make_baseline
from lab.core.rule import to_optax
from lab.kinds.pbt import population as Pop
from lab.kinds.pbt import trajectory as T
from lab.treeio import tree_from_npz


def lr_trajectory(values, rule):
    return {**rule.genome, "learning_rate": np.log(np.asarray(values, np.float32))}


@pytest.mark.parametrize("horizon", [18, 20, 7])
def test_intervals_cover_the_run_and_match_the_rule(horizon):
    g = 4 if horizon >= 4 else 2
    spans = T.bounds(horizon, g)
    assert spans[0][0] == 0 and spans[-1][1] == horizon
    for i, (a, b) in enumerate(spans):
        assert all(int(T.interval_of(t, horizon, g)) == i for t in range(a, b))


def test_the_trajectory_rule_is_optax_inject_hyperparams_with_piecewise_schedules():
    rule = T.trajectory_rule("adam", 4)
    genome = lr_trajectory([1e-2, 3e-2, 5e-3, 1e-3], rule)
    genome["b1"] = np.log1p(-np.asarray([0.9, 0.8, 0.95, 0.5], np.float32))
    horizon, lr = 18, 2.0
    ours, ref = to_optax(rule, genome, lr, horizon), T.as_optax("adam", genome, horizon, lr)
    params = {"w": jnp.ones((3, 2))}
    s1, s2 = ours.init(params), ref.init(params)
    rng = np.random.default_rng(0)
    for _ in range(horizon):
        g = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6, atol=1e-9)
    # one value held over the run is the optimizer itself (up to the float32 log encoding)
    held = T.trajectory_rule("adam", 3)
    adam = make_baseline("adam", {"learning_rate": 0.01})
    const = {k: np.full(3, v, np.float32) for k, v in adam.genome.items()}
    a, b = to_optax(held, const, 1.0, 9), optax.adam(0.01)
    sa, sb = a.init(params), b.init(params)
    g = {"w": jnp.full((3, 2), 0.3)}
    for _ in range(9):
        ua, sa = a.update(g, sa, params)
        ub, sb = b.update(g, sb, params)
        np.testing.assert_allclose(ua["w"], ub["w"], rtol=2e-5)


# slow (make test's time on 2 cores); schedule-free AdamW's state is the harder one
@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "schedule_free_adamw"])
def test_a_members_intervals_are_the_steps_of_a_whole_run_of_its_trajectory(tiny_task, name):
    """Also for a rule scored at other parameters than its iterate (schedule-free's average):
    PBT ranks members by the loss there, as the replay of its trajectory scores it."""
    steps, g, pop, seeds = tiny_task.steps, 4, 3, 2
    rule = T.trajectory_rule(name, g)
    base = make_baseline(name)
    trajectories = np.log(np.asarray([[1e-2, 3e-2, 5e-3, 1e-3], [3e-3] * 4,
                                      [1e-1, 1e-2, 1e-3, 1e-4]], np.float32))
    keys = task_keys(seeds, pop, 0, np.arange(pop, dtype=np.int32))
    hp = {k: jnp.full(pop, v) for k, v in base.genome.items()}
    members = Pop.init_members(tiny_task, base, hp, keys)
    losses = []
    for i in range(g):
        hp = {**hp, "learning_rate": jnp.asarray(trajectories[:, i])}
        members, loss, diverged = Pop.advance(tiny_task, base, steps, g, 1.0, hp, members, i)
        assert not diverged.any()
        losses.append(loss)
    train = make_train(tiny_task, rule, steps, 1.0, curve_points=steps)
    for j in range(pop):
        genome = {**rule.genome, "learning_rate": trajectories[j]}
        curve = np.stack([np.asarray(train(genome, keys[j, s])["curve"]) for s in range(seeds)])
        for i, (a, b) in enumerate(T.bounds(steps, g)):
            np.testing.assert_allclose(losses[i][j], curve[:, a:b].mean(axis=1), rtol=1e-5)
    # a trajectory that holds the defaults is the optimizer, scored where the optimizer is
    held = make_train(tiny_task, rule, steps, 1.0)(rule.genome, keys[0, 0])
    plain = make_train(tiny_task, base, steps, 1.0)(base.genome, keys[0, 0])
    np.testing.assert_allclose(held["final_loss"], plain["final_loss"], rtol=1e-5)
    assert (rule.scored_at is None) == (base.scored_at is None) == (name == "adam")


def test_exploit_copies_the_chosen_members_runs_bit_for_bit(tiny_task):
    base = make_baseline("adam")
    pop = 4
    hp = {k: jnp.full(pop, v) for k, v in base.genome.items()}
    hp["learning_rate"] = jnp.log(jnp.asarray([1e-3, 1e-2, 3e-2, 1e-1]))
    members = Pop.init_members(tiny_task, base, hp, task_keys(2, pop, 0,
                                                              np.arange(pop, dtype=np.int32)))
    members, _, _ = Pop.advance(tiny_task, base, tiny_task.steps, 4, 1.0, hp, members, 0)
    src = np.asarray([2, 1, 2, 0])
    copied = Pop.gather(members, jnp.asarray(src))
    for before, after in zip(jax.tree.leaves(members), jax.tree.leaves(copied), strict=True):
        for j, s in enumerate(src):
            np.testing.assert_array_equal(np.asarray(after[j]), np.asarray(before[s]))


def choice(scores, ids, lr, resample=0.0, seed=0):
    lo, hi = {"learning_rate": np.log(1e-3)}, {"learning_rate": np.log(1e-1)}
    return Pop.choose(np.asarray(scores), np.asarray(ids), {"learning_rate": np.asarray(lr),
                                                             "b1": np.zeros(len(ids))},
                      ("learning_rate",), lo, hi, 0.25, (0.8, 1.2), resample, seed, 3)


def test_explore_perturbs_within_bounds_and_the_bottom_copies_the_top():
    rng = np.random.default_rng(0)
    pop = 16
    scores = rng.normal(size=pop)
    lr = np.log(rng.uniform(1e-3, 1e-1, pop)).astype(np.float32)
    for resample in (0.0, 0.5, 1.0):
        c = choice(scores, np.arange(pop), lr, resample)
        order = np.argsort(scores)
        top, bottom = set(order[:4]), set(order[-4:])
        assert set(np.flatnonzero(c.copied)) == bottom
        assert all(c.src[j] in top for j in bottom)
        assert all(c.src[j] == j for j in range(pop) if j not in bottom)
        new = c.hparams["learning_rate"]
        assert np.all(new >= np.log(1e-3) - 1e-6) and np.all(new <= np.log(1e-1) + 1e-6)
        for j in set(range(pop)) - bottom:
            assert new[j] == lr[j]  # the rest keep theirs
        if resample == 0.0:  # x0.8 or x1.2 of the copied member's, clipped
            for j in bottom:
                ratio = np.exp(new[j] - lr[c.src[j]])
                clipped = new[j] in (np.float32(np.log(1e-3)), np.float32(np.log(1e-1)))
                assert clipped or min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-5


def test_the_populations_order_is_irrelevant():
    rng = np.random.default_rng(1)
    pop = 12
    ids = np.arange(pop) * 7 + 3
    scores = rng.normal(size=pop)
    scores[2] = scores[5]  # a tie: broken by id, not by position
    lr = np.log(rng.uniform(1e-3, 1e-1, pop)).astype(np.float32)
    a = choice(scores, ids, lr)
    perm = rng.permutation(pop)
    b = choice(scores[perm], ids[perm], lr[perm])
    # member ids[perm[j]] is at position j in b: same source (by id), same new values
    np.testing.assert_array_equal(ids[perm][b.src], ids[a.src][perm])
    np.testing.assert_array_equal(b.hparams["learning_rate"], a.hparams["learning_rate"][perm])
    np.testing.assert_array_equal(b.copied, a.copied[perm])


SMALL = ["kind=pbt", "suite=tiny", "seeds=1", "rule.name=adam", "rule.init={learning_rate: 0.01}",
         "search.population=8", "search.generations=4", "evaluator.devices=1",
         "output.top_k=2", "output.plots=false"]


def test_a_pbt_run_compiles_once_and_stores_the_lineage(store, monkeypatch):
    from lab.core.loop import launch
    from lab.kinds.pbt import driver as D
    counts = []
    real_step = D.PBTDriver.step

    def step(self, g):
        out = real_step(self, g)
        counts.append(compile_count())
        return out
    monkeypatch.setattr(D.PBTDriver, "step", step)
    run_id = launch(load_config(None, SMALL), store, name="pbt")
    assert store.get_run(run_id)["status"] == "done"
    assert len(counts) == 4 and counts[1] == counts[2] == counts[3], counts  # no recompile
    rows = {r["hash"]: r for r in store.conn.execute(
        "SELECT hash, parent, genome, name FROM candidates").fetchall()}
    assert {r["name"] for r in rows.values()} == {"pbt(adam)"}
    # the first interval's 8 trajectories, then one per copy (2 per interval, 3 intervals), each
    # the copied member's trajectory up to the copy, its own after
    copies = [r for r in rows.values() if r["parent"] is not None]
    assert len(copies) == 2 * 3 and len(rows) == 8 + 2 * 3
    for r in copies:
        child, parent = tree_from_npz(r["genome"]), tree_from_npz(rows[r["parent"]]["genome"])
        same = child["learning_rate"] == parent["learning_rate"]
        cut = int(np.argmin(same))  # the first interval that differs: the one after the copy
        assert 1 <= cut < 4 and same[:cut].all() and not same[cut:].any()
        ratio = np.exp(child["learning_rate"][cut] - parent["learning_rate"][cut])
        assert min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-5


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_a_pbt_task_trains_on_its_own_seed_count(store, monkeypatch):
    from lab.core.loop import launch
    from lab.kinds.pbt import driver as D
    shapes = []
    real_step = D.PBTDriver.step

    def step(self, g):
        shapes.append({k: m.key.shape[:2] for k, m in self.members.items()})
        return real_step(self, g)
    monkeypatch.setattr(D.PBTDriver, "step", step)
    sets = [s for s in SMALL if not s.startswith("search.generations")]
    run_id = launch(load_config(None, [*sets, "search.generations=2",
                                       "task_seeds.tiny_quadratic=3"]), store, name="pbt-seeds")
    assert store.get_run(run_id)["status"] == "done"
    assert shapes == [{"tiny_quadratic": (8, 3)}] * 2  # members x seeds, not seeds=1


def test_members_are_sharded_over_the_mesh_and_train_as_on_one_device(store, monkeypatch):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lab.core.loop import launch
    from lab.kinds.pbt import driver as D
    seen = {}
    real_step = D.PBTDriver.step

    def step(self, g):
        out = real_step(self, g)
        seen.setdefault(self.setup.mesh.devices.size, []).append(
            ([leaf.sharding for m in self.members.values() for leaf in jax.tree.leaves(m)],
             out.members, compile_count()))
        return out
    monkeypatch.setattr(D.PBTDriver, "step", step)
    runs = {}
    for devices in (1, 8):
        sets = [s for s in SMALL if not s.startswith("evaluator.devices")]
        runs[devices] = launch(load_config(None, [*sets, f"evaluator.devices={devices}"]), store,
                               name=f"pbt-{devices}")
    for shardings, _, _ in seen[8]:
        assert all(isinstance(x, NamedSharding) and x.spec == P("pop")
                   and x.mesh.devices.size == 8 for x in shardings)
    assert seen[8][1][2] == seen[8][-1][2]  # sharded: still no recompile between intervals
    for (_, one, _), (_, eight, _) in zip(seen[1], seen[8], strict=True):
        assert [m["hash"] for m in one] == [m["hash"] for m in eight]
        np.testing.assert_allclose([m["fitness"] for m in one], [m["fitness"] for m in eight],
                                   rtol=1e-5)


def test_pbt_configs_are_checked():
    cfg = load_config("configs/pbt_smoke.yaml")
    assert cfg.kind == "pbt" and cfg.search.hparams == ("learning_rate",)
    assert load_config("configs/pbt.yaml").search.population >= 16
    with pytest.raises(ConfigError, match=r"search.hparams\[0\]: adam has no tuned "
                                          r"hyperparameter 'lr' \(valid: b1, b2, eps, "
                                          r"learning_rate\)"):
        load_config(None, [*SMALL, "search.hparams=[lr]"])
    with pytest.raises(ConfigError, match=r"search.truncation: 0.1 of 8 members is none"):
        load_config(None, [*SMALL, "search.truncation=0.1"])


# ---- a program's constants ---------------------------------------------------------------------
PROGRAM = [s for s in SMALL if not s.startswith("rule.init")] + [
    "rule.program=adam", "rule.lr=10", "search.hparams=[lr, k0]"]


def test_a_programs_hyperparameters_are_its_constants_and_the_rest_stay_its_own():
    from lab.kinds.pbt.base import program_base
    from lab.kinds.program.programs import genome_of, load_seed
    p = load_seed("adam")  # k0: m = interp(g, m, 0.9); k15: update = scale_k(x14, 0.001)
    own = genome_of(p)
    base = program_base(p, ("lr", "k0", "k15"))
    assert list(base.start) == ["lr", "k0", "k15"] and base.log1m == {"k0"}
    np.testing.assert_allclose([base.start["k0"], base.start["k15"]],
                               [np.log(0.1), np.log(1e-3)], rtol=1e-6)
    # at their start every constant is the program's (the untuned ones bit for bit)
    held = base.family({k: np.full(3, v) for k, v in base.start.items()})
    assert held["k"].shape == (3, len(own["k"])) and held["lr"].shape == (3,)
    for i in range(3):
        np.testing.assert_array_equal(np.delete(held["k"][i], [0, 15]),
                                      np.delete(own["k"], [0, 15]))
        np.testing.assert_allclose(held["k"][i], own["k"], rtol=1e-6)
    for f in ("op", "a", "b", "out", "n"):
        np.testing.assert_array_equal(held[f], own[f])
    # explore's factor on a decay rate moves 1 - k; on another constant, k itself
    moved = base.genomes({"lr": np.log([2.0]), "k0": [base.start["k0"] + np.log(1.2)],
                          "k15": [base.start["k15"] + np.log(0.8)]})
    np.testing.assert_allclose([moved["k"][0, 0], moved["k"][0, 15], moved["lr"][0]],
                               [1 - 0.1 * 1.2, 1e-3 * 0.8, 2.0], rtol=1e-6)
    assert moved["op"].shape == (1, *own["op"].shape)
    # "constants" names every nonzero one (a negative constant keeps its sign)
    every = program_base(load_seed("adamw"), ("constants",))
    assert set(every.start) == {"lr", "k0", "k2", "k3", "k5", "k6", "k8", "k12", "k14", "k17"}


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_a_program_members_intervals_are_the_steps_of_a_whole_run_of_its_trajectory(tiny_task):
    from lab.kinds.pbt.base import program_base
    from lab.kinds.program.programs import load_seed, program_rule
    steps, g, pop, seeds = tiny_task.steps, 4, 3, 2
    base = program_base(load_seed("adam"), ("lr", "k0"))
    lr = np.log(np.asarray([[1, 3, 0.5, 0.1], [2] * 4, [10, 1, 0.3, 0.1]], np.float32))
    k0 = np.log1p(-np.asarray([[0.9, 0.5, 0.95, 0.9], [0.9] * 4, [0.5, 0.8, 0.99, 0.6]],
                              np.float32))
    keys = task_keys(seeds, pop, 0, np.arange(pop, dtype=np.int32))
    h = {"lr": lr[:, 0], "k0": k0[:, 0]}
    members = Pop.init_members(tiny_task, base.rule, base.genomes(h), keys)
    losses = []
    for i in range(g):
        h = {"lr": lr[:, i], "k0": k0[:, i]}
        members, loss, diverged = Pop.advance(tiny_task, base.rule, steps, g, 10.0,
                                              base.genomes(h), members, i)
        assert not diverged.any()
        losses.append(loss)
    rule = T.program_trajectory_rule("update", g)
    train = make_train(tiny_task, rule, steps, 10.0, curve_points=steps)
    for j in range(pop):
        genome = base.family({"lr": lr[j], "k0": k0[j]})
        curve = np.stack([np.asarray(train(genome, keys[j, s])["curve"]) for s in range(seeds)])
        for i, (a, b) in enumerate(T.bounds(steps, g)):
            np.testing.assert_allclose(losses[i][j], curve[:, a:b].mean(axis=1), rtol=1e-5)
    # a trajectory that holds its values is the program itself (member 1: Adam at twice the lr)
    held = make_train(tiny_task, rule, steps, 10.0)(base.family({"lr": lr[1], "k0": k0[1]}),
                                                     keys[1, 0])
    own = base.genomes({"lr": lr[1, :1], "k0": k0[1, :1]})
    plain = make_train(tiny_task, program_rule(), steps, 10.0)(
        {k: v[0] for k, v in own.items()}, keys[1, 0])
    np.testing.assert_allclose(held["final_loss"], plain["final_loss"], rtol=1e-6)
    text = rule.describe(base.family({"lr": lr[2], "k0": k0[2]}))
    assert "m = interp(g, m, 0.5)" in text  # the program at the start
    assert "k0: 0.5, 0.8, 0.99, 0.6" in text and "lr: 10, 1, 0.3, 0.1" in text


@pytest.mark.slow  # a launch and an export on the tiny suite (~13 s; make test time)
def test_pbt_tunes_a_programs_constants_end_to_end(store, tmp_path):
    from lab.commands.artifacts import load_artifact
    from lab.core.loop import launch
    run_id = launch(load_config(None, PROGRAM), store, name="pbt-program")
    assert store.get_run(run_id)["status"] == "done"
    names = {r["name"] for r in store.conn.execute("SELECT name FROM candidates")}
    assert names == {"pbt(program)"}
    copies = store.conn.execute("SELECT hash, parent, genome FROM candidates "
                                "WHERE parent IS NOT NULL").fetchall()
    assert len(copies) == 2 * 3
    for r in copies:  # a copy changed lr and k0 by 0.8 or 1.2 (k0 as a decay rate), nothing else
        child = tree_from_npz(r["genome"])
        parent = tree_from_npz(store.conn.execute(
            "SELECT genome FROM candidates WHERE hash = ?", (r["parent"],)).fetchone()[0])
        cut = int(np.argmin(child["lr"] == parent["lr"]))
        ratio = child["lr"][cut] / parent["lr"][cut]
        decay = (1 - child["k"][cut, 0]) / (1 - parent["k"][cut, 0])
        for x in (ratio, decay):
            assert min(abs(x - 0.8), abs(x - 1.2)) < 1e-4
        np.testing.assert_array_equal(np.delete(child["k"], 0, axis=1),
                                      np.delete(parent["k"], 0, axis=1))
    from lab.commands.export import export
    from lab.commands.targets import resolve
    target = resolve(f"{run_id}:0", store)
    folder = export(f"{run_id}:0", "pbt-program", tmp_path, store, seeds=1, suite="tiny")
    back = load_artifact(folder)
    assert back.rule.name == "pbt(program)"
    for k in ("k", "lr", "op"):
        np.testing.assert_array_equal(back.genome[k], target.genome[k])
    import json
    doc = json.loads((folder / "rule.json").read_text())
    assert doc["trajectory"]["intervals"] == 4 and "lr" in doc["trajectory"]["hyperparameters"]
    assert "def program(g, w, lr, t, m, v):" in doc["readable"]


def program_base_of(cfg):
    from lab.kinds.pbt.base import base_for
    return base_for(cfg.rule, cfg.search.hparams)


def test_pbt_program_configs_are_checked(tmp_path):
    assert load_config(None, PROGRAM).rule.program == "adam"
    shipped = load_config("configs/pbt_program.yaml")  # a discovered artifact's program
    assert shipped.rule.program == "discovered/program-search-train"
    assert set(program_base_of(shipped).start) == {"lr", "k0", "k2", "k14"}
    with pytest.raises(ConfigError, match=r"search.hparams\[1\]: the program adam has no tuned "
                                          r"hyperparameter 'k1'"):
        load_config(None, [*PROGRAM, "search.hparams=[lr, k1]"])
    with pytest.raises(ConfigError, match=r"rule.init: an optax keyword"):
        load_config(None, [*PROGRAM, "rule.init={b1: 0.9}"])
    with pytest.raises(ConfigError, match=r"rule.program: 'adamx' is neither an update or joint "
                                          r"seed program; did you mean adam"):
        load_config(None, [*PROGRAM, "rule.program=adamx"])
    drift = tmp_path / "d.prog"
    drift.write_text("def d(r, A, progress):\n    x0 = sub(r, r)\n    return x0\n")
    with pytest.raises(ConfigError, match=r"is a drift program: PBT tunes update or joint"):
        load_config(None, [*PROGRAM, f"rule.program={drift}"])
    assert load_config(None, [*PROGRAM, "rule.program=adam+cosine",
                              "search.hparams=[constants]"]).rule.program == "adam+cosine"


# ---- a learning-rate trajectory as a schedule program ------------------------------------------
@pytest.mark.parametrize("horizon", [7, 18, 20, 1000])
def test_a_piecewise_schedule_program_is_the_trajectory_at_every_step(horizon):
    from lab.kinds.program import interpreted
    from lab.kinds.program.programs import genome_of
    from lab.kinds.program.text import parse, to_source
    values = np.asarray([35.6, 35.6, 28.5, 28.5, 40.0, 1.0], np.float32)
    p = T.piecewise_program(values)
    assert len(p) == 2 + 3 * 5 - 1 + 1  # three boundaries change it: 5 statements each
    p = parse(to_source(p), "roundtrip")  # what rule.json holds reads back
    t = np.arange(horizon)
    got = interpreted.apply(genome_of(p), jnp.asarray(t, jnp.float32),
                            jnp.full(horizon, horizon, jnp.float32))
    want = values[np.asarray(T.interval_of(t, horizon, len(values)))]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    held = T.piecewise_program([3.0] * 4)
    assert len(held) == 3 and float(interpreted.apply(genome_of(held), 5.0, 9.0)) == 3.0


def test_an_adam_learning_rate_trajectory_replays_as_a_schedule_program(tiny_task):
    from lab.kinds.program.programs import genome_of
    from lab.kinds.program.schedules import schedule_rule
    rule = T.trajectory_rule("adam", 4)
    genome = lr_trajectory([1e-2, 3e-2, 5e-3, 1e-3], rule)
    p = T.as_schedule_program(rule.name, genome)
    steps, key = tiny_task.steps, jax.random.key(3)
    ours = make_train(tiny_task, rule, steps, 2.0, curve_points=steps)(genome, key)
    sched = schedule_rule()
    theirs = make_train(tiny_task, sched, steps, 2.0, curve_points=steps)(
        genome_of(p, len(p)), key)
    np.testing.assert_allclose(np.asarray(ours["curve"]), np.asarray(theirs["curve"]),
                               rtol=1e-4)
    # another hyperparameter that changes, or another optimizer: no schedule of Adam
    assert T.as_schedule_program(rule.name, {**genome, "b1": np.log1p(-np.asarray(
        [0.9, 0.8, 0.9, 0.9], np.float32))}) is None
    assert T.as_schedule_program("pbt(sgd)", {"learning_rate": genome["learning_rate"]}) is None
    from lab.core.target import Target
    from lab.kinds.pbt import artifact_fields
    fields = artifact_fields(Target("t", rule, genome, 1.0, "t"))["trajectory"]
    assert fields["schedule_program"].startswith("def pbt_schedule(t, T):")
