"""The compile-once interpreter: any program as a genome of arrays, vmappable over programs.

``update`` runs the statements of one program on the parameters as one flat vector. Under
``vmap`` over a population each statement computes its op for every candidate and selects the
wanted one, so a statement is kept cheap:

* a ``fori_loop`` over statements (compile time does not grow with the program length), its
  bound the genome's ``n`` (under vmap: the batch's longest program);
* ops in groups (``GROUPS``): the cheap elementwise ones always, each other group (division,
  the power-like ops, ``tanh``, ``arctan``, the reductions) inside a ``cond`` taken only when some
  candidate of the batch runs an op of it at this statement; a group computes its ops the same
  way whatever the batch holds, so a program's result does not depend on its neighbours;
* the power-like ops (``sqrt_abs``, ``rsqrt``, ``spow_k``) and ``exp`` share one ``log|x|`` and
  one ``exp``; ``pow_t`` is a scalar per program;
* per-tensor reductions as static slices of the flat vector (four sums);
* the statements' registers are carried in the state from step to step (every statement
  writes its row before a later one reads it), so no step fills a fresh register file with
  zeros, and XLA updates it in place.

The genome (``Program.to_arrays``): ``op, a, b: [L] int32``, ``k: [L] float32``, ``out: [3]
int32``, ``n: [] int32`` and ``lr: []`` float32, a multiplier on ``ctx.lr`` (the per-candidate
learning-rate grid of a search; 1 elsewhere). The state is ``Registers(slots, scratch)`` in
the compute dtype (float32, or float64 for float64 parameters): the program's two state
registers ``[2, n_params]`` and the statements' scratch registers ``[L, n_params]``.

``update_joint`` is ``update`` for the joint signature (an update rule that also reads the
horizon ``T``); ``apply`` runs a stateless program (the drift and schedule signatures)
elementwise on arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lab.core.rule import Ctx
from lab.kinds.program.ops import EXP_CLIP, OP_INDEX, OPS, arctan, guard, tiny_log
from lab.kinds.program.signatures import DRIFT, JOINT, SCHEDULE, UPDATE, Signature

_O = OP_INDEX


def compute_dtype(dtype) -> jnp.dtype:
    """float64 stays float64; everything else (bfloat16, float16, float32) runs in float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


class Layout:
    """The parameters as one flat vector: the static size of each tensor (a segment)."""

    def __init__(self, sizes: tuple[int, ...]):
        self.sizes = sizes
        self.starts = tuple(int(s) for s in np.cumsum((0,) + sizes[:-1]))

    def sum(self, v: jax.Array) -> jax.Array:
        """Per-segment sums of ``v`` ([n]), broadcast back to ``[n]`` (static slices: XLA's
        segment_sum is several times slower on the CPU)."""
        segments = [(s, n) for s, n in zip(self.starts, self.sizes, strict=True) if n]
        if len(segments) <= 1:  # one tensor (empty ones hold no elements of v)
            return jnp.broadcast_to(jnp.sum(v), v.shape)
        return jnp.concatenate([jnp.broadcast_to(jnp.sum(v[s:s + n]), (n,))
                                for s, n in segments])

    def counts(self, dtype) -> jax.Array:
        return jnp.asarray(np.repeat(np.asarray(self.sizes, np.float64), self.sizes), dtype)


def _layout(params) -> tuple[Layout, jnp.dtype]:
    leaves = jax.tree.leaves(params)
    sizes = tuple(int(np.prod(np.shape(x))) for x in leaves)
    dt = jnp.result_type(*[jnp.asarray(x).dtype for x in leaves]) if leaves else jnp.float32
    return Layout(sizes), compute_dtype(dt)


@jax.custom_batching.custom_vmap
def loop_bound(n: jax.Array) -> jax.Array:
    """The number of statements to run: ``n`` itself, and under ``vmap`` over programs the
    batch's longest (unbatched, so the statement loop's counter stays unbatched and each
    register write is an in-place update rather than a scatter)."""
    return n


@loop_bound.def_vmap
def _loop_bound_vmap(axis_size, in_batched, n):
    return (jnp.max(n) if in_batched[0] else n), False


# Op groups: a statement computes the cheap group always and each other group only when some
# candidate of the batch runs an op of it at this statement (``any_candidate``), so a batch pays
# for the ops it uses. A group computes its ops the same way whatever else the batch holds: a
# program's result does not depend on the programs evaluated beside it.
GROUPS: dict[str, tuple[str, ...]] = {
    "cheap": ("nop", "add", "sub", "mul", "max", "min", "neg", "abs", "sign", "square",
              "interp", "scale_k", "add_k", "const_k", "clip_k", "clip_by", "pow_t"),
    "div": ("div", "recip"),
    "power": ("sqrt_abs", "rsqrt", "exp", "log_abs", "spow_k"),
    "tanh": ("tanh",),
    "arctan": ("arctan",),
    "reduce": ("mean", "rms", "dot", "cosine"),
    "cos": ("cos",),
}


def _group_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per op code: its group's index, and its position inside the group."""
    group, pos = np.zeros(len(OPS), np.int32), np.zeros(len(OPS), np.int32)
    for gi, names in enumerate(GROUPS.values()):
        for j, name in enumerate(names):
            group[_O[name]], pos[_O[name]] = gi, j
    missing = [o.name for o in OPS if not any(o.name in g for g in GROUPS.values())]
    if missing:
        raise AssertionError(f"ops in no group: {missing}")
    return group, pos


_GROUP, _POS = _group_tables()


@jax.custom_batching.custom_vmap
def any_candidate(b: jax.Array) -> jax.Array:
    """``b`` itself, and under ``vmap`` over programs whether any program of the batch has it
    (unbatched, so a ``cond`` on it stays a branch instead of computing both sides)."""
    return b


@any_candidate.def_vmap
def _any_candidate_vmap(axis_size, in_batched, b):
    return (jnp.any(b) if in_batched[0] else b), False


def _power(pos, x, k):
    """sqrt_abs, rsqrt, exp, log_abs, spow_k: one ``log|x|`` and one ``exp``."""
    dt = x.dtype
    nz = x != 0
    lg = jnp.log(jnp.where(nz, jnp.abs(x), 1))
    c_lg = jnp.asarray([0.5, -0.5, 0.0, 0.0, 0.0], dt)[pos]
    c_lg = jnp.where(pos == 4, k, c_lg)
    c_x = jnp.where(pos == 2, jnp.asarray(1, dt), 0)
    e = jnp.exp(c_lg * lg + c_x * jnp.clip(x, -EXP_CLIP, EXP_CLIP))
    signed = jnp.where(nz, jnp.sign(x) * e, 0)
    unsigned = jnp.where(nz, e, 0)
    return jax.lax.select_n(pos, unsigned, unsigned, e, jnp.where(nz, lg, tiny_log(dt)),
                            signed)


def _reduce(pos, x, y, layout: Layout, counts):
    """mean, rms, dot, cosine: per-tensor sums broadcast back."""
    sx, sxx, syy, sxy = (layout.sum(v) for v in (x, x * x, y * y, x * y))
    den = jnp.sqrt(sxx * syy)
    nd = den != 0
    return jax.lax.select_n(pos, sx / counts, jnp.sqrt(sxx / counts), sxy,
                            jnp.where(nd, sxy / jnp.where(nd, den, 1), 0))


def groups_of(ops) -> frozenset[str]:
    """The op groups (``GROUPS``) a set of op codes needs: a signature's. A statement does not
    test for the groups its signature cannot hold (no ``cos`` for update rules, no reductions
    for drifts and schedules)."""
    names = list(GROUPS)
    return frozenset(names[int(_GROUP[o])] for o in ops)


_STATEFUL_GROUPS = {sig.name: groups_of(sig.ops) for sig in (UPDATE, JOINT)}
_STATELESS_GROUPS = groups_of(DRIFT.ops + SCHEDULE.ops)


def statement(op, x, y, k, t, log_k, layout: Layout, counts, groups: frozenset | None = None):
    """One statement's value (``op`` may be traced): the cheap ops always, each other group of
    ops only when some candidate of the batch runs one of it here."""
    group, pos = jnp.asarray(_GROUP)[op], jnp.asarray(_POS)[op]
    ay, ak = jnp.abs(y), jnp.abs(k)
    pow_t = jnp.exp(t * log_k)  # a scalar per program: |k| ** t
    cheap = {
        "nop": jnp.zeros_like(x), "add": x + y, "sub": x - y, "mul": x * y,
        "max": jnp.maximum(x, y), "min": jnp.minimum(x, y), "neg": -x, "abs": jnp.abs(x),
        "sign": jnp.sign(x), "square": x * x, "interp": (1 - k) * x + k * y,
        "scale_k": x * k, "add_k": x + k, "const_k": jnp.full_like(x, k),
        "clip_k": jnp.clip(x, -ak, ak), "clip_by": jnp.clip(x, -ay, ay),
        "pow_t": jnp.broadcast_to(pow_t, x.shape),
    }
    value = jax.lax.select_n(jnp.where(group == 0, pos, 0), *[cheap[o] for o in GROUPS["cheap"]])

    def div():
        ny = jnp.where(pos == 0, y, x)
        num = jnp.where(pos == 0, x, jnp.ones_like(x))
        nz = ny != 0
        return jnp.where(nz, num / jnp.where(nz, ny, 1), 0)

    others = {"div": div, "power": lambda: _power(pos, x, k), "tanh": lambda: jnp.tanh(x),
              "arctan": lambda: arctan(x), "reduce": lambda: _reduce(pos, x, y, layout, counts),
              "cos": lambda: jnp.cos(x)}
    for gi, name in enumerate(GROUPS):
        if gi == 0 or (groups is not None and name not in groups):
            continue
        mine = group == gi
        value = jax.lax.cond(any_candidate(mine),
                             lambda v, fn=others[name], mine=mine: jnp.where(mine, fn(), v),
                             lambda v: v, value)
    return guard(value)


class Registers(NamedTuple):
    """The interpreter's state: ``slots`` (``[2, n]``, the program's state registers ``m`` and
    ``v``) and ``scratch`` (``[L, n]``, the statements' registers, carried only so that no step
    allocates them afresh)."""

    slots: jax.Array
    scratch: jax.Array


def run(genome, scratch, inputs, t, layout: Layout, groups: frozenset | None = None):
    """Runs one program on flat vectors; returns (its outputs, scratch).

    ``inputs`` (``[n_in, n]``) are the signature's input registers, ``t`` the step count that
    ``pow_t`` reads. ``scratch`` (``[L, n]``, the statements' registers) is the last step's:
    every statement writes its row before a later one reads it. Carried rather than made
    afresh, it costs no per-step fill of ``L`` rows of zeros (on a CPU that fill cost as much as
    the statements of a short program).
    """
    genome = jax.tree.map(jnp.asarray, genome)  # numpy fields cannot be indexed by the loop's i
    genome = {**genome, **{f: genome[f].astype(jnp.int32) for f in ("op", "a", "b", "out", "n")}}
    n_in, dt = inputs.shape[0], inputs.dtype
    counts = layout.counts(dt)
    ks = genome["k"].astype(dt)
    log_ks = jnp.log(jnp.where(ks != 0, jnp.abs(ks), 1))
    log_ks = jnp.where(ks != 0, log_ks, tiny_log(dt))

    def read(regs, r):
        inp = jax.lax.dynamic_index_in_dim(inputs, jnp.minimum(r, n_in - 1), keepdims=False)
        reg = jax.lax.dynamic_index_in_dim(regs, jnp.maximum(r - n_in, 0), keepdims=False)
        return jnp.where(r < n_in, inp, reg)

    def body(i, regs):
        x, y = read(regs, genome["a"][i]), read(regs, genome["b"][i])
        value = statement(genome["op"][i], x, y, ks[i], t, log_ks[i], layout, counts, groups)
        return jax.lax.dynamic_update_index_in_dim(regs, value, i, 0)

    scratch = jax.lax.fori_loop(0, loop_bound(genome["n"]), body, scratch)
    outs = tuple(read(scratch, genome["out"][j]) for j in range(genome["out"].shape[0]))
    return outs, scratch


def apply(genome, *inputs):
    """A stateless program (a drift, a schedule) on arrays that broadcast together: its first
    output, elementwise, in their shape (float32, or float64 for float64 inputs). Reductions
    are not in these signatures, so the result is the same whatever the batch beside it.

    Differentiable in the inputs (PPO's loss takes its gradient through a drift), not in the
    genome: the program being elementwise, its Jacobian in each input is diagonal, and one
    forward-mode pass (tangents of ones, one per input) gives all of it beside the value
    (``_elementwise``), through the same loop over the batch's longest program. Reverse mode
    through the loop itself would need all ``L`` statements and their registers at every one.
    """
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in inputs))
    dt = compute_dtype(jnp.result_type(*inputs))
    flat = jnp.stack([jnp.broadcast_to(jnp.asarray(x, dt), shape).reshape(-1) for x in inputs])
    return _elementwise(genome, flat).reshape(shape)


def _values(genome, flat):
    """The first output of a stateless program on ``flat`` ([n_in, n]), not differentiable."""
    n, dt = flat.shape[1], flat.dtype
    scratch = jnp.zeros((np.shape(genome["op"])[0], n), dt)
    outs, _ = run(genome, scratch, flat, jnp.zeros((), dt), Layout((n,)), _STATELESS_GROUPS)
    return outs[0]


@jax.custom_vjp
def _elementwise(genome, flat):
    return _values(genome, flat)


def _elementwise_fwd(genome, flat):
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)[:, :, None] * jnp.ones_like(flat)[None]
    value, diag = jax.vmap(lambda t: jax.jvp(lambda x: _values(genome, x), (flat,), (t,)),
                           out_axes=(None, 0))(basis)
    return value, (genome, diag)


def _elementwise_bwd(res, ct):
    genome, diag = res
    zero = jax.tree.map(lambda x: np.zeros(np.shape(x), jax.dtypes.float0)
                        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer) else
                        jnp.zeros_like(x), genome)
    return zero, diag * ct[None]


_elementwise.defvjp(_elementwise_fwd, _elementwise_bwd)


def init(genome, params):
    """``Registers`` of zeros in the compute dtype: ``[2, n_params]`` and ``[L, n_params]`` (``L``
    the genome's padded length)."""
    flat, _ = ravel_pytree(params)
    length, dt = np.shape(genome["op"])[0], compute_dtype(flat.dtype)
    return Registers(jnp.zeros((2, flat.shape[0]), dt), jnp.zeros((length, flat.shape[0]), dt))


def _update(sig: Signature, genome, grads, state, params, ctx: Ctx):
    layout, dt = _layout(params)
    g, unravel = ravel_pytree(grads)
    w, _ = ravel_pytree(params)
    lr = jnp.asarray(ctx.lr, dt) * jnp.asarray(genome.get("lr", 1.0), dt)
    t = jnp.asarray(ctx.step, dt) + 1
    s = state.slots
    g, w = g.astype(dt), w.astype(dt)
    values = {"g": g, "w": w, "lr": jnp.full_like(g, lr), "t": jnp.full_like(g, t),
              "m": s[0].astype(dt), "v": s[1].astype(dt)}
    if "T" in sig.inputs:  # the horizon: joint programs only
        values["T"] = jnp.full_like(g, jnp.asarray(ctx.horizon, dt))
    inputs = jnp.stack([values[name] for name in sig.inputs])
    (upd, s0, s1), scratch = run(genome, state.scratch, inputs, t, layout,
                                 _STATEFUL_GROUPS[sig.name])
    delta = unravel(-upd)
    delta = jax.tree.map(lambda d, p: d.astype(jnp.asarray(p).dtype), delta, params)
    return delta, Registers(jnp.stack([s0, s1]).astype(s.dtype), scratch)


def update(genome, grads, state, params, ctx: Ctx):
    """``delta = -update`` of the program on every parameter; the new state."""
    return _update(UPDATE, genome, grads, state, params, ctx)


def update_joint(genome, grads, state, params, ctx: Ctx):
    """``update`` for a joint program (``signatures.JOINT``): it also reads the horizon ``T``
    (``ctx.horizon``)."""
    return _update(JOINT, genome, grads, state, params, ctx)
