"""Several processes, one search (``lab.core.hosts``): two local processes with two CPU devices
each (JAX's gloo collectives) against one process with four devices and one with one device;
a process SIGKILLed mid-generation; bad distributed input.

The processes are ``lab`` subprocesses on a free local port, each with a timeout.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tiny
from conftest import ROOT, lab_env, spawn_lab

from benchmarks.scaling import free_port
from lab.core import hosts
from lab.core.kind import get, registry
from lab.core.store import Store

KINDS = sorted(registry())
TIMEOUT = 420  # seconds for any one lab process


def case_args(name: str, generations: int = 3, more: tuple[str, ...] = ()) -> list[str]:
    """``lab launch`` arguments of a kind's conformance launch case on the tiny suites, for
    ``generations`` generations, checkpointed every generation, every device in the mesh."""
    kind = get(name)
    case = kind.conformance().launch
    config = Path(case.config) if Path(case.config).is_absolute() else ROOT / case.config
    sets = [*case.overrides, f"suite={tiny.suite_of(kind.domain)}", "seeds=1",
            "evaluator.devices=0", "output.checkpoint_every=1", "output.plots=false",
            f"search.generations={generations}", *more]
    return ["launch", str(config), *[a for s in sets for a in ("--set", s)]]


def run_processes(args: list[str], tmp: Path, tag: str, processes: int = 2, devices: int = 2,
                  env: dict | None = None, extra: dict[int, dict] | None = None,
                  peer_timeout: float = 20.0) -> tuple[list[int], list[str]]:
    """``lab ARGS`` on ``processes`` local processes of ``devices`` CPU devices each (one
    process: no distributed flags); returns their exit codes and logs."""
    port, procs = free_port(), []
    for i in reversed(range(processes)):  # process 0 last: the others wait for it
        flags = [] if processes == 1 else [
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
            "--process-id", str(i), "--peer-timeout", str(peer_timeout),
            "--connect-timeout", "120"]
        e = lab_env(JAX_NUM_CPU_DEVICES=str(devices), **(env or {}),
                    **((extra or {}).get(i, {})))
        log = tmp / f"{tag}.{i}.log"
        procs.append((i, spawn_lab([*args, *flags], e, log), log))
    rcs, texts = [0] * processes, [""] * processes
    deadline = time.monotonic() + TIMEOUT
    for i, proc, log in procs:
        try:
            rcs[i] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for _, p, _ in procs:
                p.kill()
            raise AssertionError(f"{tag}: process {i} still running after {TIMEOUT} s:\n"
                                 f"{log.read_text()[-3000:]}") from None
        texts[i] = log.read_text()
    return rcs, texts


def contents(db: Path) -> dict:
    """What a search leaves in the store, without run ids and timings: per generation the
    members (hash, fitness, final score), the candidates (hash, genome, readable form, parent),
    the cache (hash, context, fitness, metrics) and the generation rows."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = lambda sql: sorted(conn.execute(sql).fetchall(), key=repr)  # noqa: E731
        return {
            "members": q("SELECT generation, hash, fitness, final FROM members"),
            "candidates": q("SELECT hash, genome, readable, parent FROM candidates"),
            "evaluations": q("SELECT hash, context, fitness, metrics FROM evaluations"),
            "generations": q("SELECT idx, best, mean, hits, misses, evaluated FROM generations"),
            "runs": q("SELECT status, generations, best, best_hash FROM runs"),
        }
    finally:
        conn.close()


def assert_close(a: dict, b: dict, rtol: float = 1e-6) -> None:
    """Same candidates, hashes and members generation by generation; fitness equal to float32
    rounding (XLA's CPU kernels may round the last bit differently for another batch size per
    device)."""
    assert a["candidates"] == b["candidates"]
    key = lambda rows: [(r[0], r[1]) for r in rows]  # noqa: E731
    assert key(a["members"]) == key(b["members"])
    assert [r[:2] for r in a["evaluations"]] == [r[:2] for r in b["evaluations"]]
    for rows_a, rows_b, col in ((a["members"], b["members"], 2),
                                (a["evaluations"], b["evaluations"], 2)):
        x = np.array([np.nan if r[col] is None else r[col] for r in rows_a], np.float64)
        y = np.array([np.nan if r[col] is None else r[col] for r in rows_b], np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


def two_vs_one(name: str, tmp_path: Path, more: tuple[str, ...] = ()) -> None:
    args = case_args(name, more=more)
    stores = {tag: tmp_path / tag / "lab.db" for tag in ("two", "four", "one")}
    rcs, logs = run_processes([*args, "--store", str(stores["two"]), "--name", "s"], tmp_path,
                              "two")
    assert rcs == [0, 0], "\n".join(x[-3000:] for x in logs)
    assert "over 2 processes, mesh 4" in logs[0]
    assert "gen 3/3" in logs[0] and "gen " not in logs[1], logs[1][-2000:]
    assert not (stores["two"].parent / "runs").exists() or \
        len(list((stores["two"].parent / "runs").iterdir())) == 1
    for tag, devices in (("four", 4), ("one", 1)):
        rcs, logs = run_processes([*args, "--store", str(stores[tag]), "--name", "s"],
                                  tmp_path, tag, processes=1, devices=devices)
        assert rcs == [0], logs[0][-3000:]
    two, four, one = (contents(stores[t]) for t in ("two", "four", "one"))
    assert two["runs"][0][:2] == ("done", 3)
    assert len({r[0] for r in two["generations"]}) == 3
    assert two == four  # the same mesh of four devices: identical to the last bit
    assert_close(two, one)


@pytest.mark.slow
@pytest.mark.parametrize("name", KINDS)
def test_two_processes_equal_one_process(name, tmp_path):
    """Every kind; the baseline with a population of 6 over 4 devices: padded to 8, as on one
    host. (Slow: four lab processes each; `make test` keeps the cheap two-process tests.)"""
    two_vs_one(name, tmp_path, more=("search.population=6",) if name == "baseline" else ())


@pytest.mark.slow
@pytest.mark.parametrize("name, processes", [("program", 1), ("learned", 2)])
def test_killed_process_stops_the_other_and_resume_ends_equal(name, processes, tmp_path):
    """Process 1 SIGKILLs itself in generation 1 once it is scored: process 0 (which has every
    fitness by then) commits generation 1 and stops in generation 2 with an error naming the
    lost process; ``--resume`` on two fresh processes (or on one with the same four devices)
    ends where an uninterrupted run ends."""
    args = case_args(name)
    db = tmp_path / "cut" / "lab.db"
    start = time.monotonic()
    # process 0 commits generation 1 after process 1's death, writing its checkpoint and plots
    # first: on a loaded 2-core machine (CI runs the slow tests two at a time) that took over
    # 30 s, and the peer timeout stopped it before the commit (once more at 90 s, with another
    # job on the same cores). The loss is found by the next generation's failed collective, not
    # by the timeout, so a long one costs nothing here.
    rcs, logs = run_processes([*args, "--store", str(db), "--name", "cut"], tmp_path, "cut",
                              extra={1: {tiny.KILL_AT: "1"}}, peer_timeout=240)
    assert rcs[1] == -9, logs[1][-2000:]
    assert rcs[0] == hosts.LOST_EXIT, logs[0][-3000:]
    assert "lost process 1 of 2" in logs[0], logs[0][-3000:]
    assert time.monotonic() - start < TIMEOUT
    with Store(db) as store:
        (run,) = store.runs()
        # generation 1 is committed unless the loss is found first (a loaded machine): either
        # way nothing committed is lost, and the resume below must end where a straight run ends
        assert run["status"] == "failed" and run["generations"] in (1, 2), run
    rcs, logs = run_processes(["launch", "--resume", "cut", "--store", str(db)], tmp_path,
                              "resume", processes=processes, devices=4 // processes)
    assert rcs == [0] * processes, "\n".join(x[-3000:] for x in logs)
    assert "resuming run" in logs[0]
    straight = tmp_path / "straight" / "lab.db"
    rcs, logs = run_processes([*args, "--store", str(straight), "--name", "cut"], tmp_path,
                              "straight", processes=1, devices=4)
    assert rcs == [0], logs[0][-3000:]
    assert contents(db) == contents(straight)


# ---- bad input: one line, exit 2 ---------------------------------------------------------------

def error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("lab launch: error:")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def test_mismatched_num_processes(tmp_path):
    port, procs = free_port(), []
    args = case_args("baseline")
    for i, n in ((1, 3), (0, 2)):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                 "--process-id", str(i), "--connect-timeout", "30"]
        log = tmp_path / f"p{i}.log"
        procs.append((spawn_lab([*args, "--store", str(tmp_path / "lab.db"), *flags],
                                lab_env(JAX_NUM_CPU_DEVICES="1"), log), log))
    for proc, log in procs:
        assert proc.wait(timeout=120) == 2, log.read_text()[-2000:]
        assert "--num-processes" in error_line(log.read_text())
    assert not (tmp_path / "lab.db").exists()


def test_unreachable_coordinator(tmp_path):
    log = tmp_path / "p1.log"
    proc = spawn_lab([*case_args("baseline"), "--coordinator", f"127.0.0.1:{free_port()}",
                      "--num-processes", "2", "--process-id", "1", "--connect-timeout", "3"],
                     lab_env(JAX_NUM_CPU_DEVICES="1"), log)
    assert proc.wait(timeout=120) == 2, log.read_text()[-2000:]
    assert "could not join coordinator 127.0.0.1:" in error_line(log.read_text())


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "nohost"], "expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:99999", "--num-processes", "2", "--process-id", "0"],
     "expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234"], "needs --num-processes N and --process-id I"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2: must be in 0..1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"],
     "--num-processes 0: must be at least 1"),
    (["--num-processes", "2", "--process-id", "1"], "need --coordinator"),
])
def test_bad_flags_one_line_exit_2(cli, flags, message):
    rc, out, err = cli("launch", str(ROOT / "configs" / "smoke.yaml"), *flags)
    assert rc == 2 and message in error_line(err), err
    assert not Path(cli.store).exists()


def test_auto_without_a_cluster(tmp_path):
    log = tmp_path / "auto.log"
    env = {k: v for k, v in lab_env(JAX_NUM_CPU_DEVICES="1").items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "KUBERNETES_"))}
    proc = spawn_lab([*case_args("baseline"), "--coordinator", "auto", "--connect-timeout", "5"],
                     env, log)
    assert proc.wait(timeout=120) == 2, log.read_text()[-2000:]
    assert "could not join the cluster's coordinator" in error_line(log.read_text())


def test_devices_must_cover_every_process(monkeypatch):
    from lab.core import evaluate
    monkeypatch.setattr(evaluate, "count", lambda: 2)
    with pytest.raises(ValueError, match="uses every device of every process"):
        evaluate.make_mesh(1)


# ---- sharing process 0's values ----------------------------------------------------------------

def test_process_0s_error_is_every_process_error(tmp_path):
    """``--resume`` of a run that process 0's store does not hold: process 0's StoreError is
    shared, and every process exits 2 with its one line."""
    rcs, logs = run_processes(["launch", "--resume", "nosuch", "--store",
                               str(tmp_path / "lab.db")], tmp_path, "resume", devices=1)
    assert rcs == [2, 2], logs
    for i, text in enumerate(logs):
        line = error_line(text)
        assert f"process {i}: " in line and "no run 'nosuch'" in line, text[-2000:]


def test_one_process_shares_locally(tmp_path):
    """Without ``initialize`` a shared store is the store itself and share returns its value
    (or raises its exception)."""
    assert hosts.count() == 1 and hosts.is_leader()
    assert hosts.share(5) == 5
    with pytest.raises(KeyError):
        hosts.leader_value(lambda: {}["x"])
    with Store(tmp_path / "lab.db") as store:
        shared = hosts.SharedStore(store)
        run_id = shared.create_run("r", "baseline", {}, "h", "0", "c", {})
        assert shared.get_run(run_id)["id"] == run_id == store.get_run("r")["id"]
        assert shared.path == store.path
    assert hosts.gather(np.arange(3)).tolist() == [0, 1, 2]


@pytest.mark.slow
def test_scaling_bench_runs_two_processes():
    from benchmarks import scaling
    r = scaling.run(population=4, steps=5, seeds=1, repeats=1, devices=(1, 2), processes=True)
    assert set(r["by_devices"]) == {"1", "2"} and set(r["by_processes"]) == {"1x4", "2x2"}
    assert all(v > 0 for v in [*r["by_devices"].values(), *r["by_processes"].values()])
    assert r["scaling_efficiency"] > 0 and r["process_efficiency"] > 0
    # what crosses hosts: each task's metrics of 4 candidates x 1 seed, never the genomes
    assert r["bytes_gathered_per_generation"] > 0 and r["genome_bytes_per_generation"] > 0
    assert "not a speed-up" in r["note"]
