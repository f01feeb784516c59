"""Programs through the `lab` command, as a user runs them: seeds identified by behaviour, bad
program text refused with its line, the smoke search, its inspect document, replay and export."""

from __future__ import annotations

import json
import shutil

import pytest
from test_cli import ROOT, lab, strict_json

SEEDS = ROOT / "lab" / "rules" / "program" / "seeds"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import os
    base = tmp_path_factory.mktemp("cli-programs")
    e = dict(os.environ)
    e.update({"LAB_STORE": str(base / "lab.db"), "JAX_PLATFORMS": "cpu",
              "JAX_NUM_CPU_DEVICES": "1", "LAB_JAX_CACHE": str(base / "jax-cache"),
              "XLA_FLAGS": "--xla_backend_optimization_level=0"})
    return e


@pytest.fixture(scope="module")
def run(env):
    proc = lab(["launch", "configs/program_smoke.yaml", "--name", "prog-e2e"], env)
    assert "gen 4/4" in proc.stderr
    (row,) = [r for r in strict_json(lab(["runs", "--json"], env).stdout)
              if r["name"] == "prog-e2e"]
    assert row["kind"] == "program" and row["status"] == "done"
    return row


def test_seed_copies_are_identified_by_behaviour(env, tmp_path):
    shutil.copy(SEEDS / "lion.prog", tmp_path / "cand_a.prog")
    shutil.copy(SEEDS / "adam.prog", tmp_path / "cand_b.prog")
    a = strict_json(lab(["inspect", f"program:{tmp_path / 'cand_a.prog'}", "--json"], env).stdout)
    b = strict_json(lab(["inspect", f"program:{tmp_path / 'cand_b.prog'}", "--json"], env).stdout)
    assert "lion" in a["equals"] and "adam" not in a["equals"]
    assert "adam" in b["equals"] and a["closest"]["name"] == "lion"
    assert a["source"].startswith("def program(g, w, lr, t, m, v):")


@pytest.mark.parametrize("text, expect", [
    ("this is ( not a program\n", "line 1, column 1"),
    ("def p(g, w, lr, t, m, v):\n    x = sqrt(g)\n    return x, m, v\n",
     "line 2, column 9: unknown op 'sqrt'"),
    ("def p(g, w, lr, t, m, v):\n    x = add(g, q)\n    return x, m, v\n",
     "line 2, column 16: 'q' is not defined"),
])
def test_malformed_program_exits_2_naming_the_line(env, tmp_path, text, expect):
    bad = tmp_path / "bad.prog"
    bad.write_text(text)
    proc = lab(["inspect", f"program:{bad}", "--json"], env, check=False)
    assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_inspect_run_shows_parseable_sources_and_hit_rate(run, env, tmp_path):
    doc = strict_json(lab(["inspect", run["id"], "--json"], env).stdout)
    assert isinstance(doc["cache_hit_rate"], float) and 0 <= doc["cache_hit_rate"] <= 1
    best = doc["best"][0]
    assert {"source", "simplified", "hash", "equals", "closest", "lineage", "scores"} <= set(best)
    assert best["lineage"], "a program found by the search has parents"
    src = tmp_path / "best.prog"
    src.write_text(best["source"])
    again = strict_json(lab(["inspect", f"program:{src}", "--json"], env).stdout)
    assert again["hash"] == best["hash"]
    assert "finalists" in doc["after_search"]


def test_replay_rank_and_export_program_artifact(run, env, tmp_path):
    doc = strict_json(lab(["replay", f"{run['id']}:1", "--suite", "smoke", "--seeds", "2",
                           "--json"], env).stdout)
    assert {r["rule"] for r in doc["rows"]} >= {"tuned adam", "tuned adamw", "tuned lion"}
    lab(["export", run["id"], "--name", "prog-best", "--out", str(tmp_path), "--suite", "smoke",
         "--seeds", "2"], env)
    folder = tmp_path / "prog-best"
    rule = json.loads((folder / "rule.json").read_text())
    assert rule["kind"] == "program" and rule["source"].startswith("def ")
    metrics = json.loads((folder / "metrics.json").read_text())
    rules = {r["rule"] for r in metrics["heldout"]["rows"]}
    assert any(r.endswith("(lr tuned)") for r in rules)  # like for like with tuned baselines
    assert 0 <= metrics["search"]["cache_hit_rate"] <= 1
    assert metrics["search"]["after_search"]["finalists"]
    assert "```\ndef " in (folder / "README.md").read_text()
    again = strict_json(lab(["inspect", str(folder), "--json"], env).stdout)
    assert again["hash"] == rule["hash"] and again["source"] == rule["source"]
    replayed = strict_json(lab(["replay", str(folder), "--suite", "smoke", "--seeds", "2",
                                "--json"], env).stdout)
    assert replayed["rows"][0]["rule"] == "prog-best"


def test_artifact_source_is_never_executed(env, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    doc = {"format": 1, "kind": "program", "name": "program", "hash": "0" * 32,
           "fingerprint": [], "lr": 1.0, "source": "__import__('os').system('echo hi')"}
    (folder / "rule.json").write_text(json.dumps(doc))
    proc = lab(["inspect", str(folder), "--json"], env, check=False)
    assert proc.returncode == 2 and "key 'source'" in proc.stderr and "line 1" in proc.stderr


def test_program_search_config_errors_exit_2(env, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: program\nrule:\n  seed: adamx\nsearch:\n  sigma: 0.1\n")
    proc = lab(["launch", str(cfg)], env, check=False)
    assert proc.returncode == 2 and "search.sigma: unknown key" in proc.stderr


def test_tune_lr_is_for_programs(env):
    proc = lab(["replay", "baseline:adam", "--suite", "smoke", "--seeds", "1", "--tune-lr"], env,
               check=False)
    assert proc.returncode == 2 and "--tune-lr" in proc.stderr
