"""The program IR: straight-line SSA over per-parameter tensors, its text form and analysis.

Registers 0..5 are the inputs ``g, w, lr, t, s0, s1`` (gradient, parameter, outer learning rate,
step count t >= 1, and the two state slots, zero at the first step). Statement ``i`` computes
``op(r[a], r[b], k)`` into the fresh register ``6 + i``, reading only earlier registers. The
outputs are three registers: the update (``w <- w - update``, as in the Lion paper) and the two
new state slots. As device arrays (the genome) a program is ``op, a, b: [L] int32``,
``k: [L] float32``, ``out: [3] int32`` and ``n: [] int32`` (statements to run), padded with NOPs
to a fixed ``L``.

Text form (Lion style; ``parse(to_source(p)) == p``)::

    def adam(g, w, lr, t, m, v):
        m = interp(g, m, 0.9)
        ...
        return update, m, v

Names may be reassigned (each assignment is a new register); ``#`` starts a comment.

Analysis (host side, no JAX): validity (registers defined, the update depends on ``g``, across
steps too), liveness across steps (a state write never read later is dead), dead-code removal,
constant folding, and the symbolic hash (names, statement order, dead code and the order of
commutative arguments ignored).

References: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

import numpy as np

from lab.names import hint
from lab.rules.program.ops import NOP, OP_INDEX, OPS

INPUTS = ("g", "w", "lr", "t", "m", "v")  # canonical names of registers 0..5
N_IN = len(INPUTS)
G, W, LR, T, S0, S1 = range(N_IN)
STATE = (S0, S1)
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
    """A program: statements and the output registers ``(update, s0_new, s1_new)``."""

    stmts: tuple[Stmt, ...]
    out: tuple[int, int, int]
    name: str = "program"

    def __len__(self) -> int:
        return len(self.stmts)

    # ---- arrays -------------------------------------------------------------------------
    def to_arrays(self, length: int = MAX_LEN) -> dict[str, np.ndarray]:
        """The genome: ``op, a, b: [length] int32``, ``k: [length] float32``, ``out: [3]``,
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
    def from_arrays(genome, name: str = "program") -> Program:
        """Reads a genome back (the first ``n`` statements); checks indices."""
        n = int(np.asarray(genome["n"]))
        op, a, b = (np.asarray(genome[f]).astype(int) for f in ("op", "a", "b"))
        k = np.asarray(genome["k"], np.float32)
        stmts = tuple(Stmt(int(op[i]), int(a[i]), int(b[i]), float(k[i])) for i in range(n))
        p = Program(stmts, tuple(int(x) for x in np.asarray(genome["out"])), name)
        check(p)
        return p


# ---- validity and liveness -----------------------------------------------------------------
def reads(s: Stmt) -> tuple[int, ...]:
    return (s.a, s.b)[:OPS[s.op].arity]


def check(p: Program) -> None:
    """Raises ProgramError if a statement reads an undefined register or an op is unknown."""
    for i, s in enumerate(p.stmts):
        if not 0 <= s.op < len(OPS):
            raise ProgramError(f"statement {i}: unknown op code {s.op}")
        for r in reads(s):
            if not 0 <= r < N_IN + i:
                raise ProgramError(f"statement {i} ({OPS[s.op].name}) reads register {r}, "
                                   f"which is not defined before it")
    for j, r in enumerate(p.out):
        if not 0 <= r < N_IN + len(p.stmts):
            raise ProgramError(f"output {j} is register {r}, which is not defined")


def _deps(p: Program, reg: int, memo: dict[int, frozenset]) -> frozenset:
    """Input registers and statements that ``reg`` depends on within one step."""
    if reg in memo:
        return memo[reg]
    if reg < N_IN:
        out = frozenset({("in", reg)})
    else:
        s = p.stmts[reg - N_IN]
        out = frozenset({("st", reg)}).union(*[_deps(p, r, memo) for r in reads(s)])
    memo[reg] = out
    return out


def live_slots(p: Program) -> tuple[bool, bool]:
    """Which state slots are live across steps: read (at a later step) on a path to the update.

    A fixpoint: slot j is live if the update, or the new value of a live slot, reads input j.
    """
    memo: dict[int, frozenset] = {}
    live = [False, False]
    need = set(_deps(p, p.out[0], memo))
    changed = True
    while changed:
        changed = False
        for j, reg in enumerate(STATE):
            if not live[j] and ("in", reg) in need:
                live[j] = True
                need |= _deps(p, p.out[1 + j], memo)
                changed = True
    return live[0], live[1]


def live_statements(p: Program) -> list[int]:
    """Indices of the statements the update or a live state slot needs (cross-step liveness)."""
    memo: dict[int, frozenset] = {}
    live = live_slots(p)
    regs = [p.out[0]] + [p.out[1 + j] for j in range(2) if live[j]]
    need = frozenset().union(*[_deps(p, r, memo) for r in regs])
    return sorted(r - N_IN for kind, r in need if kind == "st")


def depends_on_g(p: Program) -> bool:
    """Whether the update depends on the gradient, in this step or through a live state slot."""
    memo: dict[int, frozenset] = {}
    live = live_slots(p)
    regs = [p.out[0]] + [p.out[1 + j] for j in range(2) if live[j]]
    return any(("in", G) in _deps(p, r, memo) for r in regs)


def is_valid(p: Program) -> bool:
    try:
        check(p)
    except ProgramError:
        return False
    return depends_on_g(p)


def validate(p: Program, where: str = "") -> None:
    """``check`` plus: the update must depend on ``g``."""
    check(p)
    if not depends_on_g(p):
        raise ProgramError(f"{where or p.name}: the update does not depend on the gradient g")


# ---- rewriting -----------------------------------------------------------------------------
def _rebuild(p: Program, keep: Sequence[int], replace: dict[int, Stmt] | None = None,
             alias: dict[int, int] | None = None) -> Program:
    """Keeps the statements ``keep`` (in order), renumbering registers; ``alias`` maps a dropped
    statement's register to the register that now holds its value."""
    replace, alias = replace or {}, dict(alias or {})
    new_reg = {r: r for r in range(N_IN)}
    stmts = []
    for i in keep:
        s = replace.get(i, p.stmts[i])
        m = lambda r: new_reg[_follow(r, alias)]  # noqa: E731
        args = [m(r) for r in reads(s)] + [0, 0]
        stmts.append(Stmt(s.op, args[0], args[1], s.k))
        new_reg[N_IN + i] = N_IN + len(stmts) - 1
    live = live_slots(p)
    out = [new_reg[_follow(p.out[0], alias)]]
    for j in range(2):  # a dead slot is written back unchanged, so it reads as zero forever
        out.append(new_reg[_follow(p.out[1 + j], alias)] if live[j] else STATE[j])
    return Program(tuple(stmts), tuple(out), p.name)


def _follow(r: int, alias: dict[int, int]) -> int:
    while r in alias:
        r = alias[r]
    return r


def bake_lr(p: Program, multiplier: float) -> Program:
    """``p`` run with ``lr * multiplier``: a first statement ``lr_m = scale_k(lr, multiplier)``
    that every read of ``lr`` now reads (``p`` itself when the multiplier is 1)."""
    m = float(np.float32(multiplier))
    if m == 1.0:
        return p
    shift = lambda r: N_IN if r == LR else (r + 1 if r >= N_IN else r)  # noqa: E731
    stmts = [Stmt(OP_INDEX["scale_k"], LR, 0, m)]
    for s in p.stmts:
        args = [shift(r) for r in reads(s)] + [0, 0]
        stmts.append(Stmt(s.op, args[0], args[1], s.k))
    return Program(tuple(stmts), tuple(shift(r) for r in p.out), p.name)


def remove_dead(p: Program) -> Program:
    """Drops the statements nothing live needs (and the writes of dead state slots)."""
    return _rebuild(p, live_statements(p))


def fold_constants(p: Program) -> Program:
    """Replaces statements whose value is a known constant by ``const_k`` of it, and rewrites
    ``mul``/``add`` with a constant argument as ``scale_k``/``add_k`` (then removes dead code)."""
    import jax.numpy as jnp

    from lab.rules.program.ops import apply

    const: dict[int, float] = {}
    replace: dict[int, Stmt] = {}
    for i, s in enumerate(p.stmts):
        op = OPS[s.op]
        args = reads(s)
        if op.name == "const_k":
            const[N_IN + i] = s.k
            continue
        if op.name == "pow_t" or op.reduction or op.name == "nop":
            continue
        if all(r in const for r in args):
            x = jnp.asarray(const.get(args[0], 0.0) if args else 0.0, jnp.float32)
            y = jnp.asarray(const[args[1]] if len(args) > 1 else 0.0, jnp.float32)
            value = float(apply(s.op, x, y, s.k, 1.0))
            const[N_IN + i] = value
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
    bits, dead state slots ignored. Names, statement order and dead code do not change it."""
    q = simplify(p)
    h: dict[int, str] = {r: f"in{r}" for r in range(N_IN)}
    for i, s in enumerate(q.stmts):
        op = OPS[s.op]
        args = [h[r] for r in reads(s)]
        if op.commutative:
            args.sort()
        k = np.float32(s.k).tobytes().hex() if op.uses_k else ""
        h[N_IN + i] = hashlib.blake2b(f"{op.name}({','.join(args)};{k})".encode(),
                                      digest_size=12).hexdigest()
    live = live_slots(q)
    parts = [h[q.out[0]]] + [h[q.out[1 + j]] if live[j] else "dead" for j in range(2)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


# ---- text ----------------------------------------------------------------------------------
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|(?:[-+]?inf|nan)(?!\w)"
_TOKEN = re.compile(rf"\s*(?:(?P<num>{_NUMBER})|(?P<name>{_NAME})|(?P<punct>[=(),:]))")


def _fmt_k(k: float) -> str:
    return str(np.float32(k)) if np.isfinite(k) else repr(float(k))


def _tokens(line: str, lineno: int, where: str) -> list[tuple[str, str, int]]:
    """(kind, text, column) tokens of one line (comments stripped)."""
    code = line.split("#", 1)[0].rstrip()
    out, pos = [], 0
    while pos < len(code):
        m = _TOKEN.match(code, pos)
        if not m or m.end() == pos:
            col = pos + len(code[pos:]) - len(code[pos:].lstrip()) + 1
            raise ProgramError(f"{where}line {lineno}, column {col}: unexpected "
                               f"{code[col - 1:col + 9]!r}")
        kind = m.lastgroup
        col = m.start(kind) + 1
        out.append((kind, m.group(kind), col))
        pos = m.end()
    return out


class _Line:
    def __init__(self, toks, lineno, where, text):
        self.toks, self.i, self.lineno, self.where, self.text = toks, 0, lineno, where, text

    def error(self, msg, col=None):
        if col is None:
            col = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text.rstrip()) + 1
        return ProgramError(f"{self.where}line {self.lineno}, column {col}: {msg}")

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None, None)

    def take(self, kind, text=None, what=None):
        k, t, c = self.peek()
        if k != kind or (text is not None and t != text):
            raise self.error(f"expected {what or text or kind}, found "
                             f"{repr(t) if t is not None else 'end of line'}")
        self.i += 1
        return t, c

    def end(self):
        if self.i < len(self.toks):
            raise self.error(f"unexpected {self.toks[self.i][1]!r} after the end of the statement")


def parse(text: str, source: str = "") -> Program:
    """Reads program text; ``ProgramError`` names the line and column of the first problem.

    Args:
      text: the program.
      source: a file name for messages.
    """
    where = f"{source}: " if source else ""
    lines = [(n + 1, ln) for n, ln in enumerate(text.splitlines())
             if ln.split("#", 1)[0].strip()]
    if not lines:
        raise ProgramError(f"{where}line 1, column 1: empty program (expected 'def NAME(g, w, lr, "
                           "t, m, v):')")
    lineno, first = lines[0]
    ln = _Line(_tokens(first, lineno, where), lineno, where, first)
    ln.take("name", "def", "'def NAME(g, w, lr, t, m, v):'")
    name, _ = ln.take("name", what="the program's name")
    ln.take("punct", "(")
    env: dict[str, int] = {}
    for j in range(N_IN):
        if j:
            ln.take("punct", ",", f"',' and the {N_IN} inputs (g, w, lr, t, m, v)")
        arg, col = ln.take("name", what=f"input {j + 1} of {N_IN} (g, w, lr, t, m, v)")
        if arg in env:
            raise ln.error(f"input {arg!r} is named twice", col)
        env[arg] = j
    ln.take("punct", ")", f"')' after the {N_IN} inputs")
    ln.take("punct", ":")
    ln.end()
    stmts: list[Stmt] = []
    out = None
    for lineno, text_line in lines[1:]:
        ln = _Line(_tokens(text_line, lineno, where), lineno, where, text_line)
        if out is not None:
            raise ln.error("statement after 'return'", 1)
        head, col = ln.take("name", what="an assignment or 'return'")
        if head == "return":
            regs = []
            for j in range(3):
                if j:
                    ln.take("punct", ",", "',' (return update, m, v)")
                var, c = ln.take("name", what="a variable (return update, m, v)")
                if var not in env:
                    raise ln.error(f"{var!r} is not defined{hint(var, env)}", c)
                regs.append(env[var])
            ln.end()
            out = tuple(regs)
            continue
        if head in OP_INDEX or head == "def":
            raise ln.error(f"{head!r} cannot be assigned to", col)
        ln.take("punct", "=", "'='")
        opname, ocol = ln.take("name", what="an op")
        if opname not in OP_INDEX:
            raise ln.error(f"unknown op {opname!r}{hint(opname, OP_INDEX)}", ocol)
        op = OPS[OP_INDEX[opname]]
        ln.take("punct", "(")
        regs, k = [], 0.0
        want = op.arity + int(op.uses_k)
        sig = ", ".join(["x", "y"][:op.arity] + (["k"] if op.uses_k else []))
        for j in range(want):
            if j:
                ln.take("punct", ",", f"',' ({opname}({sig}))")
            if j < op.arity:
                var, c = ln.take("name", what=f"a variable ({opname}({sig}))")
                if var not in env:
                    raise ln.error(f"{var!r} is not defined{hint(var, env)}", c)
                regs.append(env[var])
            else:
                num, c = ln.take("num", what=f"a number ({opname}({sig}))")
                k = float(num)
                with np.errstate(over="ignore"):  # 1e39 -> inf is the error reported here
                    finite = np.isfinite(np.float32(k))
                if not finite:
                    raise ln.error(f"constant {num} is not a finite float32", c)
        ln.take("punct", ")", f"')' ({opname} takes {want} argument(s): {opname}({sig}))")
        ln.end()
        regs += [0, 0]
        stmts.append(Stmt(OP_INDEX[opname], regs[0], regs[1], k))
        env[head] = N_IN + len(stmts) - 1
    if out is None:
        last = lines[-1][0]
        raise ProgramError(f"{where}line {last + 1}, column 1: missing 'return update, m, v'")
    p = Program(tuple(stmts), out, name)
    check(p)
    return p


def to_source(p: Program, name: str | None = None) -> str:
    """Lion-style readable text; ``parse(to_source(p)) == p`` exactly.

    State slots are printed as ``m`` and ``v``: a statement computing a slot's new value is
    written ``m = ...`` when the old value is not read after it; the update as ``update``.
    """
    names: list[str | None] = list(INPUTS)  # the name each register is printed as
    last_read = {r: len(p.stmts) for r in p.out}  # outputs are read by the return
    for i, s in enumerate(p.stmts):
        for r in reads(s):
            last_read[r] = max(last_read.get(r, -1), i)
    role = {}
    for j in (1, 2):
        if p.out[j] >= N_IN and p.out[j] != p.out[0]:
            role.setdefault(p.out[j], INPUTS[S0 + j - 1])
    if p.out[0] >= N_IN:
        role.setdefault(p.out[0], "update")
    lines = [f"def {name or p.name}({', '.join(INPUTS)}):"]
    for i, s in enumerate(p.stmts):
        op = OPS[s.op]
        args = [names[r] for r in reads(s)]
        if op.uses_k:
            args.append(_fmt_k(s.k))
        var = role.get(N_IN + i, f"x{i}")
        holder = names.index(var) if var in names else None
        if holder is not None and last_read.get(holder, -1) > i:
            var = f"x{i}"  # the old value is still needed: keep its name
            holder = None
        if holder is not None:
            names[holder] = None
        names.append(var)
        lines.append(f"    {var} = {op.name}({', '.join(args)})")
    lines.append(f"    return {', '.join(names[r] for r in p.out)}")
    return "\n".join(lines) + "\n"


def nop_padding_ok(genome) -> bool:
    """Statements past ``n`` are NOPs (what ``to_arrays`` writes)."""
    n = int(np.asarray(genome["n"]))
    return bool(np.all(np.asarray(genome["op"])[n:] == NOP))
