"""The op table of symbolic programs: about 30 protected ops over per-parameter tensors.

Every op reads up to two registers (``x``, ``y``) and one immediate constant ``k``. Ops are
*protected* only where the plain op is undefined or overflows, so that algebraic identities hold
(``m / sqrt(m*m)`` is ``sign(m)`` wherever both are defined):

* ``div(x, 0)``, ``recip(0)``, ``rsqrt(0)``, ``spow_k(0, k)`` and ``cosine`` of a zero tensor
  are 0; ``log_abs(0)`` is the log of the dtype's smallest normal number;
* ``exp`` clips its input to [-80, 80] (exp(88.7) overflows float32);
* every result passes through ``guard``: NaN -> 0 and +-Inf -> +-max finite, so that no op
  produces a NaN or an Inf from finite inputs (an overflow inside ``interp`` would otherwise give
  inf - inf).

``OPS`` holds one reference implementation per op (``fn(x, y, k, t, red)``), used by the compiled
path and by constant folding; the interpreter (``interpret.py``) computes the same values fused
(one shared ``log|x|`` and one ``exp`` per statement) and is held equal to these by tests.

Reductions are per tensor and broadcast back: ``mean``, ``rms``, ``dot`` and ``cosine``.

Which ops a program may use depends on its signature (``signatures``): ``cos`` is for schedules,
and the update signature keeps the table it had before it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

EXP_CLIP = 80.0


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of the table.

    Attributes:
      name: its name in program text.
      arity: registers read (0, 1 or 2).
      uses_k: whether it reads the immediate constant ``k``.
      commutative: ``f(x, y) == f(y, x)`` (the symbolic hash sorts the arguments).
      reduction: a per-tensor reduction (computed per leaf or per segment).
      fn: ``fn(x, y, k, t, red) -> array``; ``red`` is a ``Reducer`` (``None`` for
        elementwise ops), ``t`` the step count (>= 1) as a scalar.
    """

    name: str
    arity: int
    uses_k: bool
    fn: Callable
    commutative: bool = False
    reduction: bool = False


class Reducer:
    """Per-tensor sums broadcast back, for one array shape (a whole leaf: plain ``sum``)."""

    def sum(self, x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jnp.sum(x), x.shape)

    def count(self, x: jax.Array) -> jax.Array:
        return jnp.asarray(x.size, x.dtype)


def guard(x: jax.Array) -> jax.Array:
    """NaN -> 0, +-Inf -> +-max finite: every op's result passes through this."""
    big = jnp.finfo(x.dtype).max
    return jnp.nan_to_num(x, nan=0.0, posinf=big, neginf=-big)


def tiny_log(dtype) -> float:
    """``log_abs(0)``: the log of the smallest normal number of ``dtype``."""
    import math
    return math.log(float(jnp.finfo(dtype).tiny))


_TAN_3PI_8 = 2.414213562373095
_TAN_PI_8 = 0.4142135623730950


def arctan(x: jax.Array) -> jax.Array:
    """arctan by Cephes' atanf (range reduction to |z| <= tan(pi/8), a degree-9 odd polynomial;
    float32-accurate): XLA's CPU arctan is ~8x slower than exp, and the interpreter computes it
    for every candidate at every statement. Both backends use this one, so they agree."""
    a = jnp.abs(x)
    big, mid = a > _TAN_3PI_8, a > _TAN_PI_8
    z = jnp.where(big, -1 / jnp.where(big, a, 1), jnp.where(mid, (a - 1) / (a + 1), a))
    base = jnp.where(big, jnp.pi / 2, jnp.where(mid, jnp.pi / 4, 0)).astype(x.dtype)
    zz = z * z
    poly = (((8.05374449538e-2 * zz - 1.38776856032e-1) * zz + 1.99777106478e-1) * zz
            - 3.33329491539e-1) * zz * z + z
    return jnp.sign(x) * (base + poly)


def _nonzero(x):
    return x != 0


def _safe_div(x, y):
    nz = _nonzero(y)
    return jnp.where(nz, x / jnp.where(nz, y, 1), 0)


def _log_abs(x):
    return jnp.where(_nonzero(x), jnp.log(jnp.where(_nonzero(x), jnp.abs(x), 1)),
                     tiny_log(x.dtype))


def _rsqrt(x):
    nz = _nonzero(x)
    return jnp.where(nz, jax.lax.rsqrt(jnp.where(nz, jnp.abs(x), 1)), 0)


def _spow(x, k):
    nz = _nonzero(x)
    return jnp.where(nz, jnp.sign(x) * jnp.power(jnp.where(nz, jnp.abs(x), 1), k), 0)


def _mean(x, red):
    return red.sum(x) / red.count(x)


def _rms(x, red):
    return jnp.sqrt(red.sum(x * x) / red.count(x))


def _cosine(x, y, red):
    den = jnp.sqrt(red.sum(x * x) * red.sum(y * y))
    return _safe_div(red.sum(x * y), den)


def _op(name, arity, uses_k, fn, **kw) -> Op:
    return Op(name, arity, uses_k, fn, **kw)


# The order is the op code: append new ops at the end (stored genomes keep their meaning).
OPS: tuple[Op, ...] = (
    _op("nop", 0, False, lambda x, y, k, t, r: jnp.zeros_like(x)),
    _op("add", 2, False, lambda x, y, k, t, r: x + y, commutative=True),
    _op("sub", 2, False, lambda x, y, k, t, r: x - y),
    _op("mul", 2, False, lambda x, y, k, t, r: x * y, commutative=True),
    _op("div", 2, False, lambda x, y, k, t, r: _safe_div(x, y)),
    _op("max", 2, False, lambda x, y, k, t, r: jnp.maximum(x, y), commutative=True),
    _op("min", 2, False, lambda x, y, k, t, r: jnp.minimum(x, y), commutative=True),
    _op("neg", 1, False, lambda x, y, k, t, r: -x),
    _op("abs", 1, False, lambda x, y, k, t, r: jnp.abs(x)),
    _op("sign", 1, False, lambda x, y, k, t, r: jnp.sign(x)),
    _op("square", 1, False, lambda x, y, k, t, r: x * x),
    _op("sqrt_abs", 1, False, lambda x, y, k, t, r: jnp.sqrt(jnp.abs(x))),
    _op("rsqrt", 1, False, lambda x, y, k, t, r: _rsqrt(x)),
    _op("exp", 1, False, lambda x, y, k, t, r: jnp.exp(jnp.clip(x, -EXP_CLIP, EXP_CLIP))),
    _op("log_abs", 1, False, lambda x, y, k, t, r: _log_abs(x)),
    _op("tanh", 1, False, lambda x, y, k, t, r: jnp.tanh(x)),
    _op("arctan", 1, False, lambda x, y, k, t, r: arctan(x)),
    _op("recip", 1, False, lambda x, y, k, t, r: _safe_div(jnp.ones_like(x), x)),
    _op("interp", 2, True, lambda x, y, k, t, r: (1 - k) * x + k * y),
    _op("scale_k", 1, True, lambda x, y, k, t, r: x * k),
    _op("add_k", 1, True, lambda x, y, k, t, r: x + k),
    _op("const_k", 0, True, lambda x, y, k, t, r: jnp.full_like(x, k)),
    _op("clip_k", 1, True, lambda x, y, k, t, r: jnp.clip(x, -jnp.abs(k), jnp.abs(k))),
    _op("clip_by", 2, False, lambda x, y, k, t, r: jnp.clip(x, -jnp.abs(y), jnp.abs(y))),
    _op("spow_k", 1, True, lambda x, y, k, t, r: _spow(x, k)),
    _op("pow_t", 0, True, lambda x, y, k, t, r: jnp.full_like(x, 1) * jnp.power(jnp.abs(k), t)),
    _op("mean", 1, False, lambda x, y, k, t, r: _mean(x, r), reduction=True),
    _op("rms", 1, False, lambda x, y, k, t, r: _rms(x, r), reduction=True),
    _op("dot", 2, False, lambda x, y, k, t, r: r.sum(x * y), commutative=True, reduction=True),
    _op("cosine", 2, False, lambda x, y, k, t, r: _cosine(x, y, r), commutative=True,
        reduction=True),
    _op("cos", 1, False, lambda x, y, k, t, r: jnp.cos(x)),  # schedules (cosine decay)
)

OP_INDEX: dict[str, int] = {op.name: i for i, op in enumerate(OPS)}
NOP = OP_INDEX["nop"]


def apply(code: int, x: jax.Array, y: jax.Array, k, t, red: Reducer | None = None) -> jax.Array:
    """The reference value of op ``code`` (guarded); ``x``, ``y`` same shape, ``k``, ``t``
    scalars (``t`` the step count, >= 1)."""
    op = OPS[code]
    k = jnp.asarray(k, x.dtype)
    t = jnp.asarray(t, x.dtype)
    return guard(op.fn(x, y, k, t, red or Reducer()))
