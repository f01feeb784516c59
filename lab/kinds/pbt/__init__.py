"""Kind ``pbt``: population-based training of an optax optimizer's hyperparameters, or of an
update program's constants and learning-rate multiplier (``rule.program``; ``base``).

A population of training runs of the suite's tasks is advanced together, an interval at a time
(``population``: one compiled call per task, the runs' state on device); between intervals the
worst members copy the best and perturb their hyperparameters (``driver``). What it yields is a
schedule: the hyperparameter trajectory of a member over the run, the rule family ``pbt(NAME)``
(``trajectory``: piecewise constant in fractions of the run, equal to optax's
``inject_hyperparams`` with ``piecewise_constant_schedule``), scored from scratch, replayed and
exported as every update rule; a program's is ``pbt(program)``, its constants per interval.
``lab inspect`` draws the trajectory.

References: Jaderberg et al. 2017, "Population Based Training of Neural Networks" (arXiv
1711.09846).
"""

from __future__ import annotations

import numpy as np

from lab.core import hashing
from lab.core.conformance import update_rule_case
from lab.core.kind import Conformance, LaunchCase, register
from lab.core.rule_kind import update_rule_kind
from lab.core.target import Target
from lab.kinds.pbt import trajectory as T
from lab.kinds.pbt.base import base_for
from lab.kinds.pbt.config import PBTConfig, PBTRuleConfig, hparam_problems
from lab.kinds.pbt.driver import PBTDriver

NAME = T.KIND


def base_name(cfg) -> str:
    """``adam`` or ``sgd(nesterov=True)``: the optimizer and its static keywords."""
    fixed = ", ".join(f"{k}={v!r}" for k, v in sorted(cfg.rule.fixed.items()))
    return f"{cfg.rule.name}({fixed})" if fixed else cfg.rule.name


def make_rule(cfg):
    """The family ``pbt(NAME)`` (``pbt(program)``, ``pbt(joint)`` for a program) over
    ``search.generations`` intervals, its default genome the config's starting
    hyperparameters held over the run."""
    g = cfg.search.generations
    base = base_for(cfg.rule, cfg.search.hparams)
    if cfg.rule.program:
        joint = base.rule.name == "joint"
        rule = T.program_trajectory_rule("joint" if joint else "update", g)
    else:
        rule = T.trajectory_rule(base_name(cfg), g)
    return rule._replace(genome=base.family({k: np.full(g, v) for k, v in base.start.items()}))


def rule_from_name(name: str):
    return T.rule_of_family(name)


def config_problems(cfg) -> list[tuple[str, str]]:
    return hparam_problems(cfg.rule, cfg.search)


def artifact_fields(target: Target) -> dict:
    """rule.json's ``trajectory``: per hyperparameter (an optax keyword; a program's ``lr`` and
    changing constants) its value in each interval, the intervals as fractions of the run (what
    ``as_optax`` builds at any horizon) and, for Adam's learning rate alone, the same schedule
    as a schedule program of Adam (``schedule_program``: save it as a ``.prog`` file and
    ``lab replay program:FILE``)."""
    h = T.decoded(target.rule.name, target.genome)
    n = len(next(iter(h.values())))
    out = {"intervals": n, "starts": [i / n for i in range(n)],
           "hyperparameters": {k: v.tolist() for k, v in h.items()}}
    program = T.as_schedule_program(target.rule.name, target.genome)
    if program is not None:
        from lab.kinds.program.text import to_source
        out["schedule_program"] = to_source(program)
    return {"trajectory": out}


def views(target: Target, store, info: dict) -> dict:
    """``trajectory`` (decoded per interval), ``schedule_program`` where there is one, and
    ``plot``: each tuned hyperparameter over the run."""
    from lab.core.target import write_plot
    from lab.kinds.pbt.plots import draw_trajectory
    fields = artifact_fields(target)["trajectory"]
    extra = {"schedule_program": fields["schedule_program"]} if "schedule_program" in fields else {}
    return {"trajectory": fields["hyperparameters"], **extra,
            "plot": write_plot(target, store, info["hash"], "trajectory",
                               lambda path: draw_trajectory(fields, path, target.label))}


def conformance() -> Conformance:
    rule = T.trajectory_rule("adam", 4)
    lr = np.log(np.asarray([1e-3, 3e-3, 1e-3, 3e-4], np.float32))
    population = [{**rule.genome, "learning_rate": lr * s} for s in (1.0, 0.9, 1.1)]
    prog = T.program_trajectory_rule("update", 4)  # AdamW's lr and weight decay per interval
    steps = np.asarray([1.0, 3.0, 0.5, 1.0], np.float32)
    programs = []
    for p in (0.0, 1.0, 2.0):
        k = np.array(prog.genome["k"])
        k[:, 14] *= steps ** p  # x14 = scale_k(w, 1e-4)
        programs.append({**prog.genome, "k": k, "lr": prog.genome["lr"] * steps ** p})
    return Conformance([update_rule_case(f"{NAME}:adam", rule, population),
                        update_rule_case(f"{NAME}:program", prog, programs)],
                       LaunchCase("configs/pbt_smoke.yaml", (
                           "search.population=4", "search.generations=3",
                           "output.top_k=2")))


KIND = register(update_rule_kind(
    name=NAME,
    summary="population-based training: a schedule of an optimizer's hyperparameters or a "
            "program's constants, by exploit and explore during training",
    rule_config=PBTRuleConfig,
    search_config=PBTConfig,
    make_rule=make_rule,
    rule_from_name=rule_from_name,
    make_driver=PBTDriver,
    fingerprint=hashing.run_fingerprint,
    describe_function=hashing.describe_over_run,
    conformance=conformance,
    config_problems=config_problems,
    artifact_fields=artifact_fields,
    views=views,
    noun="update rule (a hyperparameter schedule)",
))
