"""Tests of lab/kinds/program/ops.py: every op against a numpy closed form, the protected cases,
no NaN or Inf from finite inputs, and the interpreter's fused ops equal to the reference ones."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.kinds.program import interpreted as interpret
from lab.kinds.program import ops
from lab.kinds.program.ops import OP_INDEX, OPS

NAMES = [op.name for op in OPS]

# Ordinary inputs (one zero in each, so the protected branches are hit among ordinary values).
X = np.array([-2.5, -0.3, 0.0, 0.7, 1.5, 4.0])
Y = np.array([1.0, -0.5, 2.0, 0.0, -3.0, 0.25])
T = 3.0
TINY_LOG32 = math.log(float(np.finfo(np.float32).tiny))


def _where0(cond, f, x):
    """f(x) where cond, else 0, without evaluating f where cond is False."""
    out = np.zeros_like(x)
    out[cond] = f(x[cond])
    return out


def _full(v):
    return np.full_like(X, v)


# name -> (closed form f(x, y, k, t) in float64 numpy, the k it is tested at)
CLOSED_FORM = {
    "nop": (lambda x, y, k, t: np.zeros_like(x), 0.0),
    "add": (lambda x, y, k, t: x + y, 0.0),
    "sub": (lambda x, y, k, t: x - y, 0.0),
    "mul": (lambda x, y, k, t: x * y, 0.0),
    "div": (lambda x, y, k, t: _where0(y != 0, lambda _: x[y != 0] / y[y != 0], x), 0.0),
    "max": (lambda x, y, k, t: np.maximum(x, y), 0.0),
    "min": (lambda x, y, k, t: np.minimum(x, y), 0.0),
    "neg": (lambda x, y, k, t: -x, 0.0),
    "abs": (lambda x, y, k, t: np.abs(x), 0.0),
    "sign": (lambda x, y, k, t: np.sign(x), 0.0),
    "square": (lambda x, y, k, t: x * x, 0.0),
    "sqrt_abs": (lambda x, y, k, t: np.sqrt(np.abs(x)), 0.0),
    "rsqrt": (lambda x, y, k, t: _where0(x != 0, lambda v: 1 / np.sqrt(np.abs(v)), x), 0.0),
    "exp": (lambda x, y, k, t: np.exp(x), 0.0),
    "log_abs": (lambda x, y, k, t: np.where(x != 0, np.log(np.abs(np.where(x != 0, x, 1))),
                                            TINY_LOG32), 0.0),
    "tanh": (lambda x, y, k, t: np.tanh(x), 0.0),
    "arctan": (lambda x, y, k, t: np.arctan(x), 0.0),
    "recip": (lambda x, y, k, t: _where0(x != 0, lambda v: 1 / v, x), 0.0),
    "interp": (lambda x, y, k, t: (1 - k) * x + k * y, 0.9),
    "scale_k": (lambda x, y, k, t: k * x, -1.5),
    "add_k": (lambda x, y, k, t: x + k, -1.5),
    "const_k": (lambda x, y, k, t: np.full_like(x, k), -1.5),
    "clip_k": (lambda x, y, k, t: np.clip(x, -1.5, 1.5), -1.5),
    "clip_by": (lambda x, y, k, t: np.clip(x, -np.abs(y), np.abs(y)), 0.0),
    "spow_k": (lambda x, y, k, t: _where0(x != 0, lambda v: np.sign(v) * np.abs(v) ** k, x),
               -1.5),
    "pow_t": (lambda x, y, k, t: np.full_like(x, 0.9**t), -0.9),
    "mean": (lambda x, y, k, t: np.full_like(x, x.mean()), 0.0),
    "rms": (lambda x, y, k, t: np.full_like(x, np.sqrt(np.mean(x * x))), 0.0),
    "dot": (lambda x, y, k, t: np.full_like(x, np.sum(x * y)), 0.0),
    "cosine": (lambda x, y, k, t: np.full_like(x, np.sum(x * y) / np.sqrt(np.sum(x * x) *
                                                                          np.sum(y * y))), 0.0),
    "cos": (lambda x, y, k, t: np.cos(x), 0.0),
}


_apply = jax.jit(ops.apply, static_argnums=0)  # one small compile per op, shape and dtype


def apply(name, x, y, k=0.0, t=T, dtype=jnp.float32):
    return np.asarray(_apply(OP_INDEX[name], jnp.asarray(x, dtype), jnp.asarray(y, dtype), k, t),
                      np.float64)


def test_every_op_has_a_closed_form():
    assert set(CLOSED_FORM) == set(NAMES)
    assert len(NAMES) == len(set(NAMES)) and NAMES[0] == "nop" and ops.NOP == 0
    assert all(OP_INDEX[op.name] == i for i, op in enumerate(OPS))


@pytest.mark.parametrize("name", NAMES)
def test_op_matches_closed_form(name):
    f, k = CLOSED_FORM[name]
    np.testing.assert_allclose(apply(name, X, Y, k), f(X, Y, k, T), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_op_signature_matches_its_use(name):
    """arity and uses_k say which arguments an op reads: the others do not change its value."""
    op = OPS[OP_INDEX[name]]
    _, k = CLOSED_FORM[name]
    base = apply(name, X, Y, k)
    if op.arity < 2:
        np.testing.assert_array_equal(apply(name, X, Y[::-1], k), base)
    if op.arity < 1:
        np.testing.assert_array_equal(apply(name, X[::-1], Y, k), base)
    if not op.uses_k:
        np.testing.assert_array_equal(apply(name, X, Y, 0.37), base)
    if op.commutative:
        np.testing.assert_allclose(apply(name, Y, X, k), base, rtol=1e-6)
    assert op.reduction == (name in ("mean", "rms", "dot", "cosine"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_protected_cases(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        zero, one = np.zeros(3), np.ones(3)
        x = np.array([-2.0, 0.5, 3.0])
        np.testing.assert_array_equal(apply("div", x, zero, dtype=dtype), 0)
        np.testing.assert_array_equal(apply("recip", zero, one, dtype=dtype), 0)
        np.testing.assert_array_equal(apply("rsqrt", zero, one, dtype=dtype), 0)
        log_tiny = math.log(float(jnp.finfo(dtype).tiny))
        assert ops.tiny_log(dtype) == log_tiny
        np.testing.assert_allclose(apply("log_abs", zero, one, dtype=dtype), log_tiny,
                                   rtol=1e-6)
        for k in (-2.0, 0.5, 3.0):
            np.testing.assert_array_equal(apply("spow_k", zero, one, k, dtype=dtype), 0)
        big = np.array([1e3, 80.0, -80.0, -1e3])
        np.testing.assert_allclose(apply("exp", big, one[:1], dtype=dtype),
                                   np.exp([80.0, 80.0, -80.0, -80.0]), rtol=1e-6)
        assert ops.EXP_CLIP == 80.0
        np.testing.assert_array_equal(apply("cosine", zero, x, dtype=dtype), 0)
        np.testing.assert_array_equal(apply("cosine", x, zero, dtype=dtype), 0)
        np.testing.assert_array_equal(apply("cosine", zero, zero, dtype=dtype), 0)


def test_reductions_are_per_tensor_and_broadcast_back():
    x = np.arange(12.0).reshape(3, 4) - 5
    y = np.linspace(-1, 2, 12).reshape(3, 4)
    for name in ("mean", "rms", "dot", "cosine"):
        f, k = CLOSED_FORM[name]
        out = apply(name, x, y, k)
        assert out.shape == x.shape
        np.testing.assert_allclose(out, f(x.ravel(), y.ravel(), k, T).reshape(3, 4), rtol=1e-6)


def test_pow_t_follows_the_step():
    for t in (1.0, 2.0, 10.0):
        np.testing.assert_allclose(apply("pow_t", X, Y, 0.999, t), 0.999**t, rtol=1e-6)


def test_guard_maps_nan_and_inf_to_finite():
    x = jnp.asarray([np.nan, np.inf, -np.inf, 1.5], jnp.float32)
    big = float(np.finfo(np.float32).max)
    np.testing.assert_array_equal(np.asarray(ops.guard(x)), [0.0, big, -big, 1.5])


def test_arctan_within_float32_accuracy():
    mag = np.logspace(-10, 30, 2001)
    x = np.concatenate([-mag[::-1], [0.0], mag, [3e38, -3e38]]).astype(np.float32)
    ours = np.asarray(ops.arctan(jnp.asarray(x)), np.float64)
    ref = np.arctan(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(ours - ref) <= 3 * ulp)
    np.testing.assert_array_equal(np.sign(ours), np.sign(x))


def _extremes(dtype) -> np.ndarray:
    v = [0.0, 1e-30, 1e30, 3e38, 1.0, 0.5]
    if dtype == jnp.float64:
        v += [1e-300, 1e300]
    v = np.asarray(v + [-a for a in v[1:]])
    return v


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_no_nan_or_inf_from_finite_inputs(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        v = _extremes(dtype)
        x, y = np.repeat(v, len(v)), np.tile(v, len(v))  # every pair, mixed magnitudes
        for k in (0.0, 0.9, -2.0, 1e10, -3e38):
            for t in (1.0, 1e4):
                out = _apply(OP_INDEX[name], jnp.asarray(x, dtype), jnp.asarray(y, dtype), k, t)
                assert out.dtype == dtype and out.shape == x.shape
                assert np.all(np.isfinite(np.asarray(out))), (name, k, t)


@pytest.mark.parametrize("name", NAMES)
def test_no_internal_nan_on_ordinary_and_zero_inputs(name):
    _, k = CLOSED_FORM[name]
    with jax.debug_nans(True):
        for x, y in ((X, Y), (np.zeros(6), np.zeros(6))):
            ops.apply(OP_INDEX[name], jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                      k, T).block_until_ready()


# ---- the interpreter's fused ops equal the reference ones ----------------------------------

SEGMENTS = (5, 3)  # two tensors in one flat vector


def _fused(code, x, y, k, t):
    layout = interpret.Layout(SEGMENTS)
    kk = jnp.asarray(k, x.dtype)
    log_k = jnp.where(kk != 0, jnp.log(jnp.where(kk != 0, jnp.abs(kk), 1)),
                      ops.tiny_log(x.dtype))
    return interpret.statement(jnp.asarray(code), x, y, kk, jnp.asarray(t, x.dtype), log_k,
                               layout, layout.counts(x.dtype))


_fused_jit = jax.jit(_fused)


@functools.partial(jax.jit, static_argnums=0)
def _reference(code, x, y, k, t):
    """ops.apply per tensor (reductions are per tensor)."""
    cut = SEGMENTS[0]
    return jnp.concatenate([ops.apply(code, x[:cut], y[:cut], k, t),
                            ops.apply(code, x[cut:], y[cut:], k, t)])


@pytest.mark.parametrize("name", NAMES)
def test_interpreter_statement_equals_reference(name):
    _, k = CLOSED_FORM[name]
    rng = np.random.default_rng(OP_INDEX[name])
    x = np.concatenate([[0.0], rng.standard_normal(4), [1e-30, 3e4, -2.0]]).astype(np.float32)
    y = np.concatenate([rng.standard_normal(3), [0.0, 5.0], -rng.standard_normal(3)])
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.float32)
    for kk in (k, 2.5 if OPS[OP_INDEX[name]].uses_k else k):
        ours = np.asarray(_fused_jit(OP_INDEX[name], x, y, kk, T), np.float64)
        ref = np.asarray(_reference(OP_INDEX[name], x, y, kk, T), np.float64)
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-30)
