"""One program engine, several signatures (lab/kinds/program/signatures.py): drift programs
(``r, A, progress -> drift``) and schedule programs (``t, T -> multiplier``) beside update
rules. Their text round-trips, both backends agree on random programs of each signature, the
seeds equal their closed forms (PPO-clip, DPO; optax's schedules and REX) by value and by
fingerprint, the constraint check agrees with a direct evaluation, and a drift program and the LPO
network computing the same function share one fingerprint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.core.hashing import matches
from lab.kinds.drift import objectives as O
from lab.kinds.program import compiled as C
from lab.kinds.program import interpreted as I
from lab.kinds.program import ir as P
from lab.kinds.program import mutate as M
from lab.kinds.program import schedules as S
from lab.kinds.program.ops import OPS
from lab.kinds.program.programs import genome_of, load_seed, program_of, seed_names
from lab.kinds.program.signatures import DRIFT, SCHEDULE, UPDATE, signature
from lab.kinds.program.text import parse, to_source

L = 16


def random_programs(sig, n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = [M.random_program(rng, int(rng.integers(1, 10)), sig) for _ in range(n)]
    for i in range(n):  # and mutants of them
        out.append(M.mutate(out[i], rng, max_len=L))
    return out


DRIFTS = random_programs(DRIFT)
SCHEDS = random_programs(SCHEDULE, seed=1)


def drift_inputs(n=64, seed=3):
    rng = np.random.default_rng(seed)
    r = np.exp(rng.uniform(-1, 1, n)).astype(np.float32)
    a = rng.normal(size=n).astype(np.float32) * 2
    return r, a, np.float32(0.4)


# ---- signatures and text ----------------------------------------------------------------------

def test_signatures_are_named_and_the_update_op_set_is_unchanged():
    assert signature("drift") is DRIFT and signature("schedule") is SCHEDULE
    with pytest.raises(ValueError, match="unknown program signature 'drif'; did you mean drift"):
        signature("drif")
    # new ops (cos) are not update ops: the update search space and its draws are as before
    assert "cos" not in {OPS[c].name for c in UPDATE.ops}
    assert "cos" in {OPS[c].name for c in SCHEDULE.ops}
    assert not any(OPS[c].reduction or OPS[c].name == "pow_t" for c in DRIFT.ops + SCHEDULE.ops)


@pytest.mark.parametrize("sig", ["drift", "schedule"])
def test_seeds_round_trip(sig):
    names = seed_names(sig)
    assert names == sorted({"drift": ["dpo", "ppo_clip"],
                            "schedule": ["constant", "cosine", "linear", "rex",
                                         "warmup_cosine"]}[sig])
    for name in names:
        p = load_seed(name, sig)
        assert p.sig.name == sig and parse(to_source(p)) == p
        assert P.Program.from_arrays(p.to_arrays(max(L, len(p))), p.name, p.sig) == p


def test_random_programs_of_each_signature_round_trip_and_stay_in_their_op_set():
    for p in DRIFTS + SCHEDS:
        assert P.is_valid(p)
        assert parse(to_source(p)) == p
        assert program_of(genome_of(p, L), p.name, p.sig) == p
        assert all(s.op in p.sig.ops for s in p.stmts)
        assert len(p.out) == 1


def test_the_header_picks_the_signature_and_a_named_one_is_enforced():
    text = "def f(t, T):\n    x = div(t, T)\n    return x\n"
    assert parse(text).sig == SCHEDULE
    from lab.kinds.program.ir import ProgramError
    with pytest.raises(ProgramError, match="a drift program takes 3 inputs"):
        parse(text, "s.prog", DRIFT)
    with pytest.raises(ProgramError, match="unknown drift seed program 'ppo'"):
        load_seed("ppo", "drift")


def test_symbolic_hash_tells_signatures_apart_and_keeps_update_hashes():
    d = parse("def f(r, A, progress):\n    x = abs(r)\n    return x\n")
    s = parse("def f(t, T):\n    x = abs(t)\n    return x\n")
    assert P.symbolic_hash(d) != P.symbolic_hash(s)
    # an update rule's hash has no signature part: stored hashes keep their meaning
    assert P.symbolic_hash(load_seed("adam")) == "a8e4251b789a12b963196cbbad6fab50"


# ---- both backends ----------------------------------------------------------------------------

def compiled_value(p, *inputs):
    fn, genome = C.structure_function(p, simplify_first=False)
    return np.asarray(fn(genome, *inputs))


@pytest.mark.parametrize("which", ["drift", "schedule"])
def test_interpreter_equals_compiled_and_vmap_equals_loop(which):
    progs = DRIFTS if which == "drift" else SCHEDS
    if which == "drift":
        inputs = drift_inputs()
    else:
        T = np.float32(200)
        inputs = (np.arange(0, 201, 5, dtype=np.float32), T)
    batch = jax.tree.map(lambda *x: np.stack(x), *[genome_of(p, L) for p in progs])
    together = np.asarray(jax.jit(jax.vmap(lambda g: I.apply(g, *inputs)))(batch))
    for i, p in enumerate(progs):
        alone = np.asarray(jax.jit(I.apply)(genome_of(p, L), *inputs))
        ref = compiled_value(p, *inputs)
        np.testing.assert_allclose(alone, ref, rtol=1e-5, atol=1e-6 * max(1, np.abs(ref).max()))
        np.testing.assert_array_equal(together[i], alone)  # the batch beside it changes nothing


def test_the_interpreter_is_differentiable_in_its_inputs():
    p = load_seed("dpo", "drift")
    r, a, prog = drift_inputs(8)
    f_int = lambda r: jnp.sum(I.apply(genome_of(p, L + 16), r, a, prog))  # noqa: E731
    f_ref = lambda r: jnp.sum(O.dpo().drift(O.dpo().genome, r, a, prog))  # noqa: E731
    np.testing.assert_allclose(jax.grad(f_int)(jnp.asarray(r)), jax.grad(f_ref)(jnp.asarray(r)),
                               rtol=1e-5, atol=1e-7)


# ---- seeds equal their closed forms ---------------------------------------------------------

@pytest.mark.parametrize("name", ["ppo_clip", "dpo"])
def test_drift_seeds_equal_the_closed_forms_by_value_and_hash(name):
    ref = {"ppo_clip": O.ppo_clip(), "dpo": O.dpo()}[name]
    g = genome_of(load_seed(name, "drift"), O.PROGRAM_LEN)
    r, a, prog = drift_inputs()
    got = np.asarray(O.programs().drift(g, r, a, prog))
    np.testing.assert_allclose(got, np.asarray(ref.drift(ref.genome, r, a, prog)), rtol=1e-6,
                               atol=1e-7)
    fp, h = O.fingerprint(O.programs(), g)
    fp_ref, h_ref = O.fingerprint(ref)
    assert h == h_ref and matches(fp, fp_ref)
    info = O.describe_function(O.programs(), g)
    assert info["equals"] == [name] and info["constraints"]["valid"]


@pytest.mark.parametrize("name", sorted(S.KNOWN))
def test_schedule_seeds_equal_optax_and_rex_by_value_and_hash(name):
    p = load_seed(name, "schedule")
    fp, h = S.fingerprint(p)
    fp_ref, h_ref = S.fingerprint_known(name)
    assert h == h_ref and matches(fp, fp_ref)
    assert S.describe(fp)["equals"] == [S.KNOWN[name]]
    # by value, in float32 as a run computes it, at a horizon off the fingerprint's grid
    T = 300
    t = np.arange(T + 1, dtype=np.float32)
    got = np.asarray(I.apply(genome_of(p, L), t, np.float32(T)))
    if name == "rex":
        want = S.rex(t.astype(np.float64), float(T))
    else:
        import optax
        want = np.asarray(
            {"constant": optax.constant_schedule(1.0),
             "linear": optax.linear_schedule(1.0, 0.0, T),
             "cosine": optax.cosine_decay_schedule(1.0, T),
             "warmup_cosine": optax.warmup_cosine_decay_schedule(0.0, 1.0, T // 10, T)}[name](
                jnp.arange(T + 1)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_schedules_that_differ_have_different_fingerprints():
    fps = {n: S.fingerprint_known(n) for n in S.KNOWN}
    assert len({h for _, h in fps.values()}) == len(S.KNOWN)
    closest = S.describe(S.fingerprint(parse(
        "def f(t, T):\n    z = div(t, T)\n    x = neg(z)\n    m = add_k(x, 1.01)\n"
        "    return m\n"))[0])
    assert closest["equals"] == [] and closest["closest"]["name"] == "optax.linear_schedule"


# ---- drift constraints and fingerprints across representations ------------------------------

@pytest.mark.slow  # every random program three times in float64, op by op
def test_constraint_check_agrees_with_a_direct_evaluation_on_random_drift_programs():
    fam = O.programs()
    genomes = [genome_of(p, L) for p in DRIFTS]
    batch = jax.tree.map(lambda *x: np.stack(x), *genomes)
    valid, reasons = O.check(fam, batch)
    r, a, prog = (np.asarray(x) for x in np.meshgrid(O.GRID_R, O.GRID_A, O.GRID_P,
                                                     indexing="ij"))
    for i, p in enumerate(DRIFTS):
        with jax.enable_x64(True):
            v = compiled_value(p, r, a, prog)
            h = 1e-4
            at = lambda x, p=p: compiled_value(p, np.full_like(a[0], x), a[0], prog[0])  # noqa: E731
            zero, slope = at(1.0), (at(1.0 + h) - at(1.0 - h)) / (2 * h)
        direct = (np.all(np.isfinite(v)) and v.min() >= -O.TOL_NEG
                  and np.abs(zero).max() <= O.TOL_ZERO and np.abs(slope).max() <= 1e-3)
        assert bool(valid[i]) == bool(direct), (to_source(p), reasons[i])
        assert (reasons[i] == "") == bool(valid[i])
    assert not valid.all()  # random programs break the constraints; the check names how
    assert any("at r=1" in x for x in reasons)


def test_a_drift_program_and_the_lpo_network_computing_it_share_a_fingerprint():
    """LPO with one tanh unit reading (r - 1)^2: D = relu(b tanh(a (r - 1)^2) - 1e-4)."""
    a_, b_ = 0.75, 0.5
    spec = O.LPOSpec(hidden=1, ppo_init=False)
    net = O.lpo(spec)
    w0 = np.zeros((len(spec.features), 1), np.float32)
    w0[spec.features.index("(r-1)^2"), 0] = a_
    genome = {"w0": w0, "w1": np.asarray([b_], np.float32)}
    p = parse(f"""def lpo_one_unit(r, A, progress):
    x0 = add_k(r, -1.0)
    x1 = square(x0)
    x2 = scale_k(x1, {a_})
    x3 = tanh(x2)
    x4 = scale_k(x3, {b_})
    x5 = add_k(x4, -0.0001)
    zero = const_k(0.0)
    drift = max(x5, zero)
    return drift
""")
    fp_net, _ = O.fingerprint(net, genome)
    fp_prog, _ = O.fingerprint(O.programs(), genome_of(p, L))
    assert matches(fp_prog, fp_net)
    # and PPO-clip's program is not LPO's residual start (that one has the 1e-4 dead zone)
    fp_start, _ = O.fingerprint(O.lpo(O.LPOSpec(hidden=4)))
    assert not matches(O.fingerprint(O.programs())[0], fp_start)


# ---- schedules of Adam ------------------------------------------------------------------------

def _adam_run(rule, genome, steps=12, lr=20.0):
    """Deltas of ``steps`` updates of ``rule`` on a fixed gradient stream (horizon = steps)."""
    from lab.core.rule import make_ctx
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    grads = jnp.asarray(rng.normal(size=(steps, 3, 2)), jnp.float32)
    state = rule.init(genome, params)
    out = []
    for t in range(steps):
        d, state = rule.update(genome, {"w": grads[t]}, state, params, make_ctx(t, steps, lr))
        out.append(np.asarray(d["w"]))
    return np.stack(out), grads


# the constant schedule's and REX's cases are slow (make test's time): cosine varies over the run
@pytest.mark.parametrize("name", [pytest.param("constant", marks=pytest.mark.slow), "cosine",
                                  pytest.param("rex", marks=pytest.mark.slow)])
def test_schedule_rule_is_adam_times_the_schedule(name):
    import optax
    steps, lr = 12, 20.0
    rule = S.schedule_rule()
    got, grads = _adam_run(rule, genome_of(load_seed(name, "schedule"), 24), steps, lr)
    peak = S.BASE_LR * lr
    sched = {"constant": optax.constant_schedule(peak),
             "cosine": optax.cosine_decay_schedule(peak, steps),
             "rex": lambda t: peak * S.rex(t, steps)}[name]
    opt = optax.adam(sched)
    state = opt.init({"w": jnp.zeros((3, 2))})
    for t in range(steps):
        want, state = opt.update({"w": grads[t]}, state)
        np.testing.assert_allclose(got[t], np.asarray(want["w"]), rtol=2e-5, atol=1e-9)


def test_a_schedules_lr_multiplier_bakes_into_its_last_statement():
    p = load_seed("cosine", "schedule")
    g = genome_of(p, 24, lr=3.0)
    baked = program_of(g, "s", SCHEDULE)
    assert len(baked) == len(p) + 1 and OPS[baked.stmts[-1].op].name == "scale_k"
    t = np.arange(0, 101, 10, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(I.apply(genome_of(baked, 24), t, np.float32(100))),
                               3 * np.asarray(I.apply(g, t, np.float32(100))), rtol=1e-6)


def test_schedules_not_worth_a_run_are_named():
    texts = {"zero": "z = const_k(0.0)", "negative": "z = const_k(-1.0)",
             "larger than": "z = scale_k(t, 1.0)", "": "z = const_k(2.0)"}
    genomes = [genome_of(parse(f"def s(t, T):\n    {body}\n    return z\n"), 8)
               for body in texts.values()]
    reasons = S.problems(genomes)
    for want, got in zip(texts, reasons, strict=True):
        assert (want in got) if want else got == "", (want, got)
