"""Kind ``program``: symbolic update rules (Lion-style program search).

A program is straight-line SSA over per-parameter tensors (``ir``: inputs ``g, w, lr, t``, two
state slots, protected ops from ``ops``), searched by batched regularized evolution with a
functional-equivalence cache (``evolution``, ``search``) and finished by ES on the constants of the
best structures, a knock-out ablation and a funnel to longer runs (``finalize``). Two backends are
held equal by the tests: the compile-once interpreter vmapped over many programs
(``interpreted``, the search's) and the compiled path (``compiled``, replay and export). Targets
``program:PATH`` read a program text file; seeds (``seeds/*.prog``, optax's optimizers as programs
plus PowerSign and AddSign) are its known rules.

One engine for every symbolic object (``signatures``): ``rule.signature: update`` (above),
``drift`` (PPO objectives ``D(r, A, progress)`` on the RL suites, stored as kind ``drift``) and
``schedule`` (learning-rate schedules of Adam, family ``schedule(adam)``) and ``joint`` (an
update rule with its schedule, family ``joint``: programs that also read the horizon ``T``);
``spaces`` gives the search what differs between them.

References: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675).
"""

from __future__ import annotations

import numpy as np

from lab.console import log
from lab.core import hashing
from lab.core.conformance import update_rule_case
from lab.core.kind import Conformance, LaunchCase, TextForm, register
from lab.core.optimizers import BASELINES
from lab.core.replay import (
    TUNE_MULTIPLIERS,
    replay,
    replay_update_rule,
    suite_statistics,
    tune_over,
)
from lab.core.rule_kind import update_rule_kind
from lab.core.target import Target
from lab.kinds.program import schedules
from lab.kinds.program.compiled import structure_rule
from lab.kinds.program.config import EvolutionConfig, ProgramRuleConfig
from lab.kinds.program.ir import MAX_LEN, simplify
from lab.kinds.program.programs import (
    KIND,
    from_source,
    genome_of,
    joint_rule,
    load_seed,
    program_of,
    program_rule,
    read_program,
    seed_names,
)
from lab.kinds.program.schedules import schedule_rule
from lab.kinds.program.search import ProgramDriver
from lab.kinds.program.signatures import JOINT, SCHEDULE
from lab.kinds.program.spaces import space_of
from lab.kinds.program.text import to_source


def make_rule(cfg):
    """The family a config's programs are scored as: the interpreter of its signature."""
    return space_of(cfg).rule


def make_scorer(cfg, rule, store=None, mesh=None):
    """Update rules: the supervised scorer; drift programs: PPO on the RL suite."""
    return space_of(cfg).scorer(cfg, rule, store, mesh)


def is_schedule(rule) -> bool:
    return rule.name == schedule_rule().name


def is_joint(rule) -> bool:
    return rule.name == JOINT.name


def fingerprint(rule, genome=None, jit: bool = True):
    """Update programs: the update-rule probe; schedules of Adam: the schedule's own
    fingerprint (its curve on the grid, the one optax's schedules share); joint programs: the
    update-rule probe over a whole run (``hashing.run_fingerprint``)."""
    if is_schedule(rule):
        return schedules.fingerprints([rule.genome if genome is None else genome])[0]
    if is_joint(rule):
        return hashing.run_fingerprint(rule, genome, jit)
    return hashing.fingerprint(rule, genome, jit)


def describe_function(rule, genome=None) -> dict:
    """A schedule of Adam is named by its curve (``= optax.cosine_decay_schedule``, ``REX``)
    and, as an update rule, by the update rules it equals (the constant schedule ``= adam``);
    its hash is the curve's, the key its search stored it under. A joint program is named by the
    update rules it equals over a whole run (``hashing.describe_over_run``)."""
    if is_joint(rule):
        return hashing.describe_over_run(rule, genome)
    if not is_schedule(rule):
        return hashing.describe_function(rule, genome)
    g = rule.genome if genome is None else genome
    fp, h = fingerprint(rule, g)
    named = schedules.describe(fp)
    update = hashing.describe_function(rule, g)
    return {"hash": h, "fingerprint": fp, "equals": named["equals"] + update["equals"],
            "closest": named["closest"], "distances": named["distances"],
            "as_update_rule": {"hash": update["hash"], "closest": update["closest"]}}


def config_domain(cfg) -> str:
    return "rl" if cfg.rule.signature == "drift" else "supervised"  # schedules: of Adam


def config_problems(cfg) -> list[tuple[str, str]]:
    """What a drift or schedule program search cannot do (yet): ES on constants (the compiled
    path of update rules, joint ones included); a drift has no learning rate to anchor."""
    out = []
    if cfg.rule.signature not in ("update", JOINT.name) and cfg.search.es.top:
        out.append(("search.es.top", f"ES on constants is for update programs; set 0 for a "
                                     f"{cfg.rule.signature} program search"))
    if cfg.rule.signature == "drift" and cfg.search.lr_anchor:
        out.append(("search.lr_anchor", "a drift program has no learning rate to anchor on "
                                        "tuned Adam's; set false"))
    return out


def rule_from_name(name: str):
    if name == KIND:
        return program_rule()
    if name == schedule_rule().name:
        return schedule_rule()
    if name == JOINT.name:
        return joint_rule()
    raise ValueError(f"unknown program family {name!r} (expected {KIND!r}, "
                     f"{schedule_rule().name!r} or {JOINT.name!r})")


def resolve(rest: str) -> Target:
    """``program:PATH``: an update rule, a schedule (of Adam), a joint program (an update rule
    with its schedule) or a drift (a PPO objective, kind ``drift``), by the signature its header
    declares."""
    p = read_program(rest.strip(), None)
    length = max(len(p) + 1, MAX_LEN)
    if p.sig.name == "schedule":
        rule = schedule_rule()
    elif p.sig.name == "drift":
        from lab.kinds.drift.objectives import programs
        rule = programs()
    elif p.sig == JOINT:
        rule = joint_rule()
    else:
        rule = program_rule()
    return Target(f"{KIND}:{rest}", rule, genome_of(p, length), 1.0, f"{KIND}:{p.name}")


def compiled_form(target: Target) -> tuple:
    """(rule, genome) to replay: an update program through its compiled path (live statements
    traced straight-line, as fast as a hand-written optax optimizer); a schedule as it is (one
    scalar program per step)."""
    if is_joint(target.rule):
        rule = structure_rule(program_of(target.genome, "joint", JOINT))
        return rule, rule.genome
    if target.rule.name != KIND:
        return target.rule, target.genome
    rule = structure_rule(program_of(target.genome))
    return rule, rule.genome


def tune_lr(task, rule, genome, lr: float, steps: int, keys, mesh) -> tuple[dict, float]:
    """``--tune-lr``: the program at every multiplier of its rate (its ``lr`` leaf)."""
    n = len(TUNE_MULTIPLIERS)
    pop = {**{k: np.repeat(np.asarray(v)[None], n, 0) for k, v in genome.items()},
           "lr": np.asarray(TUNE_MULTIPLIERS, np.float32)}
    return tune_over(task, rule, pop, lr, steps, keys, mesh)


def replay_program(target: Target, req) -> dict:
    return replay_update_rule(target, req, compiled_form(target), tune_lr)


# Seed schedules replayed beside a discovered schedule, their learning rate tuned the same way
# (the constant schedule is Adam, the tuned baseline itself), per horizon scale: at 4x the
# tasks' horizons (four times the cost) cosine decay, the seed the schedule search starts from
SCHEDULE_BASELINES = {1: ("cosine", "rex", "warmup_cosine"), 4: ("cosine",)}


# the baselines of an update program's replay at 4x the horizons, tuned at that budget: AdamW
# (the program search's seed) and schedule-free AdamW (the strongest at 4x in the held-out
# tables); a joint program reads the horizon and is compared with tuned Adam there
LONGER = 4
LONGER_BASELINES = ("adamw", "schedule_free_adamw")


def export(target: Target, store, suite: str, seeds: int) -> dict:
    """Held-out scores at the program's own learning rate and, like the baselines', with its
    learning rate tuned per task, at 1x and ``LONGER`` times the horizons (``heldout``,
    ``heldout_4x``: does what the search's short runs selected hold on longer ones?). An update
    program at 4x beside ``LONGER_BASELINES``, a joint program beside tuned Adam, each tuned at
    that budget. A schedule's at 1x and 4x, beside tuned Adam and seed schedules
    (``SCHEDULE_BASELINES``), each with its learning rate tuned per task on the same
    multipliers."""
    if target.rule.name == KIND or is_joint(target.rule):
        out = {"heldout": replay(target, suite, seeds, store=store, tuner=tune_lr,
                                 form=compiled_form(target))}
        log(f"export {target.label}: replaying on {suite} at {LONGER}x the horizons")
        longer = ("adam",) if is_joint(target.rule) else LONGER_BASELINES
        out[f"heldout_{LONGER}x"] = replay(target, suite, seeds, longer, store, tuner=tune_lr,
                                           horizon_scale=LONGER, form=compiled_form(target))
        return out
    out = {}
    for scale, names in SCHEDULE_BASELINES.items():
        doc = replay(target, suite, seeds, ("adam",), store, tuner=tune_lr,
                     horizon_scale=scale)
        for name in names:
            p = load_seed(name, SCHEDULE.name)
            seed = Target(f"{KIND}:seeds/schedule/{name}.prog", target.rule,
                          genome_of(p, np.shape(target.genome["op"])[0]), target.lr,
                          f"{name} schedule")
            doc["rows"] += replay(seed, suite, seeds, (), store, tuner=tune_lr,
                                  horizon_scale=scale)["rows"]
        summary: dict[str, list[float]] = {}
        for r in doc["rows"]:
            summary.setdefault(r["rule"], []).append(r["score"])
        doc["summary"] = {k: float(np.mean(v)) for k, v in summary.items()}
        doc.update(suite_statistics(doc["rows"], [doc["label"], f"{doc['label']} (lr tuned)"],
                                    [k for k in summary if k.startswith("tuned ")
                                     or k.endswith(" schedule (lr tuned)")]))
        out["heldout" if scale == 1 else f"heldout_{scale}x"] = doc
    return out


def views(target: Target, store, info: dict) -> dict:
    """``simplified`` (dead code out, constants folded) and the statement counts; for a schedule
    also ``plot``, its curve beside optax's schedules and REX."""
    schedule = is_schedule(target.rule)
    sig = SCHEDULE if schedule else JOINT if is_joint(target.rule) else None
    p = program_of(target.genome, sig.name, sig) if sig else program_of(target.genome)
    q = simplify(p)
    out = {"simplified": to_source(q), "statements": len(p), "live_statements": len(q)}
    if schedule:
        from lab.core.target import write_plot
        view = schedules.curve(target.genome)
        out["plot"] = write_plot(target, store, info["hash"], "schedule",
                                 lambda path: schedules.draw(view, path, target.label))
    return out


def _known():
    """Seed programs that are no optax optimizer (PowerSign, AddSign): the others equal their
    baselines by construction (tests hold them to it), so they add no new name."""
    return [(name, program_rule()._replace(genome=genome_of(load_seed(name))))
            for name in seed_names() if name not in BASELINES]


hashing.register_known(_known)


def conformance() -> Conformance:
    seeds = [genome_of(load_seed(n)) for n in ("momentum", "rmsprop", "adam")]
    lion = structure_rule(load_seed("lion"))
    k = np.asarray(lion.genome["k"])
    cases = [update_rule_case(f"{KIND}:interpreted", program_rule(), seeds),
             update_rule_case(f"{KIND}:compiled(lion)", lion,
                              [{"k": k * s} for s in (0.9, 1.0, 1.1)])]
    return Conformance(cases, LaunchCase("configs/program_smoke.yaml", (
        "search.population=8", "search.children=4", "search.generations=3",
        "search.lr_grid=[1.0, 3.0]", "search.simplify=false", "output.top_k=2")))


KIND_RECORD = register(update_rule_kind(
    name=KIND,
    summary="symbolic update rules: programs over protected ops, by regularized evolution",
    rule_config=ProgramRuleConfig,
    search_config=EvolutionConfig,
    make_rule=make_rule,
    rule_from_name=rule_from_name,
    make_scorer=make_scorer,
    make_driver=ProgramDriver,
    replay=replay_program,
    export=export,
    conformance=conformance,
    views=views,
    text=TextForm(lambda rule, genome: rule.describe(genome), from_source),
    prefix=KIND,
    resolve=resolve,
    config_domain=config_domain,
    config_problems=config_problems,
    fingerprint=fingerprint,
    describe_function=describe_function,
))
