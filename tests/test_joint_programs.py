"""Joint programs (``rule.signature: joint``): an update rule and its learning-rate schedule as one
program ``g, w, lr, t, T, m, v -> update, m, v``. ``compose(update, schedule)`` equals the
update under optax's schedule on both backends; random joint programs agree across backends and
round-trip as text; the fingerprint over a whole run (the update probe at two horizons,
``hashing.run_fingerprints``) tells schedules apart
that differ only late in a run, and still names Adam at a constant schedule ``adam``; the search
compiles once and stores the family ``joint``, which inspect and replay read back."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab import treeio
from lab.core import hashing
from lab.core.config import ConfigError, load_config
from lab.core.rule import make_ctx
from lab.kinds.program import mutate as M
from lab.kinds.program import schedules as S
from lab.kinds.program.compiled import structure_rule
from lab.kinds.program.ir import ProgramError, is_valid
from lab.kinds.program.programs import (
    compose,
    genome_of,
    joint_rule,
    load_seed,
    program_of,
    seed_names,
)
from lab.kinds.program.signatures import JOINT, UPDATE
from lab.kinds.program.text import parse, to_source

L = 40
STEPS = 12


def run_rule(rule, genome, steps=STEPS, horizon=STEPS, lr=1.0, seed=0):
    """Deltas of ``steps`` updates of one genome on fixed gradients ([steps, 3, 2])."""
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps, 3, 2)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    update = jax.jit(lambda s, g, t: rule.update(genome, {"w": g}, s, params,
                                                 make_ctx(t, horizon, lr)))
    state, out = rule.init(genome, params), []
    for t in range(steps):
        delta, state = update(state, grads[t], t)
        out.append(np.asarray(delta["w"]))
    return np.stack(out), grads


@pytest.mark.parametrize("schedule", ["constant", "cosine", "rex"])
def test_compose_is_the_update_rule_under_the_schedule_on_both_backends(schedule):
    p = compose(load_seed("adam"), load_seed(schedule, "schedule"))
    assert p.sig == JOINT and is_valid(p)
    lr = 20.0
    interpreted, grads = run_rule(joint_rule(), genome_of(p, L), lr=lr)
    rule = structure_rule(p)
    traced, _ = run_rule(rule, rule.genome, lr=lr)
    peak = 1e-3 * lr  # the adam seed's step is 1e-3 x lr
    sched = {"constant": optax.constant_schedule(peak),
             "cosine": optax.cosine_decay_schedule(peak, STEPS),
             "rex": lambda t: peak * S.rex(t, STEPS)}[schedule]
    opt = optax.adam(sched)
    state = opt.init({"w": jnp.zeros((3, 2))})
    for t in range(STEPS):
        want, state = opt.update({"w": jnp.asarray(grads[t])}, state)
        np.testing.assert_allclose(interpreted[t], np.asarray(want["w"]), rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(traced[t], np.asarray(want["w"]), rtol=2e-5, atol=1e-9)


def test_joint_text_round_trips_and_its_header_picks_the_signature():
    p = load_seed("lion+warmup_cosine", "joint")
    text = to_source(p)
    assert text.startswith("def lion_warmup_cosine(g, w, lr, t, T, m, v):")
    assert parse(text) == p and parse(text).sig == JOINT
    assert program_of(genome_of(p, L), p.name, JOINT) == p
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = M.mutate(M.random_program(rng, int(rng.integers(1, 12)), JOINT), rng, max_len=L)
        assert q.sig == JOINT and is_valid(q) and parse(to_source(q)) == q
        assert all(s.op in JOINT.ops for s in q.stmts)
    assert "adam+cosine" in seed_names("joint") and len(seed_names("joint")) == \
        len(seed_names("update")) * len(seed_names("schedule"))
    with pytest.raises(ProgramError, match="compose takes an update program and a schedule"):
        compose(load_seed("cosine", "schedule"), load_seed("adam"))
    with pytest.raises(ProgramError, match="unknown joint seed program 'adam\\+cosin'"):
        load_seed("adam+cosin", "joint")


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_interpreter_equals_compiled_on_random_joint_programs():
    rng = np.random.default_rng(1)
    progs = [compose(load_seed("adam"), load_seed("cosine", "schedule"))]
    while len(progs) < 6:
        q = M.mutate(progs[int(rng.integers(len(progs)))], rng, max_len=L - 8)
        progs.append(M.mutate(q, rng, max_len=L - 8))
    for p in progs:
        got, _ = run_rule(joint_rule(), genome_of(p, L), steps=4, horizon=6)
        rule = structure_rule(p, simplify_first=False)
        want, _ = run_rule(rule, rule.genome, steps=4, horizon=6)
        ok = np.isfinite(want)
        np.testing.assert_array_equal(ok, np.isfinite(got))
        np.testing.assert_allclose(got[ok], want[ok], rtol=2e-4,
                                   atol=1e-6 * max(1.0, np.abs(want[ok]).max(initial=0)))


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_the_joint_fingerprint_tells_late_schedules_apart_and_names_adam():
    rule = joint_rule()
    late = parse("def late(t, T):\n    z = div(t, T)\n    a = neg(z)\n    b = add_k(a, 1.0)\n"
                 "    c = scale_k(b, 2.0)\n    one = const_k(1.0)\n    multiplier = min(c, one)\n"
                 "    return multiplier\n")  # 1 for the first half of a run, then linear decay
    progs = {name: compose(load_seed("adam"), load_seed(name, "schedule"))
             for name in ("constant", "cosine", "linear", "rex")}
    progs["late"] = compose(load_seed("adam"), late)
    genomes = [genome_of(p, L) for p in progs.values()]
    batched = hashing.run_fingerprints(rule, genomes)
    assert len({h for _, h, _ in batched}) == len(progs)
    for g, (fp, h, key) in zip(genomes, batched, strict=True):
        fp1, h1 = hashing.run_fingerprint(rule, g)
        assert h == h1 and np.array_equal(fp, fp1) and key.startswith(h)
    # the probe at its own horizon alone cannot tell "late" from the constant schedule
    alone = hashing.fingerprints(rule, [genomes[0], genomes[-1]])
    assert alone[0][1] == alone[1][1]
    # Adam at a constant schedule is Adam over a whole run; at cosine it is no known rule
    assert "adam" in hashing.describe_over_run(rule, genomes[0])["equals"]
    assert hashing.describe_over_run(rule, genomes[1])["equals"] == []
    # the same step scale: the evaluation key's scale part is the update probe's
    assert batched[0][2][len(batched[0][1]):] == hashing.fingerprints(
        rule, [genomes[0]])[0][2][-4:]


SMALL = ["kind=program", "suite=tiny", "budget=8", "seeds=1", "rule.signature=joint",
         "rule.seed=adam+cosine", "rule.max_len=30", "rule.lr=20", "search.population=8",
         "search.children=4", "search.generations=3", "evaluator.devices=1",
         "search.lr_grid=[1.0, 3.0]", "output.top_k=2", "search.simplify=false"]


@pytest.mark.slow  # a search (the update and schedule searches' own tests are fast)
def test_joint_search_compiles_once_and_stores_joint_programs(store, program_generations):
    from lab.core.loop import launch
    sizes, evos = program_generations["sizes"], program_generations["evolutions"]
    run_id = launch(load_config(None, SMALL), store, name="joint")
    assert store.get_run(run_id)["status"] == "done"
    assert len(sizes) == 3 and all(s == [1] * len(s) for s in sizes), sizes
    seed = load_seed("adam+cosine", "joint")
    want = hashing.run_fingerprints(joint_rule(), [genome_of(seed, 31)])[0][2]
    assert evos[-1].keys([seed])[0] == want
    rows = store.best_members(run_id, k=10)
    assert {(r["kind"], r["name"]) for r in rows} == {("program", "joint")}
    for r in rows:
        p = program_of(treeio.tree_from_npz(r["genome"]), "j", JOINT)
        assert p.sig == JOINT and parse(r["readable"]).sig == JOINT


@pytest.mark.slow  # a search, an inspect, a replay and a program file
def test_joint_inspect_replay_and_program_file_targets(cli, tmp_path):
    rc, _, err = cli("launch", "configs/joint_smoke.yaml", "--set", "suite=tiny", "--set",
                     "budget=8", "--set", "seeds=1", "--set", "search.generations=2", "--set",
                     "search.population=4", "--set", "search.children=2", "--name", "jt")
    assert rc == 0, err
    rc, out, err = cli("inspect", "jt:0", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["name"] == "joint" and parse(info["source"]).sig == JOINT
    assert info["hash"] == info["store_key"][:len(info["hash"])]
    rc, out, err = cli("replay", "jt:0", "--suite", "tiny", "--seeds", "2", "--baselines", "adam",
                       "--json")
    assert rc == 0, err
    assert {r["rule"] for r in json.loads(out)["rows"]} == {"jt:0", "tuned adam"}
    path = tmp_path / "adam_constant.prog"
    path.write_text(to_source(load_seed("adam+constant", "joint")))
    rc, out, err = cli("inspect", f"program:{path}", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["name"] == "joint" and "adam" in info["equals"]


def test_joint_configs_are_checked():
    cfg = load_config("configs/joint_smoke.yaml")
    assert cfg.rule.signature == "joint" and cfg.rule.seed == "adam+cosine"
    assert load_config("configs/joint.yaml").rule.signature == "joint"
    assert load_config(None, [*SMALL, "search.es.top=2"]).search.es.top == 2  # compiled path
    with pytest.raises(ConfigError, match=r"rule.seed: 'adam' is no joint seed program"):
        load_config(None, [*SMALL, "rule.seed=adam"])
    with pytest.raises(ConfigError, match=r"rule.max_len: the seed adam\+cosine has 23"):
        load_config(None, [*SMALL, "rule.max_len=20"])
    assert UPDATE.n_in + 1 == JOINT.n_in
