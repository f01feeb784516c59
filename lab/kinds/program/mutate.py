"""Mutations of programs (host side, numpy randomness from an explicit seed).

Five kinds, as in the Lion search and AutoML-Zero: insert a statement, delete one, change an op,
change an argument (a statement's or an output's), scale a constant by ``2 ** (j / 4)`` (``j`` a
rounded ``4 N(0, 1)``, never 0). Constants live on a lattice (``lattice``): ``sign 2 ** (e / 4)``,
and for a decay (``interp``, ``pow_t``) the same on ``1 - k`` above 1/2, so that a step and its
reverse, or two children that make the same move, give the same function exactly and the cache
knows it (with ``2 ** N(0, 1)`` factors no constant ever recurred); the ES on constants refines
the finalists off the lattice. An insertion may *rebind* an earlier register (later reads of
``m`` read the new statement, the way ``m = f(m)`` rebinds a name in the text form), so a single
insertion can change behaviour. ``mutate`` retries until the child is valid, fits the length and
differs from its parent by symbolic hash.

References: Chen et al. 2023 (arXiv 2302.06675); Real et al. 2020, AutoML-Zero (arXiv 2003.03384).
"""

from __future__ import annotations

import numpy as np

from lab.kinds.program.ir import (
    MAX_LEN,
    Program,
    Stmt,
    is_valid,
    reads,
    symbolic_hash,
)
from lab.kinds.program.ops import OP_INDEX, OPS
from lab.kinds.program.signatures import UPDATE, Signature

KINDS = ("insert", "delete", "change_op", "change_arg", "scale_k")
_INTERP = OP_INDEX["interp"]
DECAYS = frozenset({_INTERP, OP_INDEX["pow_t"]})  # constants read as decays: 1 - k on the lattice
STEPS = 4  # lattice points per factor of 2
K_MAX = 1e10


def lattice(k: float, op: int, steps: int = 0) -> float:
    """``k`` rounded to its lattice point, moved ``steps`` points: ``sign(k) 2 ** (e / STEPS)``;
    a decay in (0, 1) is ``1 - 2 ** (-1 - n / STEPS)`` above 1/2 and ``2 ** (-1 + n / STEPS)``
    below (one integer ``n``, 0 at 1/2), so it stays a decay and its steps shrink towards 1 as
    ``1 - k`` does. Every point is computed from its integer, so equal moves give bit-equal
    constants (a move past the ends stops at the end)."""
    k = float(k)
    if not np.isfinite(k) or k == 0.0:
        return 0.0
    if op in DECAYS and 0.0 < k < 1.0:
        n = round(-STEPS * (np.log2(1.0 - k) + 1.0)) if k >= 0.5 else \
            round(STEPS * (np.log2(k) + 1.0))
        n = int(np.clip(n + steps, -STEPS * 22, STEPS * 22))
        k = 1.0 - 2.0 ** (-1.0 - n / STEPS) if n >= 0 else 2.0 ** (-1.0 + n / STEPS)
        return float(np.float32(k))  # a program's constants are float32
    top = int(STEPS * np.log2(K_MAX))  # the last lattice point within K_MAX
    e = int(np.clip(round(STEPS * np.log2(abs(k))) + steps, -top, top))
    return float(np.float32(np.copysign(2.0 ** (e / STEPS), k)))


def random_k(rng: np.random.Generator, op: int) -> float:
    """A fresh constant on the lattice: a decay in [0.5, 1) for ``interp``, else N(0, 1)."""
    k = float(rng.uniform(0.5, 1.0)) if op == _INTERP else float(rng.normal())
    return lattice(k, op)


def random_stmt(rng: np.random.Generator, n_regs: int, first: int | None = None,
                sig: Signature = UPDATE) -> Stmt:
    """A statement of an op of ``sig`` over registers ``< n_regs`` (its first argument
    ``first`` if given)."""
    op = int(rng.choice(sig.ops))
    a = int(rng.integers(n_regs)) if first is None else first
    b = int(rng.integers(n_regs))
    return Stmt(op, a, b, random_k(rng, op) if OPS[op].uses_k else 0.0)


def _redirect(p: Program, start: int, old: int, new: int) -> tuple[list[Stmt], list[int]]:
    """Statements from index ``start`` on and the outputs, reading ``new`` where they read
    ``old``."""
    stmts = list(p.stmts)
    for i in range(start, len(stmts)):
        s = stmts[i]
        stmts[i] = Stmt(s.op, new if s.a == old else s.a, new if s.b == old else s.b, s.k)
    return stmts, [new if r == old else r for r in p.out]


def _shift(p: Program, at: int, by: int) -> tuple[list[Stmt], list[int]]:
    """Registers >= ``n_in + at`` renumbered by ``by`` (for an insertion or deletion at)."""
    f = lambda r: r + by if r >= p.n_in + at else r  # noqa: E731
    return [Stmt(s.op, f(s.a), f(s.b), s.k) for s in p.stmts], [f(r) for r in p.out]


def insert(p: Program, rng: np.random.Generator) -> Program:
    at = int(rng.integers(len(p.stmts) + 1))
    stmts, out = _shift(p, at, 1)
    # half of the insertions rebind an earlier register: later reads see the new value
    n_in = p.n_in
    target = int(rng.integers(n_in + at)) if rng.random() < 0.5 else None
    new = random_stmt(rng, n_in + at, first=target, sig=p.sig)
    stmts.insert(at, new)
    q = p.but(stmts, out)
    if target is not None:
        stmts, out = _redirect(q, at + 1, target, n_in + at)
        q = p.but(stmts, out)
    return q


def delete(p: Program, rng: np.random.Generator) -> Program:
    if not p.stmts:
        return p
    at = int(rng.integers(len(p.stmts)))
    s = p.stmts[at]
    args = reads(s)
    repl = args[0] if args else int(rng.integers(p.n_in + at))  # its reads now read its input
    stmts, out = _redirect(p, at + 1, p.n_in + at, repl)
    q = p.but(stmts[:at] + stmts[at + 1:], out)
    stmts, out = _shift(q, at + 1, -1)
    return p.but(stmts, out)


def change_op(p: Program, rng: np.random.Generator) -> Program:
    if not p.stmts:
        return p
    at = int(rng.integers(len(p.stmts)))
    s = p.stmts[at]
    op = int(rng.choice(p.sig.ops))
    a = s.a if OPS[s.op].arity >= 1 else int(rng.integers(p.n_in + at))
    b = s.b if OPS[s.op].arity >= 2 else int(rng.integers(p.n_in + at))
    k = s.k if OPS[s.op].uses_k else random_k(rng, op)
    stmts = list(p.stmts)
    stmts[at] = Stmt(op, a, b, k if OPS[op].uses_k else 0.0)
    return p.but(stmts)


def change_arg(p: Program, rng: np.random.Generator) -> Program:
    slots = [(i, j) for i, s in enumerate(p.stmts) for j in range(OPS[s.op].arity)]
    n_args, n_out = len(slots), len(p.out)
    slots += [(-1, j) for j in range(n_out)]
    i, j = slots[int(rng.integers(len(slots)))] if rng.random() < 0.85 or not n_args else \
        slots[n_args + int(rng.integers(n_out))]
    if i < 0:
        out = list(p.out)
        out[j] = int(rng.integers(p.n_in + len(p.stmts)))
        return p.but(out=out)
    s = p.stmts[i]
    r = int(rng.integers(p.n_in + i))
    stmts = list(p.stmts)
    stmts[i] = Stmt(s.op, r if j == 0 else s.a, r if j == 1 else s.b, s.k)
    return p.but(stmts)


def scale_k(p: Program, rng: np.random.Generator) -> Program:
    idx = [i for i, s in enumerate(p.stmts) if OPS[s.op].uses_k]
    if not idx:
        return p
    i = idx[int(rng.integers(len(idx)))]
    s = p.stmts[i]
    if s.k == 0:
        k = random_k(rng, s.op)
    else:
        j = round(STEPS * rng.normal())
        k = lattice(s.k, s.op, j if j else int(rng.choice((-1, 1))))
    stmts = list(p.stmts)
    stmts[i] = Stmt(s.op, s.a, s.b, k)
    return p.but(stmts)


MUTATIONS = {"insert": insert, "delete": delete, "change_op": change_op,
             "change_arg": change_arg, "scale_k": scale_k}


def mutate(p: Program, rng: np.random.Generator, max_len: int = MAX_LEN, tries: int = 100,
           weights: dict[str, float] | None = None, stats: dict | None = None,
           distinct: bool = True) -> Program:
    """A valid child of ``p`` with a different symbolic hash (``p`` itself if ``tries`` run
    out; with ``distinct=False``, the first valid child, whatever its hash). ``weights``:
    relative frequency of each kind (default: equal). ``stats["same"]`` counts the valid
    children rejected for having their parent's symbolic hash (hits of the symbolic cache)."""
    w = np.asarray([(weights or {}).get(k, 1.0) for k in KINDS], np.float64)
    w = w / w.sum()
    parent = symbolic_hash(p) if distinct else None
    for _ in range(tries):
        kind = KINDS[int(rng.choice(len(KINDS), p=w))]
        if kind == "insert" and len(p.stmts) >= max_len:
            kind = "delete"
        child = MUTATIONS[kind](p, rng)
        if len(child.stmts) <= max_len and is_valid(child):
            if not distinct or symbolic_hash(child) != parent:
                return child
            if stats is not None:
                stats["same"] = stats.get("same", 0) + 1
    return p


def random_program(rng: np.random.Generator, length: int = 8,
                   sig: Signature = UPDATE) -> Program:
    """A random valid program of signature ``sig`` with ``length`` statements (for tests and
    random search): the result the last statement, state slots any register."""
    while True:
        stmts = [random_stmt(rng, sig.n_in + i, sig=sig) for i in range(length)]
        n = sig.n_in + length
        out = (n - 1, *(int(rng.integers(n)) for _ in range(sig.n_out - 1)))
        p = Program(tuple(stmts), out, "random", sig)
        if is_valid(p):
            return p
