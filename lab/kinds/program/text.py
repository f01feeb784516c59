"""The text form of programs (Lion style; ``parse(to_source(p)) == p``)::

    def adam(g, w, lr, t, m, v):
        m = interp(g, m, 0.9)
        ...
        return update, m, v

The header's inputs give the signature (``signatures``: six for an update rule, ``def f(r, A,
progress):`` for a drift, ``def f(t, T):`` for a schedule) unless the caller names one.

Names may be reassigned (each assignment is a new register); ``#`` starts a comment. Parsing
never evaluates anything: a malformed program is a ``ProgramError`` naming its line and column.
"""

from __future__ import annotations

import re

import numpy as np

from lab.kinds.program.ir import (
    OP_INDEX,
    OPS,
    Program,
    ProgramError,
    Stmt,
    check,
    reads,
)
from lab.kinds.program.signatures import SIGNATURES, Signature
from lab.names import hint

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


def _headers(sigs) -> str:
    return " or ".join(f"'{s.header()}'" for s in sigs)


def _signature_of(ln: _Line, n: int, sig: Signature | None, col: int) -> Signature:
    """The signature a header of ``n`` inputs declares (``sig`` when the caller names one)."""
    if sig is not None:
        if n != sig.n_in:
            raise ln.error(f"a {sig.name} program takes {sig.n_in} inputs "
                           f"({', '.join(sig.inputs)}), found {n}", col)
        return sig
    fits = [s for s in SIGNATURES.values() if s.n_in == n]
    if len(fits) != 1:
        raise ln.error(f"{n} inputs fit no program signature (expected "
                       f"{_headers(SIGNATURES.values())})", col)
    return fits[0]


def parse(text: str, source: str = "", sig: Signature | None = None) -> Program:
    """Reads program text; ``ProgramError`` names the line and column of the first problem.

    Args:
      text: the program.
      source: a file name for messages.
      sig: the signature the program must have (default: the one its header's inputs fit).
    """
    where = f"{source}: " if source else ""
    expect = _headers([sig] if sig else SIGNATURES.values())
    lines = [(n + 1, ln) for n, ln in enumerate(text.splitlines())
             if ln.split("#", 1)[0].strip()]
    if not lines:
        raise ProgramError(f"{where}line 1, column 1: empty program (expected {expect})")
    lineno, first = lines[0]
    ln = _Line(_tokens(first, lineno, where), lineno, where, first)
    ln.take("name", "def", expect)
    name, _ = ln.take("name", what="the program's name")
    _, open_col = ln.take("punct", "(")
    env: dict[str, int] = {}
    while ln.peek()[2] is not None and ln.peek()[1] != ")":
        if env:
            ln.take("punct", ",", "',' between the inputs")
        arg, col = ln.take("name", what=f"input {len(env) + 1} (expected {expect})")
        if arg in env:
            raise ln.error(f"input {arg!r} is named twice", col)
        env[arg] = len(env)
    ln.take("punct", ")", "')' after the inputs")
    sig = _signature_of(ln, len(env), sig, open_col)
    ln.take("punct", ":")
    ln.end()
    ret = ", ".join(sig.outputs)
    stmts: list[Stmt] = []
    out = None
    for lineno, text_line in lines[1:]:
        ln = _Line(_tokens(text_line, lineno, where), lineno, where, text_line)
        if out is not None:
            raise ln.error("statement after 'return'", 1)
        head, col = ln.take("name", what="an assignment or 'return'")
        if head == "return":
            regs = []
            for j in range(sig.n_out):
                if j:
                    ln.take("punct", ",", f"',' (return {ret})")
                var, c = ln.take("name", what=f"a variable (return {ret})")
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
        if OP_INDEX[opname] not in sig.ops:
            raise ln.error(f"op {opname!r} is not available to {sig.name} programs", ocol)
        op = OPS[OP_INDEX[opname]]
        ln.take("punct", "(")
        regs, k = [], 0.0
        want = op.arity + int(op.uses_k)
        form = ", ".join(["x", "y"][:op.arity] + (["k"] if op.uses_k else []))
        for j in range(want):
            if j:
                ln.take("punct", ",", f"',' ({opname}({form}))")
            if j < op.arity:
                var, c = ln.take("name", what=f"a variable ({opname}({form}))")
                if var not in env:
                    raise ln.error(f"{var!r} is not defined{hint(var, env)}", c)
                regs.append(env[var])
            else:
                num, c = ln.take("num", what=f"a number ({opname}({form}))")
                k = float(num)
                with np.errstate(over="ignore"):  # 1e39 -> inf is the error reported here
                    finite = np.isfinite(np.float32(k))
                if not finite:
                    raise ln.error(f"constant {num} is not a finite float32", c)
        ln.take("punct", ")", f"')' ({opname} takes {want} argument(s): {opname}({form}))")
        ln.end()
        regs += [0, 0]
        stmts.append(Stmt(OP_INDEX[opname], regs[0], regs[1], k))
        env[head] = sig.n_in + len(stmts) - 1
    if out is None:
        last = lines[-1][0]
        raise ProgramError(f"{where}line {last + 1}, column 1: missing 'return {ret}'")
    p = Program(tuple(stmts), out, name, sig)
    try:
        check(p)
    except ProgramError as e:
        raise ProgramError(f"{where}{e}") from None
    return p


def to_source(p: Program, name: str | None = None) -> str:
    """Lion-style readable text; ``parse(to_source(p)) == p`` exactly.

    State slots are printed by their input's name (``m`` and ``v``): a statement computing a
    slot's new value is written ``m = ...`` when the old value is not read after it; the result
    by the signature's name for it (``update``, ``drift``, ``multiplier``).
    """
    sig, n_in = p.sig, p.n_in
    names: list[str | None] = list(sig.inputs)  # the name each register is printed as
    last_read = {r: len(p.stmts) for r in p.out}  # outputs are read by the return
    for i, s in enumerate(p.stmts):
        for r in reads(s):
            last_read[r] = max(last_read.get(r, -1), i)
    role = {}
    for j, slot in enumerate(sig.state):
        if p.out[1 + j] >= n_in and p.out[1 + j] != p.out[0]:
            role.setdefault(p.out[1 + j], sig.inputs[slot])
    if p.out[0] >= n_in:
        role.setdefault(p.out[0], sig.outputs[0])
    lines = [sig.header(name or p.name)]
    for i, s in enumerate(p.stmts):
        op = OPS[s.op]
        args = [names[r] for r in reads(s)]
        if op.uses_k:
            args.append(_fmt_k(s.k))
        var = role.get(n_in + i, f"x{i}")
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


