"""The compile-once interpreter: any program as a genome of arrays, vmappable over programs.

``update`` runs the statements of one program on the parameters as one flat vector. Under
``vmap`` over a population every op is computed for every candidate and the wanted one selected,
so each statement is kept cheap:

* a ``fori_loop`` over statements (compile time does not grow with the program length), its
  bound the genome's ``n`` (under vmap: the batch's longest program);
* the power-like ops (``sqrt_abs``, ``rsqrt``, ``recip``, ``spow_k``, ``pow_t``) and ``exp``
  share one ``log|x|`` and one ``exp`` per statement, as ``sign * exp(a * log|x| + b)``;
* per-tensor reductions as static slices of the flat vector (four sums per statement).

The genome (``Program.to_arrays``): ``op, a, b: [L] int32``, ``k: [L] float32``, ``out: [3]
int32``, ``n: [] int32`` and ``lr: []`` float32, a multiplier on ``ctx.lr`` (the per-candidate
learning-rate grid of a search; 1 elsewhere). The state is ``[2, n_params]`` in the compute dtype
(float32, or float64 for float64 parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lab.core.rule import Ctx
from lab.kinds.program.ir import LR, N_IN, S0, S1, G, T, W
from lab.kinds.program.ops import EXP_CLIP, OP_INDEX, OPS, arctan, guard, tiny_log

_O = OP_INDEX


def _coefficients() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per op: the exp argument is ``c_lg * log|x| + c_x * clip(x) + c_t * t * log|k|``."""
    c_lg, c_x, c_t = (np.zeros(len(OPS), np.float32) for _ in range(3))
    c_lg[_O["sqrt_abs"]], c_lg[_O["rsqrt"]], c_lg[_O["recip"]] = 0.5, -0.5, -1.0
    c_x[_O["exp"]] = 1.0
    c_t[_O["pow_t"]] = 1.0
    return c_lg, c_x, c_t


_C_LG, _C_X, _C_T = _coefficients()


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


def statement(op, x, y, k, t, log_k, layout: Layout, counts):
    """One statement's value for every op, the wanted one selected (``op`` may be traced)."""
    dt = x.dtype
    nz = x != 0
    lg = jnp.log(jnp.where(nz, jnp.abs(x), 1))
    c_lg = jnp.where(op == _O["spow_k"], k, jnp.asarray(_C_LG, dt)[op])
    z = (c_lg * lg + jnp.asarray(_C_X, dt)[op] * jnp.clip(x, -EXP_CLIP, EXP_CLIP)
         + jnp.asarray(_C_T, dt)[op] * (t * log_k))
    e = jnp.exp(z)
    signed = jnp.where(nz, jnp.sign(x) * e, 0)
    unsigned = jnp.where(nz, e, 0)
    ny = y != 0
    div = jnp.where(ny, x / jnp.where(ny, y, 1), 0)
    sx, sxx, syy, sxy = (layout.sum(v) for v in (x, x * x, y * y, x * y))
    den = jnp.sqrt(sxx * syy)
    nd = den != 0
    ay = jnp.abs(y)
    ak = jnp.abs(k)
    values = {
        "nop": jnp.zeros_like(x), "add": x + y, "sub": x - y, "mul": x * y, "div": div,
        "max": jnp.maximum(x, y), "min": jnp.minimum(x, y), "neg": -x, "abs": jnp.abs(x),
        "sign": jnp.sign(x), "square": x * x, "sqrt_abs": unsigned, "rsqrt": unsigned,
        "exp": e, "log_abs": jnp.where(nz, lg, tiny_log(dt)), "tanh": jnp.tanh(x),
        "arctan": arctan(x), "recip": signed, "interp": (1 - k) * x + k * y,
        "scale_k": x * k, "add_k": x + k, "const_k": jnp.full_like(x, k),
        "clip_k": jnp.clip(x, -ak, ak), "clip_by": jnp.clip(x, -ay, ay), "spow_k": signed,
        "pow_t": jnp.broadcast_to(e, x.shape), "mean": sx / counts,
        "rms": jnp.sqrt(sxx / counts), "dot": sxy,
        "cosine": jnp.where(nd, sxy / jnp.where(nd, den, 1), 0),
    }
    return guard(jax.lax.select_n(op, *[values[o.name] for o in OPS]))


def run(genome, g, w, lr, t, s0, s1, layout: Layout):
    """Runs one program on flat vectors; returns (update, new s0, new s1), each ``[n]``."""
    genome = jax.tree.map(jnp.asarray, genome)  # numpy fields cannot be indexed by the loop's i
    dt = g.dtype
    length = genome["op"].shape[0]
    counts = layout.counts(dt)
    regs = jnp.zeros((N_IN + length, g.shape[0]), dt)
    inputs = {G: g, W: w, LR: jnp.full_like(g, lr), T: jnp.full_like(g, t), S0: s0, S1: s1}
    for r, v in inputs.items():
        regs = regs.at[r].set(v)
    ks = genome["k"].astype(dt)
    log_ks = jnp.log(jnp.where(ks != 0, jnp.abs(ks), 1))
    log_ks = jnp.where(ks != 0, log_ks, tiny_log(dt))

    def body(i, regs):
        x = jax.lax.dynamic_index_in_dim(regs, genome["a"][i], keepdims=False)
        y = jax.lax.dynamic_index_in_dim(regs, genome["b"][i], keepdims=False)
        value = statement(genome["op"][i], x, y, ks[i], t, log_ks[i], layout, counts)
        return jax.lax.dynamic_update_index_in_dim(regs, value, N_IN + i, 0)

    regs = jax.lax.fori_loop(0, loop_bound(genome["n"]), body, regs)
    pick = lambda j: jax.lax.dynamic_index_in_dim(regs, genome["out"][j], keepdims=False)  # noqa: E731
    return pick(0), pick(1), pick(2)


def init(genome, params):
    """``[2, n_params]`` zeros in the compute dtype."""
    flat, _ = ravel_pytree(params)
    return jnp.zeros((2, flat.shape[0]), compute_dtype(flat.dtype))


def update(genome, grads, state, params, ctx: Ctx):
    """``delta = -update`` of the program on every parameter; the new ``[2, n]`` state."""
    layout, dt = _layout(params)
    g, unravel = ravel_pytree(grads)
    w, _ = ravel_pytree(params)
    lr = jnp.asarray(ctx.lr, dt) * jnp.asarray(genome.get("lr", 1.0), dt)
    t = jnp.asarray(ctx.step, dt) + 1
    upd, s0, s1 = run(genome, g.astype(dt), w.astype(dt), lr, t, state[0].astype(dt),
                      state[1].astype(dt), layout)
    delta = unravel(-upd)
    delta = jax.tree.map(lambda d, p: d.astype(jnp.asarray(p).dtype), delta, params)
    return delta, jnp.stack([s0, s1]).astype(state.dtype)
