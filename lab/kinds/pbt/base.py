"""What a population tunes: the hyperparameters of an optax optimizer, or the constants of an
update program (``rule.program``), as named scalars in an encoding where explore's factors are
relative changes.

A ``Base`` gives the driver:

* ``start``: every hyperparameter's encoded starting value (``{name: float}``), tuned or held;
* ``log1m``: the names encoded ``log(1 - x)`` (decay rates: bounded below 1);
* ``rule``: the update rule one member trains with, its genome ``genomes(h)``'s rows;
* ``genomes(h)``: ``{name: [N]}`` encoded values -> that rule's genomes, every leaf ``[N, ...]``;
* ``family(h)``: a member's ``{name: [G]}`` values per interval -> the genome of the trajectory
  family (``trajectory``), which replays exactly what the member trained with.

An optax optimizer's hyperparameters are its genome (``lab.core.optimizers``: ``log x``, decay
rates ``log(1 - x)``). A program's are ``lr`` (its learning-rate multiplier, ``log``) and ``kI``,
the constant of statement ``I`` (0-based, the register ``xI`` of its text form) for every nonzero
constant: the rate of ``interp`` and ``pow_t`` in (0, 1) as a decay rate (``log(1 - k)``), any
other as ``log |k|`` with its sign kept, so that explore's factors 0.8 and 1.2 multiply it
(Jaderberg et al. 2017). Programs' values are decoded on the host, once for the run and once
for its replay, so a replay of a member's trajectory computes the same numbers it trained with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lab.core.optimizers import LOG1M, make_baseline, spec_for
from lab.core.rule import UpdateRule
from lab.names import hint

DECAY_OPS = ("interp", "pow_t")  # ops whose constant in (0, 1) is a decay rate
ALL_CONSTANTS = "constants"  # search.hparams: every nonzero constant of a program


def tuned_names(hparams: tuple[str, ...], names) -> tuple[str, ...]:
    """``search.hparams`` with ``constants`` expanded into a program's ``kI`` (in ``names``, the
    base's hyperparameters), without repeats."""
    out: list[str] = []
    for key in hparams:
        for k in ([n for n in names if n.startswith("k")] if key == ALL_CONSTANTS else [key]):
            if k not in out:
                out.append(k)
    return tuple(out)


def load_program(spec: str):
    """``rule.program``: an update or joint seed (``adamw``, ``adam+cosine``), the path of a
    ``.prog`` file of either signature, or an artifact folder of one (``discovered/NAME``: its
    rule.json ``source``); ValueError naming what is wrong."""
    from lab.kinds.program.programs import load_seed, parse, read_program, seed_names
    from lab.kinds.program.signatures import JOINT, UPDATE
    for sig in (UPDATE.name, JOINT.name):
        if spec in seed_names(sig):
            return load_seed(spec, sig)
    folder = Path(spec)
    if folder.is_dir():
        file = folder / "rule.json"
        try:
            source = json.loads(file.read_text()).get("source")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{file}: not a readable artifact ({e})") from None
        if not isinstance(source, str):
            raise ValueError(f"{file}: no program 'source' (an artifact of kind program)")
        p = parse(source, f"{file} source", None)
    elif spec.endswith(".prog"):
        p = read_program(spec, None)
    else:
        raise ValueError(f"{spec!r} is neither an update or joint seed program"
                         f"{hint(spec, seed_names(UPDATE.name))}, a .prog file nor an "
                         "artifact folder")
    if p.sig not in (UPDATE, JOINT):
        raise ValueError(f"{spec} is a {p.sig.name} program: PBT tunes update or joint "
                         "programs (def f(g, w, lr, t, m, v) or def f(g, w, lr, t, T, m, v))")
    return p


class Base(NamedTuple):
    start: dict[str, float]
    log1m: frozenset[str]
    rule: UpdateRule
    genomes: Callable[[dict], dict]
    family: Callable[[dict], dict]


def optax_base(name: str, fixed: dict, init: dict) -> Base:
    """An optax optimizer's hyperparameters: the genome is the encoded values themselves."""
    rule = make_baseline(name, {**fixed, **init}, "pbt")
    searchable = spec_for(name).searchable
    log1m = frozenset(k for k in rule.genome if searchable[k][1] == LOG1M)
    as_arrays = lambda h: {k: np.asarray(v, np.float32) for k, v in h.items()}  # noqa: E731
    return Base({k: float(v) for k, v in rule.genome.items()}, log1m, rule, as_arrays,
                as_arrays)


def tunable_constants(p) -> dict[str, tuple[int, str]]:
    """A program's tunable constants: ``kI`` -> (statement ``I``, encoding ``log`` or
    ``log1m``), for each nonzero constant."""
    from lab.kinds.program.ops import OPS
    out = {}
    for i, s in enumerate(p.stmts):
        op = OPS[s.op]
        if op.uses_k and s.k != 0:
            decay = op.name in DECAY_OPS and 0 < s.k < 1
            out[f"k{i}"] = (i, LOG1M if decay else "log")
    return out


def program_base(p, hparams: tuple[str, ...] = ("lr",)) -> Base:
    """An update (or joint) program's ``lr`` multiplier and the constants ``hparams`` names
    (``kI``, or ``constants``: every one of ``tunable_constants``); the rest keep the program's
    own values. The rule is the lab's program interpreter."""
    from lab.kinds.program.ir import MAX_LEN
    from lab.kinds.program.programs import genome_of, joint_rule, program_rule
    from lab.kinds.program.signatures import JOINT
    arrays = genome_of(p, max(MAX_LEN, len(p)))
    k0 = np.asarray(arrays["k"], np.float32)
    consts = tunable_constants(p)
    consts = {n: consts[n] for n in tuned_names(hparams, list(consts)) if n in consts}
    start = {"lr": 0.0}
    for name, (i, how) in consts.items():
        start[name] = float(np.log1p(-k0[i]) if how == LOG1M else np.log(abs(k0[i])))
    log1m = frozenset(n for n, (_, how) in consts.items() if how == LOG1M)
    signs = {n: float(np.sign(k0[i])) for n, (i, _) in consts.items()}
    structure = {f: v for f, v in arrays.items() if f not in ("k", "lr")}

    def values(h) -> tuple[np.ndarray, np.ndarray]:
        """``k`` ``[N, L]`` and ``lr`` ``[N]`` of ``N`` rows of encoded values (float64 on the
        host, then float32: the same numbers wherever they are used)."""
        n = len(np.atleast_1d(h["lr"]))
        k = np.tile(k0.astype(np.float64), (n, 1))
        for name, (i, how) in consts.items():
            z = np.asarray(h[name], np.float64)
            k[:, i] = -np.expm1(z) if how == LOG1M else signs[name] * np.exp(z)
        return k.astype(np.float32), np.exp(np.asarray(h["lr"], np.float64)).astype(np.float32)

    def genomes(h):
        k, lr = values(h)
        rows = {f: np.broadcast_to(v, (len(lr), *np.shape(v))).copy()
                for f, v in structure.items()}
        return {**rows, "k": k, "lr": lr}

    def family(h):
        k, lr = values(h)
        return {**structure, "k": k, "lr": lr}

    rule = joint_rule() if p.sig == JOINT else program_rule()
    return Base(start, log1m, rule._replace(genome=arrays), genomes, family)


def base_for(rule_cfg, hparams: tuple[str, ...]) -> Base:
    """The base of a config's ``rule`` section, tuning ``search.hparams``: its ``program``'s
    constants, or its optax optimizer's hyperparameters (all of them, the untuned held)."""
    if rule_cfg.program:
        return program_base(load_program(rule_cfg.program), tuple(hparams))
    return optax_base(rule_cfg.name, dict(rule_cfg.fixed), dict(rule_cfg.init))
