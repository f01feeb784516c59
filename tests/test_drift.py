"""RL objectives (``kind: drift``): drift families against closed forms, the Mirror-Learning
constraints and their check, fingerprints, GAE by hand, PPO on a tiny CartPole (deterministic,
vmapped, compiled once), the scorer's rejection, configs and the CLI.

PPO budgets are tiny (8 updates of 4 envs x 32 steps): every test here runs on CPU in seconds,
and the few compiled PPO runs are shared through module fixtures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.core.config import ConfigError, load_config
from lab.core.evaluate import compiled, evaluate
from lab.core.fitness import CLIP
from lab.core.rule import stack_genomes
from lab.kinds.drift.objectives import (
    DEAD_ZONE,
    DPO_ALPHA,
    DPO_BETA,
    LPOSpec,
    check,
    describe_function,
    dpo,
    fingerprint,
    lpo,
    objective_from_name,
    ppo_clip,
)
from lab.kinds.drift.ppo import (
    ActorCritic,
    Transition,
    episode_returns,
    gae,
    make_train,
    orthogonal,
    policy_loss,
    ppo_clip_loss,
)
from lab.kinds.drift.scoring import DriftScorer, normalized_return, worst
from tasks.rl import make_env_task

pytest.importorskip("gymnax")

ROOT = Path(__file__).resolve().parent.parent
SMALL = LPOSpec(hidden=16)
# 1024 env steps = 8 updates of 4 envs x 32 steps, one epoch of 2 minibatches
TASK = make_env_task("cp_tiny", "CartPole-v1", steps=1024, num_envs=4, num_steps=32, epochs=1,
                     minibatches=2)
METRICS = {"final_return": (), "mean_return": (), "episodes": (), "curve": (8,),
           "diverged": ()}


def stack(genomes):
    return jax.tree.map(np.asarray, stack_genomes(genomes))


def random_genomes(objective, n: int, seed: int):
    """``n`` genomes shaped like the family's default, every weight N(0, 1)."""
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda x: rng.standard_normal(np.shape(x)).astype(np.float32),
                         objective.genome) for _ in range(n)]


def logp_sample(n: int = 256, seed: int = 0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    old = jax.random.normal(k1, (n,)) - 1.0
    logp = old + 0.4 * jax.random.normal(k2, (n,))  # ratios off both ends of the clip range
    adv = 2.0 * jax.random.normal(k3, (n,)) + 0.3
    return logp, old, adv


# ---- drift families against closed forms -------------------------------------------------------

def test_ppo_clip_drift_is_the_clipped_surrogate():
    logp, old, adv = logp_sample()
    r = np.exp(np.asarray(logp - old))
    assert (r < 0.8).any() and (r > 1.2).any()  # both clipped sides are exercised
    o = ppo_clip()
    ours = policy_loss(o, o.genome, logp, old, adv, 0.3)
    ref = ppo_clip_loss(logp, old, adv, 0.2)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    g_ours = jax.grad(lambda lp: policy_loss(o, o.genome, lp, old, adv, 0.3))(logp)
    g_ref = jax.grad(lambda lp: ppo_clip_loss(lp, old, adv, 0.2))(logp)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-8)
    assert np.count_nonzero(np.asarray(g_ref)) < logp.shape[0]  # clipped samples have no gradient
    # LPO started at PPO (zero output layer): the same loss but for the 1e-4 dead zone
    lo = lpo(SMALL)
    assert not np.any(lo.genome["w1"])
    lpo_loss = policy_loss(lo, lo.genome, logp, old, adv, 0.3)
    assert abs(float(lpo_loss) - float(ref)) <= DEAD_ZONE * 1.01
    assert float(lpo_loss) != float(ref)  # the dead zone is there (LPO's drift is smaller)


def test_dpo_drift_closed_form():
    o = dpo()
    assert float(o.genome["alpha"]) == DPO_ALPHA == 2.0
    assert float(o.genome["beta"]) == pytest.approx(DPO_BETA) and DPO_BETA == 0.6
    r = np.array([0.5, 0.9, 1.0, 1.3, 2.0, 3.0, 0.4, 1.7])
    a = np.array([1.5, -2.0, -1.0, 0.7, 3.0, -2.0, -0.5, 0.0])

    def expected(r, a, alpha=2.0, beta=0.6):
        if a >= 0:
            x = (r - 1.0) * a
            return max(x - alpha * np.tanh(x / alpha), 0.0)
        x = np.log(r) * a
        return max(x - beta * np.tanh(x / beta), 0.0)

    want = np.array([expected(x, y) for x, y in zip(r, a, strict=True)])
    got = np.asarray(o.drift(o.genome, jnp.asarray(r, jnp.float32), jnp.asarray(a, jnp.float32),
                             0.0), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # x - c tanh(x / c) has the sign of x: the drift is positive only where the update moves
    # r in the advantage's direction ((r - 1) A > 0), zero otherwise
    moving = np.where(a >= 0, (r - 1.0) * a, np.log(r) * a) > 0
    assert moving.sum() == 4 and np.array_equal(want > 0, moving)


# ---- the Mirror-Learning constraints -----------------------------------------------------------

@pytest.mark.parametrize("spec", [SMALL, LPOSpec(hidden=16, progress=True),
                                  LPOSpec(hidden=16, ppo_init=False),
                                  LPOSpec(hidden=16, ppo_init=False, progress=True)],
                         ids=lambda s: s.name)
def test_lpo_constraints_hold_for_random_genomes(spec):
    o = lpo(spec)
    genomes = random_genomes(o, 8, seed=1)
    valid, reasons = check(o, stack(genomes))
    assert valid.tolist() == [True] * 8 and reasons == [""] * 8
    rng = np.random.default_rng(2)
    r = jnp.asarray(np.exp(rng.uniform(-2.0, 2.0, 512)), jnp.float32)
    a = jnp.asarray(3.0 * rng.standard_normal(512), jnp.float32)
    p = jnp.asarray(rng.uniform(0.0, 1.0, 512), jnp.float32)
    one = jnp.ones_like(a)
    for g in genomes:
        d = np.asarray(o.drift(g, r, a, p))
        assert np.all(np.isfinite(d)) and d.min() >= 0.0
        assert np.all(np.asarray(o.drift(g, one, a, p)) == 0.0)
        slope = jax.vmap(jax.grad(lambda rr, aa, pp, g=g: o.drift(g, rr, aa, pp)))(one, a, p)
        assert np.all(np.asarray(slope) == 0.0)
    # the random networks are not all flat: the drift is positive somewhere
    assert max(float(np.asarray(o.drift(g, r, a, p)).max()) for g in genomes) > 0.1


def test_check_rejects_violators_naming_the_constraint():
    o = ppo_clip()
    valid, reasons = check(o, stack([{"eps": np.float32(0.2)}, {"eps": np.float32(-0.1)}]))
    assert valid.tolist() == [True, False] and reasons[0] == ""
    assert "at r=1 (must be 0)" in reasons[1] and reasons[1].startswith("drift ")
    d = dpo()
    valid, reasons = check(d, stack([{"alpha": np.float32(0.0), "beta": np.float32(0.6)}]))
    assert not valid[0] and reasons[0].startswith("not finite")
    lo = lpo(SMALL)
    bad = copy.deepcopy(lo.genome)
    bad["w1"][3] = np.nan
    valid, reasons = check(lo, stack([lo.genome, bad]))
    assert valid.tolist() == [True, False]
    assert reasons[0] == "" and reasons[1].startswith("not finite")


# ---- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [LPOSpec(), SMALL, LPOSpec(hidden=16, progress=True),
                                  LPOSpec(hidden=8, ppo_init=False, init_seed=3)])
def test_lpo_spec_name_round_trips(spec):
    assert LPOSpec.parse(spec.name) == spec
    assert objective_from_name(spec.name).name == spec.name


def test_lpo_spec_name_round_trips_exactly():
    """Integers and floats are written so that they read back exactly; a fraction for an
    integer setting is refused, not truncated."""
    spec = LPOSpec(hidden=16, init_seed=1234567)
    assert LPOSpec.parse(spec.name) == spec
    with pytest.raises(ValueError, match="bad value"):
        LPOSpec.parse("lpo(hidden=16.5)")
    from lab.kinds.learned.rule import Features
    f = Features(hidden=4, depth=1, step=0.0123456789, momenta=(0.9, 0.123456789))
    assert Features.parse(f.name) == f


def test_family_names():
    assert LPOSpec().name == "lpo"
    assert LPOSpec(hidden=16, progress=True).name == "lpo(hidden=16,progress=1)"
    assert LPOSpec.parse("lpo(hidden=16,progress=1)") == LPOSpec(hidden=16, progress=True)
    assert objective_from_name(" ppo_clip ") is ppo_clip()
    assert objective_from_name("dpo") is dpo()
    with pytest.raises(ValueError, match=r"unknown drift family 'ppo'; did you mean ppo_clip"):
        objective_from_name("ppo")
    with pytest.raises(ValueError, match=r"unknown drift family 'trpo'"):
        objective_from_name("trpo")
    with pytest.raises(ValueError, match=r"unknown setting 'width=3'"):
        objective_from_name("lpo(width=3)")
    with pytest.raises(ValueError, match=r"hidden must be at least 1"):
        LPOSpec.parse("lpo(hidden=0)")


# ---- fingerprints ------------------------------------------------------------------------------

def test_describe_function_names_known_objectives():
    o = ppo_clip()
    doc = describe_function(o, o.genome)
    assert doc["equals"] == ["ppo_clip"]
    assert doc["closest"] == {"name": "ppo_clip", "distance": 0.0}
    assert doc["constraints"] == {"valid": True, "reason": ""}
    assert describe_function(dpo(), dpo().genome)["equals"] == ["dpo"]
    assert describe_function(dpo(), dpo().genome)["closest"]["distance"] == 0.0
    lo = lpo(SMALL)
    near = describe_function(lo, lo.genome)
    assert near["closest"]["name"] == "ppo_clip"
    assert 0.0 < near["closest"]["distance"] < 1e-3
    assert near["distances"]["dpo"] > 100 * near["closest"]["distance"]
    bad = describe_function(o, {"eps": np.float32(-0.1)})
    assert bad["constraints"]["valid"] is False and "r=1" in bad["constraints"]["reason"]


def test_fingerprint_hash_is_functional():
    lo = lpo(SMALL)
    g = random_genomes(lo, 1, seed=4)[0]
    fp, h = fingerprint(lo, g)
    assert len(h) == 32 and np.all(np.isfinite(fp))
    assert fingerprint(lo, copy.deepcopy(g))[1] == h
    changed = copy.deepcopy(g)
    changed["w1"][0] += 0.1
    assert fingerprint(lo, changed)[1] != h
    # at the PPO start the output layer is zero: the first layer does not change the function
    moved = copy.deepcopy(lo.genome)
    moved["w0"][0, 0] += 1.0
    assert fingerprint(lo, moved)[1] == fingerprint(lo, lo.genome)[1]


# ---- GAE by hand ---------------------------------------------------------------------------------

def traj_of(term, done):
    """A 3-step, 1-env rollout: values 1, 2, 3; rewards 0.5, 1, 2."""
    col = lambda xs, dt=jnp.float32: jnp.asarray(xs, dt)[:, None]  # noqa: E731
    z = jnp.zeros((3, 1))
    return Transition(obs=z, action=jnp.zeros((3, 1), jnp.int32), log_prob=z,
                      value=col([1.0, 2.0, 3.0]), reward=col([0.5, 1.0, 2.0]),
                      terminated=col(term, bool), done=col(done, bool), final_obs=z)


@pytest.mark.parametrize("end", ["none", "terminated", "truncated"])
def test_gae_by_hand(end):
    g, lam = 0.9, 0.8
    v, rew = [1.0, 2.0, 3.0], [0.5, 1.0, 2.0]
    # V of each step's true next state: step 1's is its episode's last state (5) when it ends,
    # the next step's value otherwise
    nv = [2.0, 5.0 if end != "none" else 3.0, 4.0]
    term = [False, end == "terminated", False]
    done = [False, end != "none", False]
    d2 = rew[2] + g * nv[2] - v[2]
    a2 = d2
    if end == "none":
        d1 = rew[1] + g * 3.0 - v[1]
        a1 = d1 + g * lam * a2
    elif end == "terminated":
        d1 = rew[1] - v[1]  # no bootstrap, no carry
        a1 = d1
    else:
        d1 = rew[1] + g * 5.0 - v[1]  # bootstrapped from the final state, no carry
        a1 = d1
    d0 = rew[0] + g * 2.0 - v[0]
    a0 = d0 + g * lam * a1
    adv, ret = gae(traj_of(term, done), jnp.asarray(nv)[:, None], g, lam)
    assert adv.shape == ret.shape == (3, 1)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [a0 + 1.0, a1 + 2.0, a2 + 3.0], rtol=1e-6)
    if end == "terminated":
        assert a1 == pytest.approx(-1.0)
    elif end == "truncated":
        assert a1 == pytest.approx(3.5)


def episodes_step_by_step(reward, done, running):
    """What PPO's rollout used to count at each step: (sum of ended returns, count, running)."""
    running, total, count = np.array(running, np.float64), 0.0, 0
    for r, d in zip(reward, done, strict=True):
        running = running + r
        total += float(np.where(d, running, 0.0).sum())
        count += int(d.sum())
        running = np.where(d, 0.0, running)
    return total, count, running


@pytest.mark.parametrize("integers", [True, False])
def test_episode_returns_equal_counting_step_by_step(integers):
    """The rollout's bookkeeping, done once on the whole ``[T, envs]`` rollout, equals summing
    step by step: episodes that started in an earlier rollout (``running``), several ends in one
    environment, one that ends on the last step, one that never ends. Integer rewards (every
    gymnax task the lab runs) give the very same numbers."""
    rng = np.random.default_rng(0)
    steps, envs = 40, 5
    reward = (rng.integers(-2, 3, (steps, envs)) if integers else rng.normal(size=(steps, envs)))
    done = rng.random((steps, envs)) < 0.15
    done[:, 3] = False                 # never ends
    done[-1, 2], done[0, 1] = True, True  # ends on the last step; on the first
    running = np.asarray([3.0, -1.0, 0.0, 7.0, 2.0])
    total, count, after = episode_returns(jnp.asarray(reward, jnp.float32), jnp.asarray(done),
                                          jnp.asarray(running, jnp.float32))
    want = episodes_step_by_step(reward.astype(np.float32), done, running)
    assert int(count) == want[1] == done.sum()
    if integers:
        assert float(total) == want[0]
        np.testing.assert_array_equal(np.asarray(after), want[2])
    else:
        np.testing.assert_allclose(float(total), want[0], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(after), want[2], rtol=1e-5, atol=1e-5)
    assert after[2] == 0.0 and after[3] == pytest.approx(running[3] + reward[:, 3].sum(), 1e-5)


# ---- PPO on a tiny CartPole -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ppo_run():
    """(train, jitted train) of PPO-clip on the tiny CartPole."""
    train = make_train(TASK, ppo_clip())
    return train, jax.jit(train)


def as_np(m):
    return {k: np.asarray(v) for k, v in m.items()}


def lapack_operands(jaxpr) -> list[tuple[str, int]]:
    """(primitive, operand rank) of every QR (``qr``, or its LAPACK parts) in a jaxpr and the
    jaxprs inside it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("qr", "geqrf", "householder_product"):
            found.append((eqn.primitive.name, eqn.invars[0].aval.ndim))
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += lapack_operands(inner)
    return found


def test_network_init_runs_one_qr_per_call_under_vmap():
    """PPO under the evaluator's vmap(vmap) runs its orthogonal inits one matrix per LAPACK call
    (a batched QR waits on XLA's CPU thread pool from inside it, and two at once hang the
    process), with the same numbers as flax's batched initializer."""
    train = jax.vmap(jax.vmap(make_train(TASK, ppo_clip()), in_axes=(None, 0)))
    jaxpr = jax.make_jaxpr(train)(stack([ppo_clip().genome] * 2),
                                  jax.random.split(jax.random.key(0), 6).reshape(2, 3))
    calls = lapack_operands(jaxpr.jaxpr)
    assert len(calls) == 6  # one per Dense layer of the actor and the critic
    assert all(rank == 2 for _, rank in calls), calls

    x = jnp.zeros((4,), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 6).reshape(2, 3)

    class Flax(ActorCritic):  # the network with flax's own orthogonal initializer
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x)

    class Ours(ActorCritic):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8, kernel_init=orthogonal(np.sqrt(2)))(x)

    def batched(net):
        return jax.jit(jax.vmap(jax.vmap(lambda k: net.init(k, x))))(keys)

    ours, theirs = batched(Ours(2)), batched(Flax(2))
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_make_train_metrics_and_determinism(ppo_run):
    train, run = ppo_run
    assert make_train(TASK, ppo_clip(), 1024) is train  # one object: one compiled function
    g = ppo_clip().genome
    m = as_np(run(g, jax.random.key(0)))
    assert {k: v.shape for k, v in m.items()} == METRICS
    assert not m["diverged"] and m["episodes"] > 0
    for k in ("final_return", "mean_return", "curve", "episodes"):
        assert np.all(np.isfinite(m[k])), k
    assert 8 <= m["mean_return"] <= 500 and 8 <= m["final_return"] <= 500  # CartPole's range
    again = as_np(run(g, jax.random.key(0)))
    for k in m:
        np.testing.assert_array_equal(again[k], m[k], err_msg=k)
    other = as_np(run(g, jax.random.key(1)))
    assert not np.array_equal(other["curve"], m["curve"])


# the plain network's case is slow (make test's time): the progress features' takes its path
@pytest.mark.parametrize("spec", [pytest.param(SMALL, marks=pytest.mark.slow),
                                  LPOSpec(hidden=16, progress=True)],
                         ids=lambda s: s.name)
def test_lpo_at_ppo_start_trains_like_ppo(spec, ppo_run):
    _, run = ppo_run
    lo = lpo(spec)
    key = jax.random.key(3)
    ours = as_np(jax.jit(make_train(TASK, lo))(lo.genome, key))
    ref = as_np(run(ppo_clip().genome, key))
    np.testing.assert_allclose(ours["final_return"], ref["final_return"], rtol=1e-3)
    np.testing.assert_allclose(ours["mean_return"], ref["mean_return"], rtol=1e-3)


def test_evaluate_vmaps_like_single_runs_and_compiles_once(ppo_run, one_device_mesh):
    train, run = ppo_run
    genomes = [{"eps": np.float32(0.2)}, {"eps": np.float32(0.1)}]
    keys = jax.random.split(jax.random.key(7), 4).reshape(2, 2)
    out = evaluate(train, stack(genomes), keys, one_device_mesh)
    assert {k: v.shape for k, v in out.items()} == {k: (2, 2, *s) for k, s in METRICS.items()}
    for i, g in enumerate(genomes):
        for j in range(2):
            single = as_np(run(g, keys[i, j]))
            for k in METRICS:
                np.testing.assert_allclose(out[k][i, j], single[k], rtol=1e-5, err_msg=k)
    # a second population of the same shape reuses the compiled function
    fn = compiled(train, one_device_mesh)
    assert fn._cache_size() == 1
    more = [{"eps": np.float32(0.3)}, {"eps": np.float32(0.15)}]
    out2 = evaluate(train, stack(more), keys[::-1], one_device_mesh)
    assert fn._cache_size() == 1
    assert out2["final_return"].shape == (2, 2) and not out2["diverged"].any()


# ---- scoring -------------------------------------------------------------------------------------

def test_normalized_return_closed_form():
    got = normalized_return([20.0, 10.0, 15.0, 5.0, 1e6, -1e6, np.nan, np.inf], 20.0, 10.0)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.5, 1.5, -CLIP, CLIP, CLIP, CLIP])
    assert CLIP == 5.0
    assert worst("ppo_normalized", {"ppo": 20.0, "random": 10.0}) == 5.0
    # raw returns: the worst is the return that normalizes to +C (negated: lower is better)
    w = worst("final_return", {"ppo": 20.0, "random": 10.0})
    assert w == -(10.0 + (1.0 - CLIP) * 10.0) == 30.0
    assert normalized_return([-w], 20.0, 10.0)[0] == CLIP


@pytest.mark.parametrize("ppo,random", [(20.0, 22.0), (20.0, 20.0), (-200.0, -200.0),
                                        (0.5, -0.6), (-90.0, -500.0)])
def test_normalized_return_keeps_its_direction(ppo, random):
    """A higher return always scores lower, also where PPO-clip does not beat a random policy
    (short budgets), and PPO-clip's own return scores 0."""
    returns = np.linspace(min(ppo, random) - 5, max(ppo, random) + 5, 41)
    s = normalized_return(returns, ppo, random)
    assert np.all(np.diff(s) <= 0) and s[0] > s[-1]
    assert normalized_return([ppo], ppo, random)[0] == 0.0
    assert np.isfinite(worst("final_return", {"ppo": ppo, "random": random}))


@pytest.mark.parametrize("fitness", ["ppo_normalized", "final_return"])
def test_drift_scorer_rejects_violators_before_training(fitness, ppo_run, one_device_mesh):
    train, _ = ppo_run
    refs = {TASK.name: {"ppo": 20.0, "random": 10.0}}
    # chunk 2, seeds 2: the two valid members are one [2, 2] call (the compiled shape above)
    scorer = DriftScorer("test-rl", "0", [TASK], ppo_clip(), 0, 2, refs, fitness=fitness,
                      mesh=one_device_mesh, chunk=2)
    assert scorer.trains[TASK.name] is train
    eps = [0.2, -0.1, 0.1, -0.3]
    result = scorer.score(stack([{"eps": np.float32(e)} for e in eps]))
    assert result["rejected"].tolist() == [False, True, False, True]
    assert result["reasons"][0] == result["reasons"][2] == ""
    assert "r=1" in result["reasons"][1] and "r=1" in result["reasons"][3]
    m = result["tasks"][TASK.name]
    w = worst(fitness, refs[TASK.name])
    assert w == (5.0 if fitness == "ppo_normalized" else 30.0)
    f = result["fitness"]
    assert f[1] == f[3] == w
    assert np.isfinite(f[[0, 2]]).all() and (f[[0, 2]] != w).all()
    assert np.isnan(m["final_return"][[1, 3]]).all() and m["diverged"][[1, 3]].all()
    assert np.isfinite(m["final_return"][[0, 2]]).all() and not m["diverged"][[0, 2]].any()
    mean = m["final_return"][[0, 2]].mean(axis=1)
    want = np.clip(1.0 - (mean - 10.0) / 10.0, -CLIP, CLIP) if fitness == "ppo_normalized" \
        else -mean
    np.testing.assert_allclose(f[[0, 2]], want, rtol=1e-6)
    assert compiled(train, one_device_mesh)._cache_size() == 1


def test_drift_scorer_all_rejected_trains_nothing(one_device_mesh, monkeypatch):
    import lab.kinds.drift.scoring as S
    monkeypatch.setattr(S, "evaluate", lambda *a, **k: pytest.fail("trained a rejected member"))
    refs = {TASK.name: {"ppo": 20.0, "random": 10.0}}
    scorer = DriftScorer("test-rl", "0", [TASK], ppo_clip(), 0, 2, refs, fitness="mean_return",
                      mesh=one_device_mesh)
    result = scorer.score(stack([{"eps": np.float32(-0.1)}, {"eps": np.float32(-0.2)}]))
    assert result["rejected"].all() and result["fitness"].tolist() == [30.0, 30.0]
    assert all("r=1" in r for r in result["reasons"])


def test_drift_scorer_trains_a_named_environment_on_its_own_seed_count(one_device_mesh,
                                                                      monkeypatch):
    import lab.kinds.drift.scoring as S
    other = make_env_task("cp_other", "CartPole-v1", steps=1024, num_envs=4, num_steps=32,
                          epochs=1, minibatches=2)
    calls = {}

    def evaluate(train, genomes, keys, mesh, chunk):  # the returns are each seed's index
        rows, n = keys.shape
        calls[n] = calls.get(n, 0) + 1
        seed = np.broadcast_to(np.arange(n, dtype=np.float64), (rows, n))
        return {"final_return": seed, "mean_return": seed, "episodes": seed + 1,
                "curve": seed[..., None], "diverged": np.zeros((rows, n), bool)}
    monkeypatch.setattr(S, "evaluate", evaluate)
    refs = {t: {"ppo": 20.0, "random": 10.0} for t in (TASK.name, other.name)}
    kw = dict(fitness="final_return", mesh=one_device_mesh)
    scorer = DriftScorer("test-rl", "0", [TASK, other], ppo_clip(), 0, 2, refs,
                         task_seeds={"cp_other": 5}, **kw)
    plain = DriftScorer("test-rl", "0", [TASK, other], ppo_clip(), 0, 2, refs, **kw)
    assert (scorer.seeds_of(TASK.name), scorer.seeds_of("cp_other")) == (2, 5)
    assert scorer.context.key() != plain.context.key()
    result = scorer.score(stack([{"eps": np.float32(e)} for e in (0.2, -0.1, 0.1)]))
    assert calls == {2: 1, 5: 1}
    mine, theirs = result["tasks"][TASK.name], result["tasks"]["cp_other"]
    assert mine["final_return"].shape == (3, 2) and theirs["final_return"].shape == (3, 5)
    assert np.isnan(theirs["final_return"][1]).all()  # the violator, rejected before training
    np.testing.assert_allclose(theirs["fitness"][[0, 2]], -2.0)  # minus the mean of 0..4
    np.testing.assert_allclose(mine["fitness"][[0, 2]], -0.5)


# ---- configs -------------------------------------------------------------------------------------

def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_lpo_smoke_config():
    cfg = load_config(ROOT / "configs" / "lpo_smoke.yaml")
    assert cfg.kind == "drift" and cfg.suite == "rl-smoke"
    assert cfg.rule.family == "lpo" and cfg.rule.hidden == 16 and cfg.rule.ppo_init
    assert cfg.rule.family_name() == "lpo(hidden=16)"
    assert cfg.search.fitness == "ppo_normalized"
    assert objective_from_name(cfg.rule.family_name()) is lpo(SMALL)


def test_drift_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"suite: kind 'drift' cannot train on suite 'train'"):
        load_config(write(tmp_path, "kind: drift\nsuite: train\n"))
    with pytest.raises(ConfigError, match=r"suite: kind 'learned' cannot train on suite "
                                          r"'rl-train'"):
        load_config(write(tmp_path, "kind: learned\nsuite: rl-train\n"))
    with pytest.raises(ConfigError, match=r"run\.yaml:3: rule.hiden: unknown key; did you mean "
                                          r"hidden"):
        load_config(write(tmp_path, "kind: drift\nsuite: rl-smoke\nrule: {hiden: 8}\n"))
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "kind: drift\nsuite: rl-smoke\nsearch: {fitness: bogus}\n"))
    msg = str(e.value)
    assert "search.fitness: unknown RL fitness 'bogus'" in msg
    for choice in ("ppo_normalized", "final_return", "mean_return"):
        assert choice in msg
    with pytest.raises(ConfigError, match=r"rule.family: unknown drift family 'ppo'"):
        load_config(None, ["kind=drift", "suite=rl-smoke", "rule.family=ppo"])


def test_drift_search_starts_from_an_artifacts_genome(store, tmp_path, capsys):
    """``rule.init: discovered/NAME`` (a warm start): the ES mean starts at the artifact's
    genome, bit for bit; an artifact of another family or kind, or no artifact, is a config
    error naming ``rule.init`` (exit 2 from ``lab launch``)."""
    from lab.cli import main
    from lab.commands.artifacts import load_artifact
    from lab.core import es
    from lab.core.loop import build_setup
    smoke, art = ROOT / "configs" / "lpo_smoke.yaml", ROOT / "discovered" / "lpo-rl-train"
    same = ["rule.hidden=32", "rule.progress=true"]
    cfg = load_config(smoke, [*same, f"rule.init={art}"])
    want = es.Flattener.of(load_artifact(art).genome).flat
    driver = es.ESDriver(cfg, build_setup(cfg, store))
    np.testing.assert_array_equal(np.asarray(driver.flat.flat), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(es.mean_of(driver.spec, driver.es)),
                                  np.asarray(want))
    cold = load_config(smoke, same)  # the family's own start (PPO-clip: a zero output layer)
    assert not np.array_equal(es.Flattener.of(build_setup(cold, store).rule.genome).flat, want)
    with pytest.raises(ConfigError, match=r"rule.init: .*a drift of family "
                                          r"'lpo\(hidden=32,progress=1\)', the rule section "
                                          r"builds 'lpo\(hidden=16\)'"):
        load_config(smoke, [f"rule.init={art}"])
    with pytest.raises(ConfigError, match="rule.init: .*an artifact of kind 'pbt', not 'drift'"):
        load_config(smoke, [*same, f"rule.init={ROOT / 'discovered' / 'pbt-train'}"])
    rc = main(["launch", str(smoke), "--store", str(tmp_path / "x.db"), "--set",
               f"rule.init={tmp_path / 'nope'}"])
    assert rc == 2
    assert "rule.init" in capsys.readouterr().err


# ---- the CLI -----------------------------------------------------------------------------------

def test_lab_tasks_lists_rl_environments(cli):
    rc, out, _ = cli("tasks", "--suite", "rl-heldout", "--json")
    assert rc == 0
    rows = json.loads(out)
    envs = {r["env"] for r in rows}
    assert len(rows) >= 2 and len(envs) == len(rows)
    assert all("rl-heldout" in r["suites"] and r["env"].endswith("-MinAtar") for r in rows)


def test_lab_replay_refuses_update_rule_on_rl_suite(cli):
    rc, _, err = cli("replay", "baseline:adam", "--suite", "rl-heldout")
    assert rc == 2
    assert err.startswith("lab replay: error: --suite rl-heldout")
    assert "supervised suites" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_rl_replay_has_suite_statistics_and_a_self_difference_of_zero(tmp_path):
    """PPO-clip replayed against itself on the same seeds: every seed's score is the baseline's,
    so the paired difference is 0 with a zero-width interval and no environment differs; the
    README shows the suite means and the differences."""
    from lab.core.target import Target
    from lab.kinds.drift.replay import readme_tables, replay_rl
    o = ppo_clip()
    doc = replay_rl(Target("x", o, o.genome, 1.0, "clip-again"), "rl-tiny", seeds=2,
                    baselines=("ppo_clip",))
    d = doc["differences"]["clip-again"]["ppo_clip"]
    assert d["mean"] == 0.0 and d["ci95"] == [0.0, 0.0]
    assert d["worse"] == d["better"] == []
    assert set(doc["intervals"]) == {"clip-again", "ppo_clip"}
    text = "\n".join(readme_tables({"heldout": doc}))
    assert "| clip-again | ppo_clip | +0.000 | [+0.000, +0.000] | none | none |" in text
