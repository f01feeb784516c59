"""Program signatures: what a program reads, carries and returns.

One engine (IR, text form, interpreter, compiled path, mutations, symbolic hash) runs every
symbolic object the lab searches; a signature is what tells them apart:

* ``update`` (update rules): ``g, w, lr, t`` and the state slots ``m, v`` -> ``update`` and the
  new ``m, v`` (``w <- w - update``); per-parameter tensors, per-tensor reductions allowed; the
  update must depend on ``g``.
* ``drift`` (RL objectives, LPO-style): ``r, A, progress`` (policy ratio, advantage, training
  progress n/N), elementwise over a batch -> the drift ``D``; PPO's policy loss is
  ``-mean(r * A - D)``. No state, no reductions, no step count.
* ``schedule`` (learning-rate schedules): ``t, T`` (step, horizon) -> a multiplier of the
  learning rate. No state, no reductions.
* ``joint`` (an update rule and its schedule, searched together): ``g, w, lr, t, T`` and the
  state slots ``m, v`` -> ``update, m, v``, the update signature plus the horizon ``T`` and the
  ``cos`` op. ``programs.compose(update, schedule)`` writes any pair of an update program and a
  schedule program as one joint program (the schedule's statements first, its multiplier scaling
  ``lr``); the search then mutates both parts, and may mix them.

Registers ``0 .. n_in - 1`` hold the inputs; a program's outputs are registers, the first the
signature's result and the rest the new values of the state slots, in order. A signature also
fixes its op set: a search mutates within it, and a program text with an op outside it is an
error naming the op.
"""

from __future__ import annotations

import dataclasses

from lab.kinds.program.ops import OP_INDEX, OPS


@dataclasses.dataclass(frozen=True)
class Signature:
    """A program signature.

    Attributes:
      name: its name (``update``, ``drift``, ``schedule``, ``joint``).
      inputs: the canonical names of the input registers, in order.
      outputs: the names of the outputs: the result, then the new value of each state slot.
      state: the input registers that are state slots (output ``1 + j`` is the new value of
        ``state[j]``), zero at the first step.
      requires: an input register the result must depend on (``None``: any program).
      ops: the op codes a program may use (``nop`` excluded), in the order mutations draw them.
      doc: one line for messages and ``lab inspect``.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    state: tuple[int, ...]
    requires: int | None
    ops: tuple[int, ...]
    doc: str

    @property
    def n_in(self) -> int:
        return len(self.inputs)

    @property
    def n_out(self) -> int:
        return len(self.outputs)

    def header(self, name: str = "NAME") -> str:
        return f"def {name}({', '.join(self.inputs)}):"

    def footer(self) -> str:
        return f"return {', '.join(self.outputs)}"


def _codes(names) -> tuple[int, ...]:
    return tuple(OP_INDEX[n] for n in names)


# The update signature's ops are the table as it was before other signatures existed: new ops
# appended to the table for other signatures do not change the update search (nor its draws).
_UPDATE_OPS = ("add", "sub", "mul", "div", "max", "min", "neg", "abs", "sign", "square",
               "sqrt_abs", "rsqrt", "exp", "log_abs", "tanh", "arctan", "recip", "interp",
               "scale_k", "add_k", "const_k", "clip_k", "clip_by", "spow_k", "pow_t", "mean",
               "rms", "dot", "cosine")
_ELEMENTWISE = tuple(op.name for op in OPS
                     if op.name != "nop" and not op.reduction and op.name != "pow_t")

UPDATE = Signature(
    "update", ("g", "w", "lr", "t", "m", "v"), ("update", "m", "v"), (4, 5), 0,
    _codes(_UPDATE_OPS), "update rule: (g, w, lr, t, m, v) -> (update, m, v); w <- w - update")
DRIFT = Signature(
    "drift", ("r", "A", "progress"), ("drift",), (), None,
    _codes(n for n in _ELEMENTWISE if n != "cos"),
    "PPO drift: (r, A, progress) -> D >= 0, D = dD/dr = 0 at r = 1; loss -mean(r A - D)")
SCHEDULE = Signature(
    "schedule", ("t", "T"), ("multiplier",), (), None, _codes(_ELEMENTWISE),
    "learning-rate schedule: (t, T) -> multiplier of the learning rate at step t of T")

JOINT = Signature(
    "joint", ("g", "w", "lr", "t", "T", "m", "v"), ("update", "m", "v"), (5, 6), 0,
    _codes((*_UPDATE_OPS, "cos")),
    "update rule with its schedule: (g, w, lr, t, T, m, v) -> (update, m, v); t of T steps")

SIGNATURES: dict[str, Signature] = {s.name: s for s in (UPDATE, DRIFT, SCHEDULE, JOINT)}


def signature(name: str) -> Signature:
    """The signature called ``name``; ValueError naming the known ones."""
    if name not in SIGNATURES:
        from lab.names import hint
        raise ValueError(f"unknown program signature {name!r}{hint(name, SIGNATURES)} "
                         f"(signatures: {', '.join(SIGNATURES)})")
    return SIGNATURES[name]
