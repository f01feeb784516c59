"""The two program backends held equal: the compile-once interpreter (``program_rule``) and the
compiled path (``compile.structure_rule``), on a fixed sample of programs; the seeds against optax
and the functional fingerprints of the baselines; export as an optax optimizer."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab.core import hashing
from lab.core.optimizers import BASELINES, make_baseline
from lab.core.rule import make_ctx, stack_genomes, to_optax
from lab.kinds.program import compiled as C
from lab.kinds.program import ir as P
from lab.kinds.program import mutate as M
from lab.kinds.program.ops import OPS
from lab.kinds.program.programs import genome_of, load_seed, parse, program_rule, seed_names
from lab.kinds.program.signatures import UPDATE
from lab.kinds.program.text import to_source

L = 24  # padded genome length of the whole sample
STEPS = 5
LR = 0.1

REDUCTIONS = """def reductions(g, w, lr, t, m, v):
    m = interp(g, m, 0.9)
    x1 = square(g)
    v = interp(x1, v, 0.99)
    x3 = rms(m)
    x4 = mean(v)
    x5 = dot(g, m)
    x6 = cosine(g, m)
    x7 = pow_t(0.9)
    x8 = add_k(x7, 1.0)
    x9 = div(m, x3)
    x10 = mul(x9, x8)
    x11 = scale_k(x6, 0.5)
    x12 = add(x10, x11)
    x13 = sqrt_abs(x4)
    x14 = sub(x12, x13)
    x15 = tanh(x5)
    x16 = add(x14, x15)
    update = mul(x16, lr)
    return update, m, v
"""

ELEMENTWISE = """def elementwise(g, w, lr, t, m, v):
    m = interp(g, m, 0.8)
    x1 = arctan(m)
    x2 = exp(x1)
    x3 = log_abs(g)
    x4 = rsqrt(v)
    x5 = recip(x2)
    x6 = spow_k(g, 0.5)
    x7 = clip_k(x3, 2.0)
    x8 = clip_by(x6, x5)
    x9 = max(x7, x8)
    x10 = min(x9, x4)
    x11 = neg(x10)
    x12 = abs(g)
    v = add_k(x12, 0.1)
    x14 = scale_k(w, 0.01)
    x15 = const_k(0.3)
    x16 = mul(x14, x15)
    x17 = add(x16, x11)
    update = mul(x17, lr)
    return update, m, v
"""


def sample_programs(seed: int = 8) -> list[P.Program]:
    """A fixed sample: two hand-written programs that use every op between them, random
    programs and mutants of seeds (the seed picked so that every program moves the params)."""
    rng = np.random.default_rng(seed)
    sample = [parse(REDUCTIONS), parse(ELEMENTWISE)]
    sample += [M.random_program(rng, 10) for _ in range(5)]
    for name in ("adam", "lion", "rmsprop", "momentum", "adamw"):
        p = load_seed(name)
        for _ in range(2):
            p = M.mutate(p, rng, max_len=L)
        sample.append(p)
    return sample


SAMPLE = sample_programs()
IDS = [f"{i}-{p.name}" for i, p in enumerate(SAMPLE)]


def make_params(dtypes=(jnp.float32, jnp.float32)):
    rng = np.random.default_rng(1)
    return {"w": jnp.asarray(rng.standard_normal((4, 3)), dtypes[0]),
            "b": jnp.asarray(rng.standard_normal(3), dtypes[1])}


def make_grads(steps: int = STEPS, spread: bool = False):
    """``steps`` stacked gradients; ``spread``: magnitudes log-uniform over 1e-3 .. 1e2."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((steps, 15))
    if spread:
        x = np.sign(x) * np.exp(rng.uniform(math.log(1e-3), math.log(1e2), x.shape))
    x = jnp.asarray(x, jnp.float32)
    return {"w": x[:, :12].reshape(steps, 4, 3), "b": x[:, 12:]}


def scan_run(rule, genome, params, grads, lr=LR):
    """``(deltas, states)`` of every step from a fresh state (params moved by the deltas)."""
    steps = jax.tree.leaves(grads)[0].shape[0]

    def step(carry, inp):
        p, s = carry
        t, g = inp
        d, s = rule.update(genome, g, s, p, make_ctx(t, steps, lr))
        return (optax.apply_updates(p, d), s), (d, s)
    _, out = jax.lax.scan(step, (params, rule.init(genome, params)),
                          (jnp.arange(steps, dtype=jnp.int32), grads))
    return out


@functools.cache
def interpreter_run():
    """``jit(genome -> (deltas, states))``: the interpreter on the shared params and grads; the
    states are its two state registers per step (the statements' scratch left out)."""
    params, grads = make_params(), make_grads()
    return jax.jit(lambda genome: drop_scratch(scan_run(program_rule(), genome, params, grads)))


def drop_scratch(run):
    deltas, states = run
    return deltas, states.slots


@functools.cache
def interpreted(i: int):
    """The interpreter's (deltas, states) for ``SAMPLE[i]`` under jit."""
    return interpreter_run()(genome_of(SAMPLE[i], L))


@functools.cache
def compiled(i: int):
    """The compiled path's (deltas, states) for ``SAMPLE[i]`` (not simplified) under jit."""
    rule = C.structure_rule(SAMPLE[i], simplify_first=False)
    params, grads = make_params(), make_grads()
    return jax.jit(lambda k: scan_run(rule, {"k": k}, params, grads))(rule.genome["k"])


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    """Leaf by leaf within ``rtol`` and ``atol`` times the leaf's largest magnitude."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(float(np.max(np.abs(y), initial=0.0)), 1e-30)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * scale)


def flat_slots(states, live):
    """The compiled path's live state slots as ``[steps, n_params]`` arrays (the interpreter's
    layout: leaves flattened in tree order)."""
    return [jnp.concatenate([x.reshape(x.shape[0], -1) for x in jax.tree.leaves(states[j])], 1)
            for j in range(2) if live[j]]


# ---- interpreter == compiled -------------------------------------------------------------

def test_sample_uses_every_op_and_reductions():
    used = {OPS[s.op].name for p in SAMPLE for s in p.stmts}
    assert used == {OPS[c].name for c in UPDATE.ops}  # the update signature's ops
    assert all(P.is_valid(p) and len(p) <= L for p in SAMPLE)
    assert len({P.symbolic_hash(p) for p in SAMPLE}) == len(SAMPLE)


@pytest.mark.parametrize("i", range(len(SAMPLE)), ids=IDS)
def test_interpreter_equals_compiled(i):
    p = SAMPLE[i]
    d_int, s_int = interpreted(i)
    d_com, s_com = compiled(i)
    assert_close(d_int, d_com)
    assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(d_int)), "a program that acts"
    live = P.live_slots(p)
    assert tuple(s is not None for s in s_com) == live
    assert s_int.shape == (STEPS, 2, 15)
    for j, slot in zip([j for j in range(2) if live[j]], flat_slots(s_com, live), strict=True):
        assert_close(s_int[:, j], slot)


def test_vmap_over_programs_equals_loop():
    population = stack_genomes([genome_of(p, L) for p in SAMPLE])
    deltas, states = jax.jit(jax.vmap(
        lambda g: drop_scratch(scan_run(program_rule(), g, make_params(), make_grads()))))(
        population)
    for i in range(len(SAMPLE)):
        d_i, s_i = interpreted(i)
        assert_close(jax.tree.map(lambda x, i=i: x[i], deltas), d_i, rtol=1e-5, atol=1e-7)
        assert_close(states[i], s_i, rtol=1e-5, atol=1e-7)


def test_a_program_does_not_depend_on_the_batch_beside_it():
    """A statement computes an op group only when some program of the batch runs one of it
    there; what it computes for a program must not change with its neighbours (bit for bit:
    the cache and every replay count on it)."""
    params, grads = make_params(), make_grads()
    run = jax.jit(jax.vmap(lambda g: drop_scratch(scan_run(program_rule(), g, params, grads))))
    simple = [load_seed("sgd")] * 3  # only cheap ops beside it
    mixed = [parse(REDUCTIONS), *SAMPLE[1:3]]  # reductions, tanh, arctan, powers, division
    used = {OPS[s.op].name for q in mixed for s in q.stmts}
    assert {"mean", "tanh", "arctan", "div", "sqrt_abs"} <= used
    for p in (load_seed("adam"), SAMPLE[0], SAMPLE[5]):
        a = run(stack_genomes([genome_of(q, L) for q in [p, *simple]]))
        b = run(stack_genomes([genome_of(q, L) for q in [*mixed, p]]))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x[0]), np.asarray(y[-1]))


def test_op_groups_cover_every_op_once():
    from lab.kinds.program.interpreted import GROUPS
    names = [name for group in GROUPS.values() for name in group]
    assert sorted(names) == sorted(op.name for op in OPS)


def test_interpreter_compiles_once_for_a_population_shape():
    rule = program_rule()
    params, grads = make_params(), jax.tree.map(lambda x: x[0], make_grads())

    @jax.jit
    @chex.assert_max_traces(n=1)
    def population_update(genomes, state):
        return jax.vmap(rule.update, in_axes=(0, None, 0, None, None))(
            genomes, grads, state, params, make_ctx(0, 10, LR))

    try:
        for batch in (SAMPLE[0:3], SAMPLE[3:6], [load_seed("sgd"), SAMPLE[7], SAMPLE[11]]):
            genomes = stack_genomes([genome_of(p, L) for p in batch])
            state = jax.vmap(rule.init, in_axes=(0, None))(genomes, params)
            delta, state = population_update(genomes, state)
            assert delta["w"].shape == (3, 4, 3) and state.slots.shape == (3, 2, 15)
            assert state.scratch.shape == (3, L, 15)  # the statements' scratch registers
    finally:
        chex.clear_trace_counter()


def _eager_steps(rule, genome, params, grads, steps=2):
    """The first ``steps`` steps without jit (the genome as numpy arrays, not traced)."""
    state, deltas, states = rule.init(genome, params), [], []
    for t in range(steps):
        d, state = rule.update(genome, jax.tree.map(lambda x, t=t: x[t], grads), state, params,
                               make_ctx(t, STEPS, LR))
        params = optax.apply_updates(params, d)
        deltas.append(d)
        states.append(state)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *deltas), \
        jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def test_jit_and_eager_agree():
    p, params, grads = SAMPLE[0], make_params(), make_grads()
    first = functools.partial(jax.tree.map, lambda x: x[:2])
    eager = drop_scratch(_eager_steps(program_rule(), genome_of(p, L), params, grads))
    # float32: XLA may fuse (and round) differently under jit; cancellations magnify it
    assert_close(eager, first(interpreted(0)), rtol=1e-5, atol=1e-6)
    rule = C.structure_rule(p, simplify_first=False)
    assert_close(_eager_steps(rule, rule.genome, params, grads), first(compiled(0)), rtol=1e-5,
                 atol=1e-6)


def test_lr_multiplier_equals_the_baked_program():
    p = SAMPLE[0]
    scaled = interpreter_run()(genome_of(p, L, lr=2.5))
    assert_close(scaled, interpreter_run()(genome_of(P.bake_lr(p, 2.5), L)), rtol=1e-6)
    rule = C.structure_rule(p, simplify_first=False)
    com = jax.jit(lambda: scan_run(rule, {**rule.genome, "lr": 2.5}, make_params(),
                                   make_grads()))()
    assert_close(scaled[0], com[0])


@pytest.mark.parametrize("dtypes", [(jnp.bfloat16, jnp.bfloat16), (jnp.float64, jnp.float64),
                                    (jnp.bfloat16, jnp.float32)], ids=["bf16", "f64", "mixed"])
def test_param_dtypes_are_kept(dtypes):
    with jax.enable_x64(jnp.float64 in dtypes):
        params = make_params(dtypes)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), make_grads(2), params)
        compute = jnp.float64 if jnp.float64 in dtypes else jnp.float32
        for rule, genome in ((program_rule(), genome_of(load_seed("adam"), L)),
                             (C.structure_rule(load_seed("adam")), None)):
            genome = rule.genome if genome is None else genome
            deltas, states = jax.jit(lambda g, rule=rule: scan_run(rule, g, params, grads))(
                genome)
            for k in params:
                assert deltas[k].dtype == params[k].dtype and deltas[k].shape[1:] == \
                    params[k].shape
                assert bool(jnp.all(jnp.isfinite(deltas[k].astype(jnp.float32))))
            assert {x.dtype for x in jax.tree.leaves(states)} == {jnp.dtype(compute)}


def test_scalar_and_empty_leaves():
    params = {"w": make_params()["w"], "s": jnp.asarray(0.5), "e": jnp.zeros((0, 2))}
    grads = {"w": make_grads(3)["w"], "s": jnp.asarray([1.0, -2.0, 0.5]),
             "e": jnp.zeros((3, 0, 2))}
    p = parse(REDUCTIONS)
    d_int, s_int = jax.jit(lambda g: drop_scratch(scan_run(program_rule(), g, params, grads)))(
        genome_of(p, L))
    rule = C.structure_rule(p, simplify_first=False)
    d_com, s_com = jax.jit(lambda: scan_run(rule, rule.genome, params, grads))()
    assert_close(d_int, d_com)
    for j, slot in enumerate(flat_slots(s_com, (True, True))):
        assert_close(s_int[:, j], slot)


# ---- seeds against optax ---------------------------------------------------------------------

# The optax optimizer each seed reproduces, at the learning rate it has inside times ``lr``.
OPTAX = {
    "sgd": lambda lr: optax.sgd(1e-2 * lr),
    "momentum": lambda lr: optax.sgd(1e-2 * lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(1e-2 * lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optax.adam(1e-3 * lr),
    "adamw": lambda lr: optax.adamw(1e-3 * lr, weight_decay=1e-4),
    "rmsprop": lambda lr: optax.rmsprop(1e-3 * lr, decay=0.9, eps=1e-8),
    "lion": lambda lr: optax.lion(1e-4 * lr, b1=0.9, b2=0.99, weight_decay=1e-3),
    "sign_sgd": lambda lr: optax.sign_sgd(1e-3 * lr),
}
EXPORT_LR = 0.5


def moments(state) -> jax.Array:
    """Every float array of a state with a parameter axis (optax's mu, nu, trace; the compiled
    path's live slots), flattened and concatenated in tree order."""
    leaves = [x for x in jax.tree.leaves(state)
              if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 1]
    return jnp.concatenate([x.ravel() for x in leaves]) if leaves else jnp.zeros(0)


def _optax_steps(tx, params, grads):
    state, deltas, states = tx.init(params), [], []
    for i in range(STEPS):
        d, state = tx.update(jax.tree.map(lambda x, i=i: x[i], grads), state, params)
        params = optax.apply_updates(params, d)
        deltas.append(d)
        states.append(state)
    return deltas, states


@jax.jit
def _interpreter_export_steps(genome):
    """The interpreter exported with to_optax (a traced genome: one compile for every seed)."""
    return _optax_steps(to_optax(program_rule(), genome, EXPORT_LR), make_params(),
                        make_grads(spread=True))


def test_every_optax_seed_has_a_reference():
    assert set(OPTAX) == set(seed_names()) & set(BASELINES)


@pytest.mark.parametrize("name", sorted(OPTAX))
def test_seed_matches_optax(name):
    seed = load_seed(name)
    params, grads = make_params(), make_grads(spread=True)
    ours, ref = jax.jit(lambda: (_optax_steps(C.program_to_optax(seed, EXPORT_LR), params, grads),
                                 _optax_steps(OPTAX[name](EXPORT_LR), params, grads)))()
    # the compiled path (simplified), then the interpreter: deltas and moments, step by step
    assert_close(ours[0], ref[0], rtol=5e-5, atol=1e-7)
    live = P.live_slots(seed)
    for s_ours, s_ref in zip(ours[1], ref[1], strict=True):
        assert_close(moments(s_ours.inner), moments(s_ref), rtol=5e-5, atol=1e-7)
    i_deltas, i_states = _interpreter_export_steps(genome_of(seed, L))
    assert_close(i_deltas, ref[0], rtol=5e-5, atol=1e-7)
    for s_ours, s_ref in zip(i_states, ref[1], strict=True):
        slots = [s_ours.inner.slots[j] for j in range(2) if live[j]]
        assert_close(jnp.concatenate([jnp.zeros(0), *slots]), moments(s_ref), rtol=5e-5,
                     atol=1e-7)


# ---- functional fingerprints -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPTAX))
def test_seed_hash_equals_the_baseline_hash(name):
    fp, h = hashing.fingerprint(program_rule(), genome_of(load_seed(name)))
    assert h == hashing.fingerprint(make_baseline(name))[1]
    assert name in hashing.equals(fp)


def test_seeds_without_optax_are_known_rules():
    known = {k.name: k for k in hashing.known_rules()}
    for name in ("powersign", "addsign"):
        fp, h = hashing.fingerprint(program_rule(), genome_of(load_seed(name)))
        assert known[name].hash == h and hashing.equals(fp) == [name]
    assert known["powersign"].hash != known["addsign"].hash


def test_protected_ops_keep_algebraic_identities():
    """Different symbolically, equal functionally: m / sqrt|m m| is sign(m), 1 / (1 / m) is m."""
    def hashes(*body):
        p = parse("def f(g, w, lr, t, m, v):\n    m = interp(g, m, 0.9)\n"
                  + "".join(f"    {ln}\n" for ln in body) + "    u = mul(y, lr)\n"
                  "    return u, m, v\n")
        return P.symbolic_hash(p), hashing.fingerprint(program_rule(), genome_of(p))[1]
    sym_a, fn_a = hashes("x = square(m)", "s = sqrt_abs(x)", "y = div(m, s)")
    sym_b, fn_b = hashes("y = sign(m)")
    assert sym_a != sym_b and fn_a == fn_b
    sym_c, fn_c = hashes("r = recip(m)", "y = recip(r)")
    sym_m, fn_m = hashes("y = scale_k(m, 1.0)")
    assert sym_c != sym_m and fn_c == fn_m != hashes("y = abs(m)")[1]


# ---- export ------------------------------------------------------------------------------------

def _parabola(params):
    target = {"w": jnp.linspace(-1, 1, 12).reshape(4, 3), "b": jnp.asarray([0.5, -0.5, 2.0])}
    return sum(0.5 * jnp.sum((params[k] - target[k]) ** 2) for k in params)


@pytest.mark.parametrize("name, lr", [("adam", 50.0), ("lion", 200.0), ("nesterov", 5.0)])
def test_program_to_optax_is_a_drop_in_optimizer(name, lr):
    tx = C.program_to_optax(load_seed(name), learning_rate=lr)

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(_parabola)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        return jax.lax.scan(step, (params, tx.init(params)), None, length=30)[1]

    losses = np.asarray(train(make_params()))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="needs params"):
        tx.update(make_params(), tx.init(make_params()))


def test_describe_shows_the_constants():
    rule = C.structure_rule(load_seed("lion"))
    ks = np.asarray(rule.genome["k"]) * np.float32(2.0)
    text = rule.describe({"k": ks})
    assert "interp(g, m, 1.8)" in text and "scale_k(x4, 0.0002)" in text
    assert parse(text) == C.with_constants(P.simplify(load_seed("lion")), ks)
    adamw = load_seed("adamw")
    assert program_rule().describe(genome_of(adamw)) == to_source(adamw, "program")
