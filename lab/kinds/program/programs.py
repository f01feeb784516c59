"""Programs as genomes: the interpreter genome of a program and back, the text form, the seeds.

* ``ir``: the IR, its text form and analysis; ``ops``: the op table;
* ``interpreted``: the compile-once interpreter (the genome is arrays);
* ``compiled``: the compiled path (a program as an optax transformation);
* ``seeds``: ``seeds/<name>.prog``, optax's optimizers and PowerSign/AddSign as programs;
  ``seeds/<signature>/<name>.prog`` the seeds of the other signatures (``drift``: PPO-clip and
  DPO; ``schedule``: optax's schedules and REX); a joint seed ``UPDATE+SCHEDULE`` is the
  composition of an update seed and a schedule seed (``compose``).

``program_rule()`` is the interpreter as an ``UpdateRule`` (kind ``program``); ``joint_rule()``
the interpreter of joint programs (family ``joint``).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from lab.core.rule import UpdateRule
from lab.kinds.program import interpreted
from lab.kinds.program.ir import (
    MAX_LEN,
    Program,
    ProgramError,
    Stmt,
    reads,
    simplify,
)
from lab.kinds.program.ops import OP_INDEX
from lab.kinds.program.signatures import JOINT, SCHEDULE, SIGNATURES, UPDATE, Signature
from lab.kinds.program.text import parse, to_source

KIND = "program"


def genome_of(p: Program, length: int = MAX_LEN, lr: float = 1.0) -> dict[str, np.ndarray]:
    """The interpreter genome of ``p`` (arrays padded to ``length``; an update rule's or a
    schedule's also its lr multiplier ``lr``)."""
    arrays = p.to_arrays(length)
    if p.sig.name == "drift":  # PPO's settings are each environment's own: no learning rate
        return arrays
    return {**arrays, "lr": np.asarray(lr, np.float32)}


def program_of(genome, name: str = "program", sig: Signature = UPDATE) -> Program:
    """The program a genome of signature ``sig`` runs; an lr multiplier other than 1 becomes its
    first statement (a schedule's: its last)."""
    from lab.kinds.program.ir import bake_lr
    p = Program.from_arrays(genome, name, sig)
    lr = float(np.asarray(genome.get("lr", 1.0)))
    return bake_lr(p, lr)


def signature_of(genome) -> Signature:
    """The signature a genome's arrays are of: three outputs make an update rule; one output a
    schedule, with its ``lr`` multiplier, or a drift, without."""
    if np.shape(genome["out"])[0] == UPDATE.n_out:
        return UPDATE
    return SIGNATURES["schedule" if "lr" in genome else "drift"]


def source_of(genome, name: str = "program") -> str:
    """The text of the program a genome runs (its signature read off the arrays)."""
    sig = signature_of(genome)
    return to_source(program_of(genome, sig.name if name == "program" and sig != UPDATE
                                else name, sig))


def from_source(text: str, length: int = MAX_LEN, source: str = "") -> dict[str, np.ndarray]:
    """Program text -> interpreter genome (padded to at least ``length``)."""
    p = parse(text, source)
    return genome_of(p, max(length, len(p)))


@functools.cache
def program_rule() -> UpdateRule:
    """The interpreter as a rule: every program of any length is one genome of it."""
    rule = UpdateRule(KIND, KIND, interpreted.init, interpreted.update,
                      genome_of(load_seed("adamw")), source_of)
    return rule


@functools.cache
def joint_rule() -> UpdateRule:
    """The interpreter of joint programs (``signatures.JOINT``: an update rule that also reads
    the horizon ``T``), family ``joint``; its default genome is Adam with a cosine schedule."""
    def describe(genome) -> str:
        return to_source(program_of(genome, "joint", JOINT))
    return UpdateRule(KIND, JOINT.name, interpreted.init, interpreted.update_joint,
                      genome_of(load_seed("adam+cosine", JOINT.name)), describe)


def compose(update: Program, schedule: Program, name: str | None = None) -> Program:
    """The joint program that runs ``update`` with its learning rate times ``schedule(t, T)``.

    Statements: ``t0 = add_k(t, -1)`` (a schedule reads the 0-based step, optax's ``count``; an
    update rule the 1-based ``t``), the schedule's statements on ``(t0, T)``, ``lr_s = mul(lr,
    multiplier)``, then the update's statements with ``lr_s`` for ``lr``. Its interpreter and
    compiled path equal ``update`` under ``optax.scale_by_schedule`` (tested)."""
    if update.sig != UPDATE or schedule.sig != SCHEDULE:
        raise ProgramError(f"compose takes an update program and a schedule program, not "
                           f"{update.sig.name} and {schedule.sig.name}")
    n_in = JOINT.n_in
    t, horizon = JOINT.inputs.index("t"), JOINT.inputs.index("T")
    stmts = [Stmt(OP_INDEX["add_k"], t, 0, -1.0)]
    base = n_in + 1  # the schedule's first statement

    def sched(r):
        return (n_in, horizon)[r] if r < schedule.n_in else base + r - schedule.n_in

    for st in schedule.stmts:
        args = [sched(r) for r in reads(st)] + [0, 0]
        stmts.append(Stmt(st.op, args[0], args[1], st.k))
    lr_s = base + len(schedule.stmts)
    stmts.append(Stmt(OP_INDEX["mul"], JOINT.inputs.index("lr"), sched(schedule.out[0]), 0.0))
    names = {name: i for i, name in enumerate(JOINT.inputs)}

    def upd(r):
        if r < update.n_in:
            return lr_s if update.sig.inputs[r] == "lr" else names[update.sig.inputs[r]]
        return lr_s + 1 + r - update.n_in

    for st in update.stmts:
        args = [upd(r) for r in reads(st)] + [0, 0]
        stmts.append(Stmt(st.op, args[0], args[1], st.k))
    return Program(tuple(stmts), tuple(upd(r) for r in update.out),
                   name or f"{update.name}_{schedule.name}", JOINT)


def _seed_folder(signature: str):
    folder = resources.files("lab.kinds.program") / "seeds"
    return folder if signature == UPDATE.name else folder / signature


def seed_names(signature: str = UPDATE.name) -> list[str]:
    """The seed programs of ``signature`` (update rules by default)."""
    if signature == JOINT.name:  # every pair of an update seed and a schedule seed
        return [f"{u}+{s}" for u in seed_names(UPDATE.name) for s in seed_names(SCHEDULE.name)]
    folder = _seed_folder(signature)
    if not folder.is_dir():
        return []
    return sorted(Path(str(f.name)).stem for f in folder.iterdir() if f.name.endswith(".prog"))


@functools.cache
def load_seed(name: str, signature: str = UPDATE.name) -> Program:
    """Seed program ``name`` of ``signature`` (``seeds/<name>.prog`` for update rules,
    ``seeds/<signature>/<name>.prog`` for the others)."""
    sig = SIGNATURES.get(signature)
    names = seed_names(signature) if sig else []
    if name not in names:
        from lab.names import hint
        what = "" if signature == UPDATE.name else f"{signature} "
        raise ProgramError(f"unknown {what}seed program {name!r}{hint(name, names)} "
                           f"(seeds: {', '.join(names) or 'none'})")
    if sig == JOINT:
        update, schedule = name.split("+")
        return compose(load_seed(update), load_seed(schedule, SCHEDULE.name))
    rel = f"{name}.prog" if sig == UPDATE else f"{signature}/{name}.prog"
    return parse((_seed_folder(signature) / f"{name}.prog").read_text(), f"seeds/{rel}", sig)


def read_program(path: str | Path, sig: Signature | None = UPDATE) -> Program:
    """A program text file of signature ``sig`` (``None``: the one its header fits);
    ProgramError (naming file, line and column) if malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProgramError(f"{path}: no such program file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProgramError(f"{path}: cannot read: {e}") from None
    return parse(text, str(path), sig)


__all__ = ["KIND", "MAX_LEN", "Program", "ProgramError", "compose", "from_source", "genome_of",
           "joint_rule", "load_seed", "parse", "program_of", "program_rule", "read_program",
           "seed_names", "simplify", "source_of", "to_source"]
