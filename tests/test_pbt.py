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
