"""One conformance suite for every registered kind (the lab's four and the example plugin).

Rules (each kind's ``conformance().rules``): the kind's pure function of a genome is the same
under jit and eagerly, vmapped over a population and looped, through the kind's export form;
its outputs are float32 and finite, ``jax.debug_nans`` stays quiet, and its fingerprint does not
depend on jit.

End to end (each kind's ``conformance().launch``, on the tiny suite of its domain): launch
(nothing compiles after the first generation), a run SIGKILLed in the middle of a generation and
resumed ends exactly as the uninterrupted one, then inspect, replay, export, and the artifact
loads back and inspects to the same hash.
"""

from __future__ import annotations

import functools
import json
import signal
import sqlite3
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from conftest import ROOT, lab_env, spawn_lab, strict_json

from lab.commands.artifacts import load_artifact
from lab.core.config import load_config
from lab.core.evaluate import compile_count
from lab.core.kind import get, registry
from lab.core.loop import launch
from lab.core.store import Store

LAB_KINDS = {"baseline", "program", "learned", "drift"}
KINDS = sorted(registry())


def test_registry_holds_the_lab_kinds_and_the_plugin():
    assert LAB_KINDS | {"random_search"} <= set(KINDS)
    plugin = get("random_search")
    assert plugin.make_rule.__module__ == "lab_random_search"  # found through its entry point


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_has_conformance_cases(name):
    """A kind without a rule case or a launch case fails here (so every kind is tested)."""
    conf = get(name).conformance()
    assert conf.rules, f"kind {name!r} has no rule case"
    for case in conf.rules:
        assert len(case.population) == 3, case.id
        assert case.rule.kind == name, case.id
    config = Path(conf.launch.config)
    assert (config if config.is_absolute() else ROOT / config).is_file(), conf.launch


# the baseline kind's optax aliases share one code path: three keep its cases in the default
# set (plain, moments, factored state); the other eight are slow tests (make test's time; CI
# runs them), and test_rules holds every alias to optax itself in the default set
DEFAULT_BASELINES = frozenset({"baseline:sgd", "baseline:adam", "baseline:adafactor"})


def rule_cases(slow: frozenset = frozenset()):
    """Every kind's rule cases; those named in ``slow``, and the baselines outside
    ``DEFAULT_BASELINES``, are slow tests (CI runs them)."""
    def is_slow(case):
        return case.id in slow or (case.id.startswith("baseline:")
                                    and case.id not in DEFAULT_BASELINES)
    return [pytest.param(get(n), c, id=c.id, marks=[pytest.mark.slow] if is_slow(c) else [])
            for n in KINDS for c in get(n).conformance().rules]


# the interpreter's eager fingerprint runs its statement loop op by op (~20 s on 2 cores; pbt's
# program trajectory runs it per segment, ~70 s); its jit and eager paths are also held equal
# by test_program_backends. The drift program's and the learned MLP's (7 s each) are slow for
# make test's time; the baselines' and the compiled program's keep the check in the default set
SLOW_FINGERPRINTS = frozenset({"program:interpreted", "pbt:program", "drift:program",
                               "learned:mlp"})


_JITTED: dict = {}


def jitted(case):
    """``apply`` of a case under jit, built once per case: the checks share its compilation."""
    if case.id not in _JITTED:
        _JITTED[case.id] = jax.jit(functools.partial(case.apply, case.rule))
    return _JITTED[case.id]


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("kind,case", rule_cases())
def test_rule_under_jit_equals_eager(kind, case):
    genome = case.population[1]
    eager = case.apply(case.rule, genome)
    _close(jitted(case)(genome), eager)


@pytest.mark.parametrize("kind,case", rule_cases())
def test_rule_vmapped_over_genomes_equals_a_loop(kind, case):
    population = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                              *case.population)
    batched = jax.jit(jax.vmap(lambda g: case.apply(case.rule, g)))(population)
    # against one jitted call per genome (the case's compilation, shared with the other checks;
    # jit equals eager is the check above): eager interpreters run op by op, seconds a genome
    for i, genome in enumerate(case.population):
        _close(jax.tree.map(lambda x, i=i: x[i], batched), jitted(case)(genome))


@pytest.mark.parametrize("kind,case", rule_cases())
def test_rule_exported_form_equals_the_rule(kind, case):
    for genome in case.population:  # the export may go through the host (files, bytes)
        _close(case.exported(case.rule, genome), jitted(case)(genome))


@pytest.mark.parametrize("kind,case", rule_cases())
def test_rule_outputs_are_float32_and_finite_without_nans_inside(kind, case):
    with jax.debug_nans(True):
        out = jax.jit(functools.partial(case.apply, case.rule))(case.population[0])
    for leaf in jax.tree.leaves(out):
        assert leaf.dtype == jnp.float32, (case.id, leaf.dtype)
        assert np.all(np.isfinite(np.asarray(leaf))), case.id


@pytest.mark.parametrize("kind,case", rule_cases(SLOW_FINGERPRINTS))
def test_rule_fingerprint_is_stable_under_jit(kind, case):
    genome = case.population[0]
    fp, h = kind.fingerprint(case.rule, genome, jit=True)
    fp_eager, h_eager = kind.fingerprint(case.rule, genome, jit=False)
    assert h == h_eager and np.array_equal(fp, fp_eager, equal_nan=True)
    assert kind.describe_function(case.rule, genome)["hash"] == h


# ---- end to end ------------------------------------------------------------------------------

def _runs(db: Path, name: str) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        keys = ("id", "status", "generations", "best", "best_hash")
        (row,) = conn.execute(f"SELECT {', '.join(keys)} FROM runs WHERE name = ?", (name,))
        history = conn.execute("SELECT idx, best, mean FROM generations WHERE run_id = ? "
                               "ORDER BY idx", (row[0],)).fetchall()
    finally:
        conn.close()
    return {**dict(zip(keys, row, strict=True)), "history": history}


@pytest.fixture
def cheap_views(monkeypatch):
    """A learned rule's behaviour plot trains a small task, not digits_mlp (its views are
    tested in test_learned_views)."""
    import lab.kinds.learned.views
    monkeypatch.setattr(lab.kinds.learned.views, "BEHAVIOUR_TASK", "digits_mlp_tiny")


# the drift kind's case runs whole PPO runs (~45 s on 2 cores), the learned kind's meta-trains
# (~30 s), the program kind's searches, funnels and exports (~20 s), the pbt and baseline kinds'
# tune references and replay (~20 s): slow tests (CI runs them); their searches are also under
# test_drift, test_resume, test_learned_search, test_pbt and test_cli_programs, and the example
# plugin's case keeps the whole cycle in the default run
SLOW_LAUNCHES = {"baseline", "drift", "learned", "pbt", "program"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LAUNCHES
                                  else n for n in KINDS])
def test_launch_kill_resume_inspect_replay_export(name, tmp_path, cli, cheap_views):
    kind = get(name)
    case = kind.conformance().launch
    config = Path(case.config) if Path(case.config).is_absolute() else ROOT / case.config
    suite = tiny.suite_of(kind.domain)
    sets = [*case.overrides, f"suite={suite}", "seeds=1", "evaluator.devices=1",
            "output.checkpoint_every=1", "output.plots=false"]
    cfg = load_config(config, sets)
    total = cfg.search.generations
    assert total >= 3, "the launch case needs 3 generations: one to kill in, one after"

    # launch in this process: nothing compiles after the first generation
    compiles = []
    with Store(cli.store) as store:
        run_id = launch(cfg, store, name="straight",
                        on_generation=lambda g: compiles.append(compile_count()))
    assert len(compiles) == total
    assert compiles[-1] == compiles[0], f"generations 2..{total} compiled: {compiles}"
    straight = _runs(Path(cli.store), "straight")
    assert straight["status"] == "done" and straight["generations"] == total

    # the same run in a subprocess, SIGKILLed in generation 1 (scored and checkpointed, not
    # committed), then resumed from what it left: the checkpoint of generation 0
    env = lab_env()
    db = tmp_path / "cut" / "lab.db"
    args = ["launch", str(config), *[a for s in sets for a in ("--set", s)],
            "--name", "cut", "--store", str(db)]
    log = tmp_path / "cut.log"
    proc = spawn_lab(args, {**env, tiny.KILL_AT: "1"}, log)
    assert proc.wait(timeout=600) == -signal.SIGKILL, log.read_text()
    cut = _runs(db, "cut")
    assert cut["status"] == "running" and cut["generations"] == 1, cut
    with Store(db) as other:  # resumed here: what the killed process left is all it has
        assert launch(None, other, resume=cut["id"]) == cut["id"]
    assert (db.parent / "runs" / cut["id"] / "checkpoints" / "0").is_dir()
    cut = _runs(db, "cut")
    assert cut["status"] == "done"
    assert cut["history"] == straight["history"]
    assert (cut["best"], cut["best_hash"]) == (straight["best"], straight["best_hash"])

    # inspect the run, replay its best on the tiny suite, export it, load the artifact back
    rc, out, err = cli("inspect", "straight", "--top", "1", "--json")
    assert rc == 0, err
    doc = strict_json(out)
    assert doc["run"]["id"] == run_id and doc["best"][0]["kind"] == name
    assert doc["hash"] == doc["best"][0]["hash"]
    # one seed, as the run's (its references' shapes are compiled already), as the export's
    rc, out, err = cli("replay", "straight:0", "--suite", suite, "--seeds", "1", "--json")
    assert rc == 0, err
    replay = strict_json(out)
    assert replay["suite"] == suite and replay["rows"]
    assert {r["rule"] for r in replay["rows"]} >= {"straight:0"}
    art = tmp_path / "discovered"
    rc, out, err = cli("export", "straight", "--name", "best", "--out", str(art), "--suite",
                       suite, "--seeds", "1")
    assert rc == 0, err
    rule = json.loads((art / "best" / "rule.json").read_text())
    assert rule["kind"] == name and rule["hash"] == doc["hash"]
    metrics = json.loads((art / "best" / "metrics.json").read_text())
    assert metrics["run"]["id"] == run_id and metrics["heldout"]["suite"] == suite
    target = load_artifact(art / "best")
    assert target.rule.kind == name and target.rule.name == rule["name"]
    assert target.trained_on == metrics["run"]["suite"]  # an RL export replays there too
    rc, out, err = cli("inspect", str(art / "best"), "--json")
    assert rc == 0, err
    assert strict_json(out)["hash"] == rule["hash"]
