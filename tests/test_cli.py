"""The `lab` command as a user runs it: a baseline run on the tiny suite, then the verbs on it
(runs, inspect by id, rank and hash, a relaunch served by the cache, replay intervals, kinds,
tasks); bad input exits 2 with one line naming the problem, never a traceback. Each kind's whole
flow (launch, kill, resume, inspect, replay, export) is in ``test_kinds``."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path

import pytest
from conftest import lab_env, run_lab, strict_json

from lab.cli import main

# make test (``--dist loadfile``) runs the whole module on one worker: its module fixtures (a
# launched run) are made once


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``lab(*args) -> (exit code, stdout, stderr)`` in this process, on a module store."""
    db = str(tmp_path_factory.mktemp("cli") / "lab.db")

    def run(*args: str):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([*args, "--store", db] if args[0] != "bench" else list(args))
        return rc, out.getvalue(), err.getvalue()
    run.store = db
    return run


SMALL = ["--set", "suite=tiny", "--set", "search.population=4", "--set", "search.generations=3",
         "--set", "seeds=2", "--set", "evaluator.devices=1"]


@pytest.fixture(scope="module")
def run(lab):
    rc, out, err = lab("launch", "configs/smoke.yaml", "--name", "e2e", *SMALL)
    assert rc == 0, err
    assert "gen 3/3" in err
    rc, out, _ = lab("runs", "--json")
    (row,) = [r for r in strict_json(out) if r["name"] == "e2e"]
    return row


def test_launch_records_run(run, lab):
    assert run["status"] == "done" and run["generations"] == 3 and run["kind"] == "baseline"
    assert isinstance(run["best"], float) and run["suite"] == "tiny"
    conn = sqlite3.connect(lab.store)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("select count(*) from generations where run_id = ?",
                        (run["id"],)).fetchone()[0] == 3
    out = Path(lab.store).parent / "runs" / run["id"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "config.yaml").exists() and (out / "fitness.png").exists()


def test_inspect_run_rank_and_hash(run, lab):
    doc = strict_json(lab("inspect", run["id"], "--json")[1])
    assert len(doc["hash"]) == 32 and doc["run"]["id"] == run["id"]
    assert doc["best"][0]["fitness"] == pytest.approx(run["best"])
    assert Path(doc["plot"]).exists() and doc["cache_hit_rate"] == 0.0
    second = strict_json(lab("inspect", f"{run['id']}:1", "--json")[1])
    assert second["rank"] == 1 and second["fitness"] >= doc["best"][0]["fitness"]
    by_hash = strict_json(lab("inspect", f"hash:{doc['hash'][:10]}", "--json")[1])
    assert by_hash["hash"] == doc["hash"]
    rc, out, _ = lab("inspect", run["id"])  # the human form
    assert rc == 0 and run["id"] in out


def test_relaunch_hits_cache(run, lab):
    rc, _, err = lab("launch", "configs/smoke.yaml", "--name", "e2e-again", *SMALL)
    assert rc == 0, err
    conn = sqlite3.connect(lab.store)
    rid = conn.execute("select id from runs where name = 'e2e-again'").fetchone()[0]
    rates = [r[0] for r in conn.execute(
        "select hit_rate from generations where run_id = ? order by idx", (rid,))]
    assert rates == [1.0, 1.0, 1.0]
    best = conn.execute("select best from runs where id = ?", (rid,)).fetchone()[0]
    assert best == pytest.approx(run["best"], rel=1e-12)


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_replay_rows_and_intervals(run, lab):
    doc = strict_json(lab("replay", run["id"], "--suite", "tiny", "--seeds", "3", "--json")[1])
    assert {r["task"] for r in doc["rows"]} == {"tiny_quadratic"}
    # the default baselines: LAMB and schedule-free AdamW beside the common three
    assert {r["rule"] for r in doc["rows"]} == {"e2e:0", "tuned adam", "tuned adamw",
                                                 "tuned lion", "tuned lamb",
                                                 "tuned schedule_free_adamw"}
    assert all(len(r["scores"]) == 3 and r["ci95"][0] <= r["score"] <= r["ci95"][1]
               for r in doc["rows"])
    assert Path(doc["plot"]).exists()


def test_inspect_baselines(lab):
    adam = strict_json(lab("inspect", "baseline:adam", "--json")[1])
    lr = strict_json(lab("inspect", "baseline:adam(learning_rate=0.01)", "--json")[1])
    b1 = strict_json(lab("inspect", "baseline:adam(b1=0.5)", "--json")[1])
    assert adam["hash"] == lr["hash"] != b1["hash"]
    assert "adam" in adam["equals"] and "adam" not in b1["equals"]


def test_tasks_and_kinds_json(lab):
    rows = strict_json(lab("tasks", "--json")[1])
    assert {"name", "family", "suites", "params", "steps"} <= set(rows[0])
    assert len({r["family"] for r in rows}) >= 6
    smoke = strict_json(lab("tasks", "--suite", "smoke", "--json")[1])
    assert smoke and all("smoke" in r["suites"] for r in smoke)
    kinds = {r["name"]: r for r in strict_json(lab("kinds", "--json")[1])}
    assert {"baseline", "program", "learned", "drift", "random_search"} <= set(kinds)
    assert kinds["drift"]["domain"] == "rl" and kinds["program"]["prefix"] == "program"


BAD = [
    ("search:\n  strategy: Open_ES\n  no_such_key: 3\n", ["no_such_key"]),
    ("search:\n  strategy: Open_Es\n", ["Open_ES", "search.strategy"]),
    ("suite: trian\n", ["train", "suite"]),
    ("seeds: two\n", ["seeds"]),
    ("kind: baseline\nrule: {name: adma}\n", ["adam"]),
    ("kind: drift\nsuite: smoke\n", ["rl-smoke", "suite"]),
]


@pytest.mark.parametrize("text,expect", BAD)
def test_bad_config_exits_2(lab, tmp_path, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc, _, err = lab("launch", str(path))
    assert rc == 2, err
    assert "Traceback" not in err and "bad.yaml" in err
    for word in expect:
        assert word in err


@pytest.mark.parametrize("args,expect", [
    (["launch", "configs/smoke.yaml", "--set", "search.population"], "search.population"),
    (["launch", "configs/smoke.yaml", "--set", "search.popsize=4"], "population"),
    (["launch", "no/such/file.yaml"], "file.yaml"),
    (["launch"], "CONFIG"),
    (["inspect", "no-such-run"], "no-such-run"),
    (["inspect", "baseline:adamm"], "adam"),
    (["inspect", "baseline:adam(b7=0.5)"], "b7"),
    (["replay", "baseline:adam", "--suite", "heldot"], "heldout"),
    (["replay", "baseline:adam", "--suite", "rl-smoke"], "supervised"),
    (["replay", "baseline:adam", "--baselines", "adma"], "adam"),
    (["replay", "discovered/lpo-rl-train", "--tune-lr", "--suite", "rl-smoke"], "--tune-lr"),
    (["replay", "baseline:adam", "--seeds", "0"], "--seeds"),
    (["export", "baseline:adam", "--name", "x", "--suite", "rl-smoke"], "supervised"),
    (["bench", "populaton"], "population"),
])
def test_bad_input_exits_2(lab, args, expect):
    rc, _, err = lab(*args)
    assert rc == 2, err
    assert "Traceback" not in err and expect in err
    assert len(err.strip().splitlines()) <= 3


def test_the_command_exits_2_in_a_subprocess(tmp_path):
    """The installed entry point's path: one line on stderr, exit status 2."""
    proc = run_lab(["inspect", "baseline:adamm", "--store", str(tmp_path / "lab.db")],
                   lab_env(), check=False)
    assert proc.returncode == 2 and "did you mean adam" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sharded_launch_matches_one_device(tmp_path):
    """The same search on 1 and on 4 fake devices (fresh stores: nothing from the cache)."""
    best = {}
    for n in (1, 4):
        env = lab_env(JAX_NUM_CPU_DEVICES=str(n), LAB_JAX_CACHE="")
        db = str(tmp_path / f"d{n}" / "lab.db")
        run_lab(["launch", "configs/smoke.yaml", "--name", "s", "--store", db], env)
        (row,) = strict_json(run_lab(["runs", "--json", "--store", db], env).stdout)
        best[n] = row["best"]
    assert best[4] == pytest.approx(best[1], rel=1e-5)
