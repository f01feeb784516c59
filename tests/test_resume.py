"""Checkpointed search state round-trips through orbax (strings, the numpy generator, a program
search's whole evolution), and a program search of each signature (update rules, schedules,
joint programs, drifts) or a population-based training run (its members sharded over every
device), killed by an outside SIGKILL while it runs, between checkpoints taken every 2
generations, resumes to the same run as an uninterrupted one.

Every kind's kill-and-resume case (a SIGKILL at a set point of a generation) is in
``test_kinds``; this one kills a running process from outside, at whatever point it has reached.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import lab_env, run_lab, spawn_lab

from lab.core.checkpoints import (
    Checkpoints,
    array_to_strings,
    generator_state,
    set_generator_state,
    strings_to_array,
)
from lab.core.config import load_config
from lab.kinds.program import evostate
from lab.kinds.program.evolution import Evolution, Member
from lab.kinds.program.mutate import mutate
from lab.kinds.program.programs import load_seed

# with checkpoints every 2 generations and a kill after 3, the resume redoes a generation that the
# store had recorded (and whose evaluations it holds): it must retrace it exactly
OVERRIDES = ["search.population=8", "search.children=4", "search.generations=6", "seeds=1",
             "budget=8", "search.lr_grid=[1.0, 3.0]", "search.hurdle=0.5",
             "search.hurdle_budget=4", "search.forget=0.3", "search.simplify=false",
             "output.top_k=2", "output.plots=false", "output.checkpoint_every=2",
             "evaluator.devices=1"]


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
    """Every field a generation reads: the population in order, the best, parents, the
    functions met, the hurdle's cut keys and windows, counters and the generator."""
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
    evo.met.update({"d" * 32, f"{1:032x}", "f" * 32})
    evo.window.extend([0.1, 0.2, 0.3, 0.4])  # past its length: the first one left
    evo.full_window.append(2 / 3)
    evo.since_best, evo.restarts = 2, 1
    evo.rng.random(11)
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(5, evostate.state(evo, 5))
    other = Evolution(cfg, None, "r", None, None, start)
    assert evostate.restore(other, ckpt.restore(5)) == 6
    ckpt.close()
    assert list(other.population) == list(evo.population) and other.best == evo.best
    assert other.cache.failed == evo.cache.failed and other.met == evo.met
    assert list(other.window) == [0.2, 0.3, 0.4] and list(other.full_window) == [2 / 3]
    assert (other.since_best, other.restarts) == (2, 1)
    assert other.rng.random(4).tolist() == evo.rng.random(4).tolist()


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


# every signature's search: the drift's without the lr grid, the hurdle and the supervised budget
SEARCHES = {"update": ("configs/program_smoke.yaml", OVERRIDES),
            "schedule": ("configs/schedule_smoke.yaml", OVERRIDES),
            "joint": ("configs/joint_smoke.yaml", OVERRIDES),
            "drift": ("configs/drift_program_smoke.yaml",
                      [o for o in OVERRIDES if not o.startswith(("budget", "search.lr_grid",
                                                                 "search.hurdle"))]),
            # a regret curriculum: the level buffer (full by then) is part of the checkpoint
            "curriculum": ("configs/lpo_curriculum_smoke.yaml",
                           ["search.population=4", "search.generations=6", "budget=1024",
                            "rule.hidden=4", "search.buffer=3", "output.top_k=1",
                            "output.plots=false", "output.checkpoint_every=2"]),
            # population-based training, its members sharded over every device
            "pbt": ("configs/pbt_smoke.yaml",
                    ["search.population=8", "search.generations=6", "seeds=1",
                     "output.top_k=2", "output.plots=false", "output.checkpoint_every=2",
                     "evaluator.devices=0"])}


@pytest.mark.slow
@pytest.mark.parametrize("signature", sorted(SEARCHES))
def test_search_killed_between_checkpoints_resumes_exactly(tmp_path, signature):
    env = lab_env()
    config, overrides = SEARCHES[signature]
    args = [config, *[a for o in overrides for a in ("--set", o)]]
    straight_db, cut_db = tmp_path / "straight" / "lab.db", tmp_path / "cut" / "lab.db"
    run_lab(["launch", *args, "--name", "straight", "--store", str(straight_db)], env)
    straight = _run(straight_db, "straight")
    assert straight["status"] == "done" and straight["generations"] == 6

    log = tmp_path / "cut.log"
    proc = spawn_lab(["launch", *args, "--name", "cut", "--store", str(cut_db)], env, log)
    try:
        _wait_for_generations(proc, cut_db, "cut", 3, log)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cut = _run(cut_db, "cut")
    assert cut["status"] == "running" and 3 <= cut["generations"] < 6, cut

    resumed = run_lab(["launch", "--resume", cut["id"], "--store", str(cut_db)], env)
    assert f"resuming run {cut['id']}" in resumed.stderr
    done = _run(cut_db, "cut")
    assert done["status"] == "done" and done["generations"] == 6
    assert (done["best_hash"], done["best"]) == (straight["best_hash"], straight["best"])
    assert _history(cut_db, cut["id"]) == _history(straight_db, straight["id"])
