"""The compiled path: one program traced straight-line (live statements only).

``structure_function(program)`` is the same for a stateless program (a drift, a schedule):
a function of its constants and its inputs.

``structure_rule(program)`` is an ``UpdateRule`` whose genome is the program's constants
(``{"k": [n] float32}``, n live statements): one compilation per program structure, vmappable
over constants (the ES stage that tunes the constants of the best structures uses it), and
exportable as an ``optax.GradientTransformation`` with ``to_optax`` or ``program_to_optax``.
Each op is the reference implementation of ``ops.OPS``, applied leaf by leaf; reductions are
per leaf. State: one tree per live state slot (``None`` for a dead one).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.rule import Ctx, UpdateRule, to_optax
from lab.kinds.program.interpreted import compute_dtype
from lab.kinds.program.ir import (
    Program,
    live_slots,
    reads,
    simplify,
)
from lab.kinds.program.ops import OPS, apply
from lab.kinds.program.text import to_source


def trace(p: Program, ks, inputs, t) -> tuple:
    """The outputs of ``p`` on ``inputs`` (one array per input register, same shape), traced
    statement by statement with the reference ops (``t``: the step count ``pow_t`` reads)."""
    regs = dict(enumerate(inputs))
    for i, s in enumerate(p.stmts):
        args = [regs[r] for r in reads(s)] + [inputs[0], inputs[0]]
        regs[p.n_in + i] = apply(s.op, args[0], args[1], ks[i], t)
    return tuple(regs[r] for r in p.out)


def _leaf(p: Program, ks, g, w, lr, t, horizon, s0, s1):
    values = {"g": g, "w": w, "lr": jnp.full_like(g, lr), "t": jnp.full_like(g, t),
              "T": jnp.full_like(g, horizon), "m": s0, "v": s1}
    return trace(p, ks, tuple(values[name] for name in p.sig.inputs), t)


@functools.lru_cache(maxsize=256)
def structure_function(program: Program, simplify_first: bool = True):
    """A stateless program (drift, schedule) as ``(fn, genome)``: ``fn(genome, *inputs)`` its
    result elementwise on arrays that broadcast together, over its constants ``genome = {"k":
    [n] float32}`` (one compilation per structure, vmappable over constants)."""
    p = simplify(program) if simplify_first else program
    if p.sig.state:
        raise ValueError(f"{p.name}: a {p.sig.name} program has state; use structure_rule")

    def fn(genome, *inputs):
        shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in inputs))
        dt = compute_dtype(jnp.result_type(*inputs))
        xs = tuple(jnp.broadcast_to(jnp.asarray(x, dt), shape) for x in inputs)
        return trace(p, jnp.asarray(genome["k"]).astype(dt), xs, jnp.zeros((), dt))[0]

    return fn, {"k": np.asarray([s.k for s in p.stmts], np.float32)}


@functools.lru_cache(maxsize=256)
def structure_rule(program: Program, simplify_first: bool = True) -> UpdateRule:
    """The program as a rule over its constants (``genome = {"k": [n] float32}``); built once
    per program, so its replays share their compilations."""
    p = simplify(program) if simplify_first else program
    live = live_slots(p)

    def init(genome, params):
        def zeros(x):
            return jnp.zeros(jnp.shape(x), compute_dtype(jnp.asarray(x).dtype))
        return tuple(jax.tree.map(zeros, params) if live[j] else None for j in range(2))

    def update(genome, grads, state, params, ctx: Ctx):
        ks = genome["k"]
        outs = {}

        def leaf(g, w, *slots):
            dt = compute_dtype(g.dtype)
            it = iter(slots)
            s = [next(it).astype(dt) if live[j] else jnp.zeros(g.shape, dt) for j in range(2)]
            lr = jnp.asarray(ctx.lr, dt) * jnp.asarray(genome.get("lr", 1.0), dt)
            t = jnp.asarray(ctx.step, dt) + 1
            u, n0, n1 = _leaf(p, ks.astype(dt), g.astype(dt), w.astype(dt), lr, t,
                              jnp.asarray(ctx.horizon, dt), s[0], s[1])
            return (-u).astype(w.dtype), n0, n1

        slot_trees = [state[j] for j in range(2) if live[j]]
        res = jax.tree.map(leaf, grads, params, *slot_trees)
        treedef = jax.tree.structure(grads)
        leaves = treedef.flatten_up_to(res)
        delta = treedef.unflatten([x[0] for x in leaves])
        for j in range(2):
            outs[j] = (treedef.unflatten([x[1 + j] for x in leaves]) if live[j] else None)
        return delta, (outs[0], outs[1])

    genome = {"k": np.asarray([s.k for s in p.stmts], np.float32)}

    def describe(g) -> str:
        return to_source(with_constants(p, g["k"]))

    return UpdateRule("program", "program:" + p.name, init, update, genome, describe)


def with_constants(p: Program, ks) -> Program:
    """``p`` with its statements' constants replaced by ``ks`` ([len(p)])."""
    from lab.kinds.program.ir import Stmt
    ks = np.asarray(ks, np.float32)
    stmts = tuple(Stmt(s.op, s.a, s.b, float(ks[i])) if OPS[s.op].uses_k else s
                  for i, s in enumerate(p.stmts))
    return p.but(stmts)


def program_to_optax(program: Program, learning_rate: float = 1.0,
                     horizon: int = 1000) -> optax.GradientTransformation:
    """A program as a drop-in optax optimizer (``learning_rate`` is the program's ``lr``)."""
    rule = structure_rule(program)
    return to_optax(rule, rule.genome, learning_rate, horizon)
