"""Update rules against optax, plus reading baseline targets.

What every kind's rule must do (jit, vmap over genomes, its export form, dtypes, ``debug_nans``,
the fingerprint) is the conformance suite of ``test_kinds``, parametrized over the registry. Here
update rules go further (optax's style: one test file, every optimizer): the export equals the
optax transformation a baseline wraps or a seed program reproduces, step after step; it keeps
float64 under x64 and bfloat16; it converges on a parabola under ``lax.scan``; eager updates stay
clean under ``jax.debug_nans`` over gradients from 1e-3 to 1e2 and zeros.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab.core import optimizers as baselines
from lab.core.optimizers import (
    BASELINES,
    baseline_from_target,
    decode,
    make_baseline,
    parse_baseline,
)
from lab.core.rule import UpdateRule, make_ctx, to_optax
from lab.kinds.program.compiled import structure_rule
from lab.kinds.program.interpreted import Registers
from lab.kinds.program.ir import Program
from lab.kinds.program.programs import genome_of, load_seed, program_rule

Genome = Any


@dataclasses.dataclass(frozen=True)
class RuleCase:
    """One rule under the conformance suite.

    Attributes:
      id: the pytest id.
      rule: the rule family.
      population: three distinct genomes of ``rule`` (a population for the vmap test).
      converge_genome: a genome that, with ``Ctx.lr = converge_lr``, minimizes the test parabola.
      converge_lr: the outer learning rate for the convergence test.
      reference: ``reference(genome, learning_rate) -> optax.GradientTransformation`` that must
        give the same updates as ``to_optax(rule, genome, learning_rate)``; None where no
        reference exists.
      state_view: maps a state, the rule's and the reference's alike, to a tree the two are
        compared as (where they are laid out differently, e.g. a program's state slots and
        optax's moments); None: compared as they are.
    """

    id: str
    rule: UpdateRule
    population: tuple[Genome, ...]
    converge_genome: Genome
    converge_lr: float = 1.0
    reference: Callable[[Genome, float], optax.GradientTransformation] | None = None
    state_view: Callable[[Any], Any] | None = None


# Learning rates that take each optax optimizer down the test parabola in CONVERGE_STEPS.
CONVERGE_LR = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adam": 0.05, "adamw": 0.05,
               "lion": 0.02, "rmsprop": 0.01, "adafactor": 0.05, "adan": 0.05, "sign_sgd": 0.01,
               "lamb": 0.05}


def optax_reference(name: str) -> Callable[[Genome, float], optax.GradientTransformation]:
    """The optax alias itself at the genome's decoded hyperparameters (as Python floats), its
    learning rate times the outer one."""
    spec = BASELINES[name]

    def build(genome, learning_rate):
        hyper = {k: float(v) for k, v in decode(name, genome).items()}
        hyper["learning_rate"] *= learning_rate
        return spec.factory(**hyper, **spec.fixed)

    return build


def baseline_case(name: str) -> RuleCase:
    rule = make_baseline(name)
    default_lr = BASELINES[name].searchable["learning_rate"][0]
    population = tuple(make_baseline(name, {"learning_rate": default_lr * s}).genome
                       for s in (0.3, 1.0, 3.0))
    converge = make_baseline(name, {"learning_rate": CONVERGE_LR[name]}).genome
    return RuleCase(f"baseline:{name}", rule, population, converge,
                    reference=optax_reference(name))


RULE_CASES: list[RuleCase] = [baseline_case(name) for name in BASELINES]


# ---- programs: the interpreter over seeds, the compiled path over one seed's constants --------

def moments(state) -> jax.Array:
    """Every float array of a state with a parameter axis, flattened and concatenated in tree
    order: optax's mu and nu, the interpreter's ``[2, n]`` slots (not its scratch registers),
    the compiled path's slot trees (leaves in the same order as ``ravel_pytree`` of the params)."""
    if isinstance(state, Registers):
        state = state.slots
    leaves = [x for x in jax.tree.leaves(state)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and jnp.ndim(x) >= 1]
    return jnp.concatenate([jnp.ravel(x) for x in leaves]) if leaves else jnp.zeros(0)


# The optax optimizer each seed program reproduces, at its inner learning rate times ``lr``.
SEED_OPTAX = {
    "momentum": lambda lr: optax.sgd(1e-2 * lr, momentum=0.9),
    "rmsprop": lambda lr: optax.rmsprop(1e-3 * lr, decay=0.9, eps=1e-8),
    "adam": lambda lr: optax.adam(1e-3 * lr),
}


def seed_program_reference(genome, learning_rate):
    """The optax optimizer of the seed program an interpreter genome holds."""
    p = Program.from_arrays(genome)
    name = next(n for n in SEED_OPTAX
                if (load_seed(n).stmts, load_seed(n).out) == (p.stmts, p.out))
    return SEED_OPTAX[name](learning_rate * float(genome["lr"]))


def program_seed_case() -> RuleCase:
    population = tuple(genome_of(load_seed(n)) for n in ("momentum", "rmsprop", "adam"))
    return RuleCase("program:seeds", program_rule(), population, genome_of(load_seed("adam")),
                    converge_lr=CONVERGE_LR["adam"] / 1e-3, reference=seed_program_reference,
                    state_view=moments)


LION_STRUCTURE = structure_rule(load_seed("lion"))
# where each optax.lion hyperparameter sits among the constants of the (simplified) lion seed
_LION_K = {key: int(np.flatnonzero(np.isclose(LION_STRUCTURE.genome["k"], v, rtol=1e-6,
                                              atol=0))[0])
           for key, v in (("b1", 0.9), ("b2", 0.99), ("weight_decay", 1e-3),
                          ("learning_rate", 1e-4))}


def lion_structure_reference(genome, learning_rate):
    hyper = {key: float(genome["k"][i]) for key, i in _LION_K.items()}
    hyper["learning_rate"] *= learning_rate
    return optax.lion(**hyper)


def lion_structure_case() -> RuleCase:
    def variant(lr_scale, b1):
        k = np.array(LION_STRUCTURE.genome["k"])
        k[_LION_K["learning_rate"]] *= lr_scale
        k[_LION_K["b1"]] = b1
        return {"k": k}
    population = (variant(0.3, 0.9), variant(1.0, 0.95), variant(3.0, 0.8))
    return RuleCase("program:lion-structure", LION_STRUCTURE, population, LION_STRUCTURE.genome,
                    converge_lr=CONVERGE_LR["lion"] / 1e-4, reference=lion_structure_reference,
                    state_view=moments)


RULE_CASES += [program_seed_case(), lion_structure_case()]


# ---- learned optimizers: a small MLP; Adam's direction at a 0.05 step for the parabola -------

def learned_case() -> RuleCase:
    from lab.kinds.learned.rule import Features, init_genome, learned_rule
    features = Features(hidden=4, depth=1)
    population = tuple(init_genome(features, jax.random.key(i)) for i in range(3))
    converge = {**population[0], "log_step": jnp.asarray(math.log(0.05), jnp.float32)}
    return RuleCase("learned:mlp", learned_rule(features, population[0]), population, converge)


RULE_CASES += [learned_case()]


def rule_cases():
    return [pytest.param(c, id=c.id) for c in RULE_CASES]


# ---------------------------------------------------------------------------------------------
# Shared probe problem: two leaves (a matrix and a vector), a fixed parabola.

CONVERGE_STEPS = 300
_rng = np.random.default_rng(0)
TARGET = {"w": _rng.standard_normal((4, 3)).astype(np.float32),
          "b": _rng.standard_normal(3).astype(np.float32)}
CURV = {"w": np.linspace(0.2, 1.0, 12, dtype=np.float32).reshape(4, 3),
        "b": np.array([0.3, 0.6, 1.0], np.float32)}


def parabola(params):
    return sum(0.5 * jnp.sum(CURV[k] * (params[k] - TARGET[k]) ** 2) for k in params)


def init_params(dtype=jnp.float32):
    return {"w": jnp.full((4, 3), 0.5, dtype), "b": jnp.full((3,), -0.5, dtype)}


def grad_stream(key, steps: int, dtype=jnp.float32):
    """Gradients stacked over ``steps`` (every leaf ``[steps, ...]``), magnitudes spread over
    1e-3 .. 1e2 with random signs."""
    def leaf(k, shape):
        k_mag, k_sign = jax.random.split(k)
        mag = jnp.exp(jax.random.uniform(k_mag, (steps, *shape), minval=math.log(1e-3),
                                         maxval=math.log(1e2)))
        sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (steps, *shape)), 1.0, -1.0)
        return (mag * sign).astype(dtype)
    k_w, k_b = jax.random.split(key)
    return {"w": leaf(k_w, (4, 3)), "b": leaf(k_b, (3,))}


def unstack(tree):
    """A stacked tree -> the list of its rows."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def run_steps(rule: UpdateRule, genome, params, grads, lr: float = 1.0):
    """Updates from a fresh state under ``lax.scan``: the stacked deltas and the last state."""
    steps = jax.tree.leaves(grads)[0].shape[0]

    def step(carry, inp):
        p, s = carry
        t, g = inp
        d, s = rule.update(genome, g, s, p, make_ctx(t, steps, lr))
        return (optax.apply_updates(p, d), s), d

    (_, state), deltas = jax.lax.scan(step, (params, rule.init(genome, params)),
                                      (jnp.arange(steps, dtype=jnp.int32), grads))
    return deltas, state


def assert_tree_close(a, b, rtol=1e-6, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=rtol, atol=atol)


def assert_same_layout(a, b):
    """Same tree structure, and leaf by leaf the same shape and dtype."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        assert (x.shape, x.dtype) == (y.shape, y.dtype)


# ---------------------------------------------------------------------------------------------
# The conformance suite. Compiled runs are shared between tests through small caches keyed by the
# case id, so each rule pays for few compilations.

EXPORT_LR = 0.5
_compiled_runs: dict[str, Callable] = {}
_export_runs: dict[str, dict] = {}


@functools.cache
def probe_grads(steps: int = 3):
    return grad_stream(jax.random.key(1), steps)


def compiled_run(case: RuleCase) -> Callable:
    """``jit(genome -> (deltas [3, ...], final state))`` for ``case.rule`` on the probe grads."""
    if case.id not in _compiled_runs:
        params, grads = init_params(), probe_grads()
        _compiled_runs[case.id] = jax.jit(lambda g: run_steps(case.rule, g, params, grads))
    return _compiled_runs[case.id]


def _optax_steps(tx, params, grads):
    """Python-loop steps (not scan, which would refuse a state whose dtype drifts)."""
    state0 = tx.init(params)
    state, states, updates = state0, [], []
    for g in unstack(grads):
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        states.append(state)
        updates.append(u)
    return {"state0": state0, "states": states, "updates": updates, "params": params}


def export_run(case: RuleCase) -> dict:
    """One jitted call running ``to_optax(rule, genome, EXPORT_LR)`` and, where the case has one,
    its optax reference for 3 steps on the same float32 params and gradients."""
    if case.id not in _export_runs:
        genome = case.population[-1]  # not the default learning rate
        ours = to_optax(case.rule, genome, learning_rate=EXPORT_LR)
        ref = case.reference(genome, EXPORT_LR) if case.reference else None

        @jax.jit
        def run(params, grads):
            out = {"ours": _optax_steps(ours, params, grads)}
            if ref is not None:
                out["ref"] = _optax_steps(ref, params, grads)
            return out

        _export_runs[case.id] = run(init_params(), probe_grads())
    return _export_runs[case.id]


def assert_keeps_layout(run: dict, params):
    for u in run["updates"]:
        assert_same_layout(u, params)
    for s in run["states"]:
        assert_same_layout(s, run["state0"])
    assert_same_layout(run["params"], params)


@pytest.mark.parametrize("case", [c for c in rule_cases() if c.values[0].reference is not None])
def test_export_matches_optax_reference(case: RuleCase):
    """The exported transform gives optax's own updates and state, step after step."""
    run = export_run(case)
    ours, ref = run["ours"], run["ref"]
    # See test_vmap_population_equals_loop for the float32 tolerance.
    assert_tree_close(ours["updates"], ref["updates"], rtol=5e-5, atol=1e-12)
    view = case.state_view or (lambda s: s)
    assert_tree_close([view(s.inner) for s in ours["states"]], [view(s) for s in ref["states"]],
                      rtol=5e-5, atol=1e-12)
    assert int(ours["states"][-1].count) == len(ours["states"])


@pytest.mark.parametrize("case", rule_cases())
def test_export_keeps_float64_under_x64(case: RuleCase):
    with jax.enable_x64(True):
        tx = to_optax(case.rule, case.rule.genome)
        params = init_params(jnp.float64)
        grads = jax.tree.map(lambda x: jnp.asarray(x[:2], jnp.float64), probe_grads())
        run = jax.jit(lambda p, g: _optax_steps(tx, p, g))(params, grads)
        assert_keeps_layout(run, params)


@pytest.mark.parametrize("case", [c for c in rule_cases() if c.id == "baseline:adam"])
def test_export_keeps_bfloat16(case: RuleCase):
    tx = to_optax(case.rule, case.rule.genome)
    params = init_params(jnp.bfloat16)
    grads = jax.tree.map(lambda x: x[:2].astype(jnp.bfloat16), probe_grads())
    assert_keeps_layout(jax.jit(lambda p, g: _optax_steps(tx, p, g))(params, grads), params)


@pytest.mark.parametrize("case", rule_cases())
def test_converges_on_parabola(case: RuleCase):
    rule, genome = case.rule, case.converge_genome
    params = init_params()

    @jax.jit
    def run(genome):
        def step(carry, t):
            p, s = carry
            loss, g = jax.value_and_grad(parabola)(p)
            d, s = rule.update(genome, g, s, p, make_ctx(t, CONVERGE_STEPS, case.converge_lr))
            return (optax.apply_updates(p, d), s), loss
        _, losses = jax.lax.scan(step, (params, rule.init(genome, params)),
                                 jnp.arange(CONVERGE_STEPS, dtype=jnp.int32))
        return losses

    losses = np.asarray(run(genome))
    assert np.all(np.isfinite(losses))
    start, end = losses[0], losses[-10:].mean()
    assert end < start / 100, f"{case.id}: loss {start:.3g} -> {end:.3g}"


@pytest.mark.parametrize("case", rule_cases())
def test_debug_nans_clean(case: RuleCase, key):
    """Eager updates (every primitive checked) over gradients from 1e-3 to 1e2, and zeros."""
    rule, genome = case.rule, case.rule.genome
    params = init_params()
    grads = unstack(grad_stream(key, 2)) + [jax.tree.map(jnp.zeros_like, params)]
    with jax.debug_nans(True):
        state = rule.init(genome, params)
        for t, g in enumerate(grads):
            delta, state = rule.update(genome, g, state, params, make_ctx(t, len(grads), 0.5))
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(delta))
            params = optax.apply_updates(params, delta)


def test_every_baseline_has_a_case():
    assert {c.id for c in RULE_CASES} >= {f"baseline:{n}" for n in BASELINES}


# ---------------------------------------------------------------------------------------------
# Baseline targets: NAME or NAME(key=value, ...), read without evaluating code.


@pytest.fixture
def no_eval(monkeypatch):
    """Any eval/exec/compile called from lab.core.optimizers fails the test (the module's globals
    shadow the builtins; patching builtins themselves would break pytest)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a baseline target must never be evaluated as code")
    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(baselines, name, refuse, raising=False)


def test_parse_plain_name(no_eval):
    assert parse_baseline("adam") == ("adam", {})
    assert parse_baseline(" lion ") == ("lion", {})


def test_target_sets_searchable_hyperparameter(no_eval):
    assert parse_baseline("adam(b1=0.5)") == ("adam", {"b1": 0.5})
    rule = baseline_from_target("adam(b1=0.5)")
    hyper = {k: float(v) for k, v in decode("adam", rule.genome).items()}
    assert hyper["b1"] == pytest.approx(0.5, rel=1e-6)
    assert hyper["learning_rate"] == pytest.approx(1e-3, rel=1e-6)
    assert hyper["b2"] == pytest.approx(0.999, rel=1e-6)
    assert rule.genome["b1"].dtype == np.float32
    assert "b1=0.5" in rule.describe(rule.genome)


def test_target_sets_learning_rate(no_eval):
    name, kwargs = parse_baseline("adam(learning_rate=0.01)")
    assert (name, kwargs) == ("adam", {"learning_rate": 0.01})
    rule = baseline_from_target("adam(learning_rate=0.01)")
    assert float(decode("adam", rule.genome)["learning_rate"]) == pytest.approx(0.01, rel=1e-6)
    assert rule.name == "adam"


def test_target_several_values_and_spaces(no_eval):
    name, kwargs = parse_baseline("adamw( learning_rate = 3e-4 , weight_decay=0.1 )")
    assert (name, kwargs) == ("adamw", {"learning_rate": 3e-4, "weight_decay": 0.1})


def test_unknown_baseline_suggests_close_names(no_eval):
    with pytest.raises(ValueError, match="adma") as err:
        baseline_from_target("adma(b1=0.5)")
    assert "adam" in str(err.value)
    with pytest.raises(ValueError, match="lion"):
        parse_baseline("lino")


def test_unknown_keyword_is_named(no_eval):
    with pytest.raises(ValueError, match="bb1") as err:
        baseline_from_target("adam(bb1=0.5)")
    assert "b1" in str(err.value).replace("bb1", "")


def test_out_of_range_hyperparameter_is_refused(no_eval):
    with pytest.raises(ValueError, match="b1"):
        baseline_from_target("adam(b1=1.5)")
    with pytest.raises(ValueError, match="learning_rate"):
        baseline_from_target("sgd(learning_rate=0)")


def test_static_keyword_is_accepted_and_reaches_optax(no_eval):
    rule = baseline_from_target("adan(weight_decay=0.01)")
    assert "weight_decay" in rule.name and "weight_decay" not in rule.genome
    hyper = {k: float(v) for k, v in decode("adan", rule.genome).items()}
    txs = [to_optax(rule, rule.genome), optax.adan(**hyper, weight_decay=0.01),
           optax.adan(**hyper)]
    params = init_params()
    g = unstack(probe_grads())[0]
    ours, ref, plain = jax.jit(lambda p, g: [tx.update(g, tx.init(p), p)[0] for tx in txs])(
        params, g)
    assert_tree_close(ours, ref, rtol=2e-6)
    assert not np.allclose(ours["w"], plain["w"])
    assert baseline_from_target("nesterov").name == "nesterov"  # its own fixed keyword


@pytest.mark.parametrize("text, keyword", [("adam(nesterov=no)", "nesterov"),
                                           ("adam(eps_root='1e-8')", "eps_root")])
def test_static_keyword_of_the_wrong_type_is_refused(text, keyword, no_eval):
    with pytest.raises(ValueError, match=keyword):
        baseline_from_target(text)


@pytest.mark.parametrize("text", [
    "adam(b1=__import__('os'))",
    "adam(b1=__import__('os').system('true'))",
    "adam(b1=(lambda: 0.5)())",
    "adam(b1=[0.5])",
    "adam(b1=0.5; import os)",
    "adam(b1)",
    "adam(",
    "os.system('true')",
])
def test_malicious_or_malformed_target_is_refused(text, no_eval):
    with pytest.raises(ValueError):
        baseline_from_target(text)
