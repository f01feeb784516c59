"""End to end through the `lab` command, as a user runs it: launch the smoke config, then every
verb on the run it made; bad input exits 2 with one line naming the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lab(args, env, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "lab.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def strict_json(text: str):
    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    e = dict(os.environ)
    e.update({"LAB_STORE": str(base / "lab.db"), "JAX_PLATFORMS": "cpu",
              "JAX_NUM_CPU_DEVICES": "1", "LAB_JAX_CACHE": str(base / "jax-cache")})
    e.pop("XLA_FLAGS", None)
    e["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # compile fast; tiny runs
    return e


@pytest.fixture(scope="module")
def run(env):
    proc = lab(["launch", "configs/smoke.yaml", "--name", "e2e"], env)
    assert "gen 3/3" in proc.stderr
    rows = strict_json(lab(["runs", "--json"], env).stdout)
    (row,) = [r for r in rows if r["name"] == "e2e"]
    assert row["id"] in proc.stdout
    return row


def test_launch_records_run(run, env):
    assert run["status"] == "done" and run["generations"] == 3 and run["kind"] == "baseline"
    assert isinstance(run["best"], float)
    import sqlite3
    conn = sqlite3.connect(env["LAB_STORE"])
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("select count(*) from generations where run_id = ?",
                        (run["id"],)).fetchone()[0] == 3
    out = Path(env["LAB_STORE"]).parent / "runs" / run["id"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and (out / "config.yaml").exists()


def test_inspect_run_and_rank(run, env):
    doc = strict_json(lab(["inspect", run["id"], "--json"], env).stdout)
    assert len(doc["hash"]) == 32 and doc["run"]["id"] == run["id"]
    assert doc["best"][0]["fitness"] == pytest.approx(run["best"])
    assert Path(doc["plot"]).exists() and doc["cache_hit_rate"] == 0.0
    second = strict_json(lab(["inspect", f"{run['id']}:1", "--json"], env).stdout)
    assert second["rank"] == 1 and second["fitness"] >= doc["best"][0]["fitness"]
    by_hash = strict_json(lab(["inspect", f"hash:{doc['hash'][:10]}", "--json"], env).stdout)
    assert by_hash["hash"] == doc["hash"]


def test_inspect_baselines(env):
    adam = strict_json(lab(["inspect", "baseline:adam", "--json"], env).stdout)
    lr = strict_json(lab(["inspect", "baseline:adam(learning_rate=0.01)", "--json"], env).stdout)
    b1 = strict_json(lab(["inspect", "baseline:adam(b1=0.5)", "--json"], env).stdout)
    assert adam["hash"] == lr["hash"] != b1["hash"]
    assert "adam" in adam["equals"] and "adam" not in b1["equals"]


def test_replay_and_export_round_trip(run, env, tmp_path):
    doc = strict_json(lab(["replay", run["id"], "--suite", "smoke", "--seeds", "2", "--json"],
                          env).stdout)
    import tasks
    names = {t.name for t in tasks.get_suite("smoke")}
    assert {r["task"] for r in doc["rows"]} == names
    assert {r["rule"] for r in doc["rows"]} >= {"tuned adam", "tuned adamw", "tuned lion"}
    assert all(len(r["scores"]) == 2 and r["ci95"][0] <= r["score"] <= r["ci95"][1]
               for r in doc["rows"])
    assert Path(doc["plot"]).exists()
    lab(["export", run["id"], "--name", "e2e-best", "--out", str(tmp_path), "--suite", "smoke"],
        env)
    folder = tmp_path / "e2e-best"
    rule = json.loads((folder / "rule.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert rule["kind"] == "baseline" and metrics["run"]["id"] == run["id"]
    assert (folder / "README.md").read_text().startswith("# e2e-best")
    again = strict_json(lab(["inspect", str(folder), "--json"], env).stdout)
    best = strict_json(lab(["inspect", f"{run['id']}:0", "--json"], env).stdout)
    assert again["hash"] == best["hash"] == rule["hash"]


def test_relaunch_hits_cache(run, env):
    lab(["launch", "configs/smoke.yaml", "--name", "e2e-again"], env)
    import sqlite3
    conn = sqlite3.connect(env["LAB_STORE"])
    rid = conn.execute("select id from runs where name = 'e2e-again'").fetchone()[0]
    rates = [r[0] for r in conn.execute(
        "select hit_rate from generations where run_id = ? order by idx", (rid,))]
    assert rates == [1.0, 1.0, 1.0]
    best = conn.execute("select best from runs where id = ?", (rid,)).fetchone()[0]
    assert best == pytest.approx(run["best"], rel=1e-12)


def test_tasks_json(env):
    rows = strict_json(lab(["tasks", "--json"], env).stdout)
    assert {"name", "family", "suites", "params", "steps"} <= set(rows[0])
    assert len({r["family"] for r in rows}) >= 6
    smoke = strict_json(lab(["tasks", "--suite", "smoke", "--json"], env).stdout)
    assert smoke and all("smoke" in r["suites"] for r in smoke)


BAD = [
    ("search:\n  strategy: Open_ES\n  no_such_key: 3\n", ["no_such_key"]),
    ("search:\n  strategy: Open_Es\n", ["Open_ES", "search.strategy"]),
    ("suite: trian\n", ["train", "suite"]),
    ("seeds: two\n", ["seeds"]),
    ("kind: baseline\nrule: {name: adma}\n", ["adam"]),
]


@pytest.mark.parametrize("text,expect", BAD)
def test_bad_config_exits_2(env, tmp_path, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = lab(["launch", str(path)], env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "bad.yaml" in proc.stderr
    for word in expect:
        assert word in proc.stderr


@pytest.mark.parametrize("args,expect", [
    (["launch", "configs/smoke.yaml", "--set", "search.population"], "search.population"),
    (["launch", "configs/smoke.yaml", "--set", "search.popsize=4"], "population"),
    (["launch", "no/such/file.yaml"], "file.yaml"),
    (["inspect", "no-such-run"], "no-such-run"),
    (["inspect", "baseline:adamm"], "adam"),
    (["inspect", "baseline:adam(b7=0.5)"], "b7"),
    (["replay", "baseline:adam", "--suite", "heldot"], "heldout"),
    (["bench", "populaton"], "population"),
])
def test_bad_input_exits_2(env, args, expect):
    proc = lab(args, env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and expect in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3


@pytest.mark.slow
def test_sharded_launch_matches_one_device(run, env, tmp_path):
    """The same search on 4 fake devices (a fresh store, so nothing comes from the cache)."""
    e = {**env, "JAX_NUM_CPU_DEVICES": "4", "LAB_STORE": str(tmp_path / "lab.db")}
    lab(["launch", "configs/smoke.yaml", "--name", "e2e-sharded"], e)
    (row,) = strict_json(lab(["runs", "--json"], e).stdout)
    assert row["best"] == pytest.approx(run["best"], rel=1e-5)
