"""The program IR: straight-line SSA over tensors, and its analysis.

A program has a signature (``signatures``): its inputs, state slots and outputs. For update
rules (``UPDATE``, the default) registers 0..5 are the inputs ``g, w, lr, t, s0, s1`` (gradient,
parameter, outer learning rate, step count t >= 1, and the two state slots, zero at the first
step) and the outputs are three registers: the update (``w <- w - update``, as in the Lion paper)
and the two new state slots; a drift program reads ``r, A, progress`` and returns ``D``; a
schedule reads ``t, T`` and returns a multiplier. Statement ``i`` computes ``op(r[a], r[b], k)``
into the fresh register ``n_in + i``, reading only earlier registers. As device arrays (the
genome) a program is ``op, a, b: [L] int32``, ``k: [L] float32``, ``out: [n_out] int32`` and
``n: [] int32`` (statements to run), padded with NOPs to a fixed ``L``.

Its text form (``parse``, ``to_source``) is in ``text``.

Analysis (host side, no JAX): validity (registers defined, ops of the signature, the update
depends on ``g``, across steps too), liveness across steps (a state write never read later is
dead), dead-code removal, constant folding, and the symbolic hash (names, statement order,
dead code and the order of commutative arguments ignored).

References: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from lab.kinds.program.ops import NOP, OP_INDEX, OPS
from lab.kinds.program.signatures import UPDATE, Signature

INPUTS = UPDATE.inputs  # canonical names of an update rule's registers 0..5
N_IN = len(INPUTS)
G, W, LR, T, S0, S1 = range(N_IN)
STATE = UPDATE.state
MAX_LEN = 24  # default padded length of genomes


class ProgramError(ValueError):
    """Program text or arrays that do not form a valid program (names line and column)."""


@dataclasses.dataclass(frozen=True)
class Stmt:
    """``r[6 + i] = op(r[a], r[b], k)``; unused arguments are 0."""

    op: int
    a: int = 0
    b: int = 0
    k: float = 0.0

    def __post_init__(self):
        # canonical: unused arguments and constants are 0; k is float32 everywhere
        op = OPS[self.op] if 0 <= self.op < len(OPS) else None
        if op is not None:
            object.__setattr__(self, "a", int(self.a) if op.arity >= 1 else 0)
            object.__setattr__(self, "b", int(self.b) if op.arity >= 2 else 0)
        uses_k = op is None or op.uses_k
        object.__setattr__(self, "k", float(np.float32(self.k)) if uses_k else 0.0)


@dataclasses.dataclass(frozen=True)
class Program:
    """A program: statements and the output registers (for an update rule ``(update, s0_new,
    s1_new)``), of signature ``sig``."""

    stmts: tuple[Stmt, ...]
    out: tuple[int, ...]
    name: str = "program"
    sig: Signature = UPDATE

    @property
    def n_in(self) -> int:
        return self.sig.n_in

    def but(self, stmts=None, out=None) -> Program:
        """This program with other statements and/or outputs (name and signature kept)."""
        return Program(tuple(self.stmts if stmts is None else stmts),
                       tuple(self.out if out is None else out), self.name, self.sig)

    def __len__(self) -> int:
        return len(self.stmts)

    # ---- arrays -------------------------------------------------------------------------
    def to_arrays(self, length: int = MAX_LEN) -> dict[str, np.ndarray]:
        """The genome: ``op, a, b: [length] int32``, ``k: [length] float32``, ``out: [n_out]``,
        ``n: []`` (padded with NOPs)."""
        if len(self.stmts) > length:
            raise ProgramError(f"program {self.name!r} has {len(self.stmts)} statements, more "
                               f"than the genome length {length}")
        pad = length - len(self.stmts)
        col = lambda f, dt: np.asarray([getattr(s, f) for s in self.stmts] + [0] * pad, dt)  # noqa: E731
        return {"op": col("op", np.int32), "a": col("a", np.int32), "b": col("b", np.int32),
                "k": col("k", np.float32), "out": np.asarray(self.out, np.int32),
                "n": np.asarray(len(self.stmts), np.int32)}

    @staticmethod
    def from_arrays(genome, name: str = "program", sig: Signature = UPDATE) -> Program:
        """Reads a genome of signature ``sig`` back (the first ``n`` statements); checks
        indices."""
        n = int(np.asarray(genome["n"]))
        op, a, b = (np.asarray(genome[f]).astype(int) for f in ("op", "a", "b"))
        k = np.asarray(genome["k"], np.float32)
        stmts = tuple(Stmt(int(op[i]), int(a[i]), int(b[i]), float(k[i])) for i in range(n))
        p = Program(stmts, tuple(int(x) for x in np.asarray(genome["out"])), name, sig)
        check(p)
        return p


# ---- validity and liveness -----------------------------------------------------------------
def reads(s: Stmt) -> tuple[int, ...]:
    return (s.a, s.b)[:OPS[s.op].arity]


def check(p: Program) -> None:
    """Raises ProgramError if a statement reads an undefined register, an op is unknown or not
    one of the signature's, or the outputs do not fit the signature."""
    n_in, allowed = p.n_in, frozenset(p.sig.ops)
    for i, s in enumerate(p.stmts):
        if not 0 <= s.op < len(OPS):
            raise ProgramError(f"statement {i}: unknown op code {s.op}")
        if s.op not in allowed and s.op != NOP:
            raise ProgramError(f"statement {i}: op {OPS[s.op].name!r} is not available to "
                               f"{p.sig.name} programs")
        for r in reads(s):
            if not 0 <= r < n_in + i:
                raise ProgramError(f"statement {i} ({OPS[s.op].name}) reads register {r}, "
                                   f"which is not defined before it")
    if len(p.out) != p.sig.n_out:
        raise ProgramError(f"{len(p.out)} outputs, a {p.sig.name} program returns "
                           f"{p.sig.n_out} ({', '.join(p.sig.outputs)})")
    for j, r in enumerate(p.out):
        if not 0 <= r < n_in + len(p.stmts):
            raise ProgramError(f"output {j} is register {r}, which is not defined")


def _deps(p: Program, reg: int, memo: dict[int, frozenset]) -> frozenset:
    """Input registers and statements that ``reg`` depends on within one step."""
    if reg in memo:
        return memo[reg]
    if reg < p.n_in:
        out = frozenset({("in", reg)})
    else:
        s = p.stmts[reg - p.n_in]
        out = frozenset({("st", reg)}).union(*[_deps(p, r, memo) for r in reads(s)])
    memo[reg] = out
    return out


def live_slots(p: Program) -> tuple[bool, ...]:
    """Which state slots are live across steps: read (at a later step) on a path to the result.

    A fixpoint: slot j is live if the result, or the new value of a live slot, reads input j.
    """
    memo: dict[int, frozenset] = {}
    live = [False] * len(p.sig.state)
    need = set(_deps(p, p.out[0], memo))
    changed = True
    while changed:
        changed = False
        for j, reg in enumerate(p.sig.state):
            if not live[j] and ("in", reg) in need:
                live[j] = True
                need |= _deps(p, p.out[1 + j], memo)
                changed = True
    return tuple(live)


def _live_outputs(p: Program) -> list[int]:
    live = live_slots(p)
    return [p.out[0]] + [p.out[1 + j] for j in range(len(live)) if live[j]]


def live_statements(p: Program) -> list[int]:
    """Indices of the statements the result or a live state slot needs (cross-step
    liveness)."""
    memo: dict[int, frozenset] = {}
    need = frozenset().union(*[_deps(p, r, memo) for r in _live_outputs(p)])
    return sorted(r - p.n_in for kind, r in need if kind == "st")


def depends_on_required(p: Program) -> bool:
    """Whether the result depends on the signature's required input (an update on the gradient
    ``g``), in this step or through a live state slot; True where nothing is required."""
    if p.sig.requires is None:
        return True
    memo: dict[int, frozenset] = {}
    return any(("in", p.sig.requires) in _deps(p, r, memo) for r in _live_outputs(p))


def is_valid(p: Program) -> bool:
    try:
        check(p)
    except ProgramError:
        return False
    return depends_on_required(p)


def validate(p: Program, where: str = "") -> None:
    """``check`` plus: the result must depend on the required input (an update on ``g``)."""
    check(p)
    if not depends_on_required(p):
        need = p.sig.inputs[p.sig.requires]
        what = "gradient g" if p.sig.name == "update" else f"input {need}"
        raise ProgramError(f"{where or p.name}: the {p.sig.outputs[0]} does not depend on the "
                           f"{what}")


# ---- rewriting -----------------------------------------------------------------------------
def _rebuild(p: Program, keep: Sequence[int], replace: dict[int, Stmt] | None = None,
             alias: dict[int, int] | None = None) -> Program:
    """Keeps the statements ``keep`` (in order), renumbering registers; ``alias`` maps a dropped
    statement's register to the register that now holds its value."""
    replace, alias = replace or {}, dict(alias or {})
    n_in = p.n_in
    new_reg = {r: r for r in range(n_in)}
    stmts = []
    for i in keep:
        s = replace.get(i, p.stmts[i])
        m = lambda r: new_reg[_follow(r, alias)]  # noqa: E731
        args = [m(r) for r in reads(s)] + [0, 0]
        stmts.append(Stmt(s.op, args[0], args[1], s.k))
        new_reg[n_in + i] = n_in + len(stmts) - 1
    live = live_slots(p)
    out = [new_reg[_follow(p.out[0], alias)]]
    for j, slot in enumerate(p.sig.state):  # a dead slot is written back unchanged: zero forever
        out.append(new_reg[_follow(p.out[1 + j], alias)] if live[j] else slot)
    return p.but(stmts, out)


def _follow(r: int, alias: dict[int, int]) -> int:
    while r in alias:
        r = alias[r]
    return r


def bake_lr(p: Program, multiplier: float) -> Program:
    """``p`` run with ``lr * multiplier``: a first statement ``lr_m = scale_k(lr, multiplier)``
    that every read of ``lr`` now reads (``p`` itself when the multiplier is 1); a schedule's
    multiplier scaled by a last statement."""
    m = float(np.float32(multiplier))
    if m == 1.0:
        return p
    if p.sig.name == "schedule":  # the multiplier of the learning rate, scaled
        stmts = (*p.stmts, Stmt(OP_INDEX["scale_k"], p.out[0], 0, m))
        return p.but(stmts, (p.n_in + len(p.stmts), *p.out[1:]))
    if "lr" not in p.sig.inputs:
        raise ProgramError(f"{p.name}: a {p.sig.name} program has no learning rate to scale")
    lr, n_in = p.sig.inputs.index("lr"), p.n_in
    shift = lambda r: n_in if r == lr else (r + 1 if r >= n_in else r)  # noqa: E731
    stmts = [Stmt(OP_INDEX["scale_k"], lr, 0, m)]
    for s in p.stmts:
        args = [shift(r) for r in reads(s)] + [0, 0]
        stmts.append(Stmt(s.op, args[0], args[1], s.k))
    return p.but(stmts, [shift(r) for r in p.out])


def remove_dead(p: Program) -> Program:
    """Drops the statements nothing live needs (and the writes of dead state slots)."""
    return _rebuild(p, live_statements(p))


def fold_constants(p: Program) -> Program:
    """Replaces statements whose value is a known constant by ``const_k`` of it, and rewrites
    ``mul``/``add`` with a constant argument as ``scale_k``/``add_k`` (then removes dead code)."""
    import jax.numpy as jnp

    from lab.kinds.program.ops import apply

    const: dict[int, float] = {}
    replace: dict[int, Stmt] = {}
    for i, s in enumerate(p.stmts):
        op = OPS[s.op]
        args = reads(s)
        if op.name == "const_k":
            const[p.n_in + i] = s.k
            continue
        if op.name == "pow_t" or op.reduction or op.name == "nop":
            continue
        if all(r in const for r in args):
            x = jnp.asarray(const.get(args[0], 0.0) if args else 0.0, jnp.float32)
            y = jnp.asarray(const[args[1]] if len(args) > 1 else 0.0, jnp.float32)
            value = float(apply(s.op, x, y, s.k, 1.0))
            const[p.n_in + i] = value
            replace[i] = Stmt(OP_INDEX["const_k"], 0, 0, value)
        elif op.name in ("mul", "add") and any(r in const for r in args):
            c, other = (args[0], args[1]) if args[0] in const else (args[1], args[0])
            to = "scale_k" if op.name == "mul" else "add_k"
            replace[i] = Stmt(OP_INDEX[to], other, 0, const[c])
    return remove_dead(_rebuild(p, range(len(p.stmts)), replace))


def simplify(p: Program) -> Program:
    """Dead code out, constants folded."""
    return fold_constants(remove_dead(p))


# ---- symbolic hash -------------------------------------------------------------------------
def symbolic_hash(p: Program) -> str:
    """A hash of what the program computes, structurally: value numbering over the live
    statements after constant folding, commutative arguments sorted, constants by their float32
    bits, dead state slots ignored. Names, statement order and dead code do not change it;
    the signature does (an update rule's hash has no signature part, as before signatures)."""
    q = simplify(p)
    h: dict[int, str] = {r: f"in{r}" for r in range(q.n_in)}
    for i, s in enumerate(q.stmts):
        op = OPS[s.op]
        args = [h[r] for r in reads(s)]
        if op.commutative:
            args.sort()
        k = np.float32(s.k).tobytes().hex() if op.uses_k else ""
        h[q.n_in + i] = hashlib.blake2b(f"{op.name}({','.join(args)};{k})".encode(),
                                        digest_size=12).hexdigest()
    live = live_slots(q)
    parts = [h[q.out[0]]] + [h[q.out[1 + j]] if live[j] else "dead" for j in range(len(live))]
    if q.sig != UPDATE:
        parts.insert(0, q.sig.name)
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def nop_padding_ok(genome) -> bool:
    """Statements past ``n`` are NOPs (what ``to_arrays`` writes)."""
    n = int(np.asarray(genome["n"]))
    return bool(np.all(np.asarray(genome["op"])[n:] == NOP))
