"""Program search over PPO drift functions (``kind: program``, ``rule.signature: drift``): the
same evolution, cache and store as update rules, scored by PPO on an RL suite. Compiled before
generation 0 and never again; a child that breaks the Mirror-Learning constraints is mutated
again, never trained; candidates are stored as drift objectives (kind ``drift``, family
``program``), so inspect and replay treat them as every drift; configs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from lab import treeio
from lab.core.config import ConfigError, load_config
from lab.core.fitness import CLIP
from lab.kinds.drift import objectives as O
from lab.kinds.program.ir import Program
from lab.kinds.program.programs import genome_of, program_of
from lab.kinds.program.signatures import DRIFT

pytest.importorskip("gymnax")

SMALL = ["kind=program", "suite=rl-tiny", "rule.signature=drift", "rule.seed=ppo_clip",
         "rule.max_len=12", "seeds=1", "search.population=6", "search.children=4",
         "search.generations=3", "evaluator.devices=1", "output.top_k=2",
         "search.simplify=false"]


@pytest.mark.slow  # PPO with the drift interpreter compiles for ~15 s on 2 cores
def test_drift_program_search_compiles_once_and_stores_drift_candidates(store,
                                                                      program_generations):
    from lab.core.loop import launch
    sizes = program_generations["sizes"]
    cfg = load_config(None, SMALL)
    run_id = launch(cfg, store, name="drift-programs")
    assert store.get_run(run_id)["status"] == "done"
    assert len(sizes) == 3 and all(s == [1] * len(s) for s in sizes), sizes  # compiled once
    # every evaluated function passed the constraint check; the check found violators
    evaluated = {r[0] for r in store.conn.execute(
        "SELECT DISTINCT hash FROM evaluations WHERE first_run = ?", (run_id,))}
    reasons = program_generations["evolutions"][-1].reasons
    assert evaluated and all(reasons.get(h, "") == "" for h in evaluated)
    rows = store.best_members(run_id, k=10)
    assert {r["kind"] for r in rows} == {"drift"} and {r["name"] for r in rows} == {"program"}
    for r in rows:  # a stored genome is a drift program, scored as the drift family 'program'
        genome = treeio.tree_from_npz(r["genome"])
        p = program_of(genome, "p", DRIFT)
        assert isinstance(p, Program) and p.sig == DRIFT
        valid = O.check(O.programs(), {k: np.asarray(v)[None] for k, v in genome.items()})[0][0]
        # a child still violating after its retries joins at the worst fitness, never trained
        assert valid or r["search_fitness"] == CLIP
    import json
    lines = (store.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(ln)["inadmissible"] for ln in lines) > 0  # some children violated


@pytest.mark.slow  # a search, then PPO replays: in-process parts run in the test above
def test_inspect_and_replay_treat_a_drift_program_as_a_drift(cli, tmp_path):
    import json
    rc, _, err = cli("launch", "configs/drift_program_smoke.yaml", "--set", "suite=rl-tiny",
                     "--set", "search.generations=2", "--set", "search.population=4", "--set",
                     "search.children=2", "--name", "dp")
    assert rc == 0, err
    rc, out, err = cli("inspect", "dp:1", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["kind"] == "drift" and "def " in info["readable"]
    assert "return drift" in info["readable"]
    assert info["closest"]["name"] in ("ppo_clip", "dpo") and "surface" in info
    rc, out, err = cli("replay", "dp:1", "--suite", "rl-tiny", "--seeds", "2", "--baselines",
                       "ppo_clip", "--json")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert {r["rule"] for r in rows} == {"dp:1", "ppo_clip"}


def test_drift_program_configs_are_checked():
    cfg = load_config("configs/drift_program_smoke.yaml")
    assert cfg.kind == "program" and cfg.rule.signature == "drift" and cfg.suite == "rl-smoke"
    with pytest.raises(ConfigError, match=r"rule.seed: 'adamw' is no drift seed program "
                                          r"\(drift seeds: dpo, ppo_clip\)"):
        load_config(None, ["kind=program", "suite=rl-smoke", "rule.signature=drift"])
    with pytest.raises(ConfigError, match=r"suite: kind 'program' \(rl\) cannot train on suite "
                                          r"'smoke'"):
        load_config(None, ["kind=program", "suite=smoke", "rule.signature=drift",
                           "rule.seed=ppo_clip"])
    with pytest.raises(ConfigError, match=r"suite: kind 'program' cannot train on suite "
                                          r"'rl-smoke'"):
        load_config(None, ["kind=program", "suite=rl-smoke"])
    with pytest.raises(ConfigError, match=r"search.es.top: ES on constants is for update"):
        load_config(None, [*SMALL, "search.es.top=1"])
    with pytest.raises(ConfigError, match=r"search.lr_anchor: a drift program has no learning"):
        load_config(None, [*SMALL, "search.lr_anchor=true"])
    with pytest.raises(ConfigError, match=r"rule.max_len: the seed dpo has 26 statements"):
        load_config(None, [*SMALL, "rule.seed=dpo"])


def test_batched_drift_fingerprints_equal_one_by_one():
    from lab.kinds.program.programs import load_seed
    genomes = [genome_of(load_seed(n, "drift"), 32) for n in ("ppo_clip", "dpo", "ppo_clip")]
    batched = O.fingerprints(O.programs(), genomes)
    for g, (fp, h) in zip(genomes, batched, strict=True):
        fp1, h1 = O.fingerprint(O.programs(), g)
        assert h == h1 and np.array_equal(fp, fp1)
    assert batched[0][1] == batched[2][1] != batched[1][1]


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_inspect_finds_a_stored_lpo_network_computing_the_same_drift(store, tmp_path):
    """``lab inspect`` of a drift program names the stored candidates of its kind with the same
    fingerprint, whatever their representation (here an LPO network with one tanh unit)."""
    from lab.commands.inspection import inspect_target
    from lab.kinds.program.text import parse
    spec = O.LPOSpec(hidden=1, ppo_init=False)
    w0 = np.zeros((len(spec.features), 1), np.float32)
    w0[spec.features.index("(r-1)^2"), 0] = 0.75
    genome = {"w0": w0, "w1": np.asarray([0.5], np.float32)}
    fp, h = O.fingerprint(O.lpo(spec), genome)
    run = store.create_run("lpo", "drift", {}, "h", "v", "ctx", {})
    store.record_generation(run, 0, [{"hash": h, "kind": "drift", "name": spec.name,
                                      "genome": treeio.tree_to_npz(genome),
                                      "fingerprint": treeio.tree_to_npz(fp)}],
                            [], [{"hash": h, "fitness": 0.0}], {})
    path = tmp_path / "one_unit.prog"
    path.write_text("def one_unit(r, A, progress):\n    x0 = add_k(r, -1.0)\n"
                    "    x1 = square(x0)\n    x2 = scale_k(x1, 0.75)\n    x3 = tanh(x2)\n"
                    "    x4 = scale_k(x3, 0.5)\n    x5 = add_k(x4, -0.0001)\n"
                    "    zero = const_k(0.0)\n    drift = max(x5, zero)\n    return drift\n")
    assert parse(path.read_text()).sig == DRIFT
    doc = inspect_target(f"program:{path}", store)
    assert doc["kind"] == "drift" and doc["store"]["equals"] == [h]
    assert doc["store"]["closest"]["hash"] == h
