"""Resume after SIGKILL, through the `lab` command: a run killed mid-generation and resumed with
`lab launch --resume RUN` ends with the same best candidate and the same fitness history as the
same config run without interruption (in another store, so the cache cannot answer for it).

One case per searchable kind; a new kind appends one entry to ``CASES``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lab.checkpoints import (
    Checkpoints,
    array_to_strings,
    generator_state,
    set_generator_state,
    strings_to_array,
)
from lab.config import load_config
from lab.rules.program import load_seed
from lab.rules.program.mutate import mutate
from lab.search.evolution import Evolution, Member

ROOT = Path(__file__).resolve().parent.parent

# (kind, config, overrides): small, but with enough generations that the kill lands mid-run
CASES = [
    ("baseline", "configs/smoke.yaml",
     ["search.population=4", "search.generations=6", "seeds=1", "output.plots=false"]),
    ("program", "configs/program_smoke.yaml",
     ["search.population=8", "search.children=4", "search.generations=6", "seeds=1",
      "budget=8", "search.lr_grid=[1.0, 3.0]", "search.hurdle=0.5", "search.hurdle_budget=4",
      "search.plateau=2", "search.simplify=false", "output.top_k=2", "output.plots=false"]),
    ("program-checkpoint-every-2", "configs/program_smoke.yaml",
     ["search.population=8", "search.children=4", "search.generations=6", "seeds=1",
      "budget=8", "search.lr_grid=[1.0, 3.0]", "search.hurdle=0.5", "search.hurdle_budget=4",
      "search.forget=0.3", "search.simplify=false", "output.top_k=2", "output.plots=false",
      "output.checkpoint_every=2"]),
    ("learned", "configs/lopt_smoke.yaml",
     ["search.population=4", "search.generations=6", "search.validate_every=2", "seeds=1",
      "search.unroll=4", "search.horizon_min=8", "search.horizon_max=24", "output.plots=false"]),
    ("drift", "configs/lpo_smoke.yaml",
     ["search.population=4", "search.generations=6", "seeds=1", "budget=1024", "rule.hidden=4",
      "output.top_k=2", "output.plots=false"]),
]


def test_strings_and_generator_round_trip_through_orbax(tmp_path):
    rng = np.random.default_rng(7)
    rng.random(3)
    strings = ["0f" * 16, "", "adam"]
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(0, {"s": strings_to_array(strings), "rng": generator_state(rng)})
    back = ckpt.restore(0)  # no template: the saved shapes
    ckpt.close()
    assert array_to_strings(back["s"]) == strings
    again = np.random.default_rng(0)
    set_generator_state(again, back["rng"])
    assert again.random(5).tolist() == rng.random(5).tolist()


def test_evolution_state_round_trips(tmp_path):
    """Every field a generation reads: the population in order, the best, parents, the hurdle's
    cut keys and windows, counters and the generator."""
    cfg = load_config(None, ["kind=program", "search.population=4", "search.children=2",
                             "search.hurdle=0.5", "search.hurdle_window=3"])
    start = load_seed("adamw")
    evo = Evolution(cfg, None, "r", None, None, start)
    rng = np.random.default_rng(1)
    programs = [start] + [mutate(start, rng, cfg.rule.max_len) for _ in range(4)]
    evo.population.extend(Member(p, f"{i:032x}", 0.5 + i / 3, i - 1, None if i == 0 else
                                 f"{i - 1:032x}") for i, p in enumerate(programs[:4]))
    evo.best = Member(programs[4], "f" * 32, -1 / 7, 3, "0" * 32)
    evo.cache.failed.update({"e" * 32: 0.25, f"{2:032x}": 1 / 3})
    evo.window.extend([0.1, 0.2, 0.3, 0.4])  # past its length: the first one left
    evo.full_window.append(2 / 3)
    evo.since_best, evo.restarts = 2, 1
    evo.rng.random(11)
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(5, evo.state(5))
    other = Evolution(cfg, None, "r", None, None, start)
    assert other.restore(ckpt.restore(5)) == 6
    ckpt.close()
    assert list(other.population) == list(evo.population) and other.best == evo.best
    assert other.cache.failed == evo.cache.failed
    assert list(other.window) == [0.2, 0.3, 0.4] and list(other.full_window) == [2 / 3]
    assert (other.since_best, other.restarts) == (2, 1)
    assert other.rng.random(4).tolist() == evo.rng.random(4).tolist()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update({"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
              "XLA_FLAGS": "--xla_backend_optimization_level=0",  # compile fast; tiny runs
              "LAB_JAX_CACHE": str(tmp_path_factory.mktemp("jax-cache"))})
    e.pop("LAB_STORE", None)
    return e


def _launch(args: list[str], db: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: a killed child leaves no reader waiting
        return subprocess.Popen([sys.executable, "-m", "lab.cli", "launch", *args,
                                 "--store", str(db)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"lab launch exited {rc}:\n{log.read_text()}"


def _query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read-only, so polling never takes a lock the run needs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _run(db: Path, name: str) -> dict:
    keys = ("id", "status", "generations", "best", "best_hash")
    (row,) = _query(db, f"SELECT {', '.join(keys)} FROM runs WHERE name = ?", (name,))
    return dict(zip(keys, row, strict=True))


def _history(db: Path, run_id: str) -> list[tuple]:
    return _query(db, "SELECT idx, best, mean FROM generations WHERE run_id = ? ORDER BY idx",
                  (run_id,))


def _wait_for_generations(proc, db: Path, name: str, n: int, log: Path, timeout: float = 300):
    """Polls the store until ``name`` has recorded ``n`` generations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()}"
        try:
            if _run(db, name)["generations"] >= n:
                return
        except (sqlite3.Error, ValueError):  # no store or no run yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"no {n} generations within {timeout} s:\n{log.read_text()}")


# the every-2 case repeats the program case's work, and the drift search runs the same ES loop
# (``lab.launch.run_es``) as the baseline case: both run with ``-m slow``
SLOW = {"program-checkpoint-every-2", "drift"}


@pytest.mark.parametrize("kind,config,overrides", [
    pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW else []) for c in CASES])
def test_sigkill_mid_generation_then_resume_matches_uninterrupted(kind, config, overrides, env,
                                                                   tmp_path):
    args = [config, *[a for o in ["output.checkpoint_every=1", *overrides] for a in ("--set", o)]]
    # with checkpoints every 2 generations, kill after 3: the resume redoes a generation that
    # the store had recorded (and whose evaluations it holds) and must retrace it exactly
    kill_after = 3 if "output.checkpoint_every=2" in overrides else 2
    total = int(next(o for o in overrides if o.startswith("search.generations=")).split("=")[1])
    straight_db, cut_db = tmp_path / "straight" / "lab.db", tmp_path / "cut" / "lab.db"
    for db in (straight_db, cut_db):
        db.parent.mkdir()

    _finish(_launch([*args, "--name", "straight"], straight_db, env, tmp_path / "straight.log"),
            tmp_path / "straight.log")
    straight = _run(straight_db, "straight")
    assert straight["status"] == "done" and straight["generations"] == total

    log = tmp_path / "cut.log"
    proc = _launch([*args, "--name", "cut"], cut_db, env, log)
    try:
        _wait_for_generations(proc, cut_db, "cut", kill_after, log)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cut = _run(cut_db, "cut")
    assert cut["status"] == "running" and kill_after <= cut["generations"] < total, cut

    log = tmp_path / "resume.log"
    _finish(_launch(["--resume", cut["id"]], cut_db, env, log), log)
    assert f"resuming run {cut['id']}" in log.read_text()
    resumed = _run(cut_db, "cut")
    assert resumed["status"] == "done" and resumed["generations"] == total
    assert resumed["best_hash"] == straight["best_hash"]
    assert resumed["best"] == straight["best"]
    assert _history(cut_db, cut["id"]) == _history(straight_db, straight["id"])
