"""Replay's speedups (steps to reach tuned Adam's final loss) and longer horizons.

The end-to-end checks run on the smoke suite with 2 seeds, whose references ship for the default
budgets; the 2x-horizon check tunes its reference on demand, so it runs the target alone on one
smoke task.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import strict_json

import tasks
from lab.commands.targets import resolve
from lab.core.evaluate import CURVE_POINTS, evaluate, make_train, task_keys
from lab.core.optimizers import make_baseline
from lab.core.references import References
from lab.core.replay import REACH_TOL, replay, smoothed, speedup, suite_statistics
from lab.core.rule import stack_genomes
from lab.core.store import Store

ROOT = Path(__file__).resolve().parent.parent
SMOKE = [t.name for t in tasks.get_suite("smoke")]


def test_make_train_default_curve_unchanged(tiny_task, one_device_mesh):
    rule = make_baseline("adam", {"learning_rate": 0.05})
    genomes, keys = stack_genomes([rule.genome]), task_keys(2, 1)
    default = evaluate(make_train(tiny_task, rule), genomes, keys, one_device_mesh)
    fine = evaluate(make_train(tiny_task, rule, curve_points=tiny_task.steps), genomes, keys,
                    one_device_mesh)
    assert default["curve"].shape == (1, 2, CURVE_POINTS)
    assert fine["curve"].shape == (1, 2, tiny_task.steps)
    for k in ("final_loss", "mean_loss", "eval_loss", "diverged"):
        np.testing.assert_array_equal(default[k], fine[k])
    seg = tiny_task.steps // CURVE_POINTS
    np.testing.assert_allclose(fine["curve"][0].reshape(2, CURVE_POINTS, seg).mean(-1),
                               default["curve"][0], rtol=1e-6)
    tail = tiny_task.steps // 10
    np.testing.assert_allclose(smoothed(fine["curve"][0, 0], tail)[-1],
                               default["final_loss"][0, 0], rtol=1e-6)


def test_speedup_definition():
    steps = 100
    ramp = np.maximum(1.0 - np.arange(1, steps + 1) / 50, 0.0) + 0.1  # flat at 0.1 from step 50
    ref = 0.1
    first, fast = speedup(ramp[None], np.zeros(1, bool), ref)
    # the trailing mean over 10 steps is at 0.1 from step 59 on
    assert first == 59 and fast == pytest.approx(steps / 59)
    # a curve whose last tenth averages to ref reaches it at the last step: speedup 1
    adam = np.linspace(1.0, ref, steps)
    adam[-10:] = ref
    assert speedup(adam[None], np.zeros(1, bool), ref) == (steps, 1.0)
    # one dip below ref that does not last does not count
    dip = np.full(steps, 2 * ref)
    dip[30:40] = 0.0
    assert speedup(dip[None], np.zeros(1, bool), ref) == (None, None)
    # float error within REACH_TOL still reaches; a diverged seed never does
    assert speedup(np.full((2, steps), ref * (1 + REACH_TOL / 2)), np.zeros(2, bool),
                   ref)[0] == 1
    assert speedup(ramp[None], np.ones(1, bool), ref) == (None, None)


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_cli_replay_speedups(cli):
    """``baseline:adam`` runs at optax's default rate, 1e-3: 20x to 200x below tuned Adam's on
    every smoke task, so it is the slower rule; tuned Adam's own speedup is 1."""
    rc, out, err = cli("replay", "baseline:adam", "--suite", "smoke", "--seeds", "2",
                       "--baselines", "adam", "--json")
    assert rc == 0, err
    doc = strict_json(out)
    assert doc["horizon_scale"] == 1
    assert [r["task"] for r in doc["rows"]] == [t for t in SMOKE for _ in range(2)]
    for task, target, adam in zip(SMOKE, doc["rows"][::2], doc["rows"][1::2], strict=True):
        steps = tasks.get_task(task).steps
        assert target["rule"] == "baseline:adam" and adam["rule"] == "tuned adam"
        assert target["steps"] == adam["steps"] == steps
        assert adam["lr"] >= 10 * 1e-3
        # tuned Adam ends at its own reference: speedup 1 within the curve's resolution
        assert adam["steps_to_adam"] is not None and adam["speedup"] >= 1.0
        assert adam["steps_to_adam"] >= steps - steps // 10
        assert target["speedup"] is None or target["speedup"] < 1.0
        assert target["score"] > 0 and len(target["curve"]) == min(64, steps)
    # the suite means seed by seed: the paired difference is the difference of the means, and
    # Adam at a rate 20x-200x too low loses to tuned Adam with an interval above zero
    diff = doc["differences"]["baseline:adam"]["tuned adam"]
    summary = doc["summary"]
    assert diff["mean"] == pytest.approx(summary["baseline:adam"] - summary["tuned adam"])
    assert 0 < diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    lo, hi = doc["intervals"]["tuned adam"]
    assert lo <= summary["tuned adam"] <= hi


def test_suite_statistics_pair_seeds_before_the_interval():
    """Two tasks, three seeds: seed i's suite mean is its mean over the tasks, and a difference
    shared by every seed has a zero-width interval however much the seeds differ."""
    rows = [{"task": t, "rule": r, "scores": [base + off + 0.1 * t_i for base in (0.0, 1.0, 3.0)]}
            for t_i, t in enumerate("ab") for r, off in (("x", -0.5), ("tuned adam", 0.0))]
    stats = suite_statistics(rows, ["x", "missing"], ["tuned adam", "tuned lion"])
    d = stats["differences"]
    assert list(d) == ["x"] and list(d["x"]) == ["tuned adam"]
    assert d["x"]["tuned adam"]["mean"] == pytest.approx(-0.5)
    np.testing.assert_allclose(d["x"]["tuned adam"]["ci95"], [-0.5, -0.5], atol=1e-12)
    means = np.array([0.05, 1.05, 3.05])  # seed by seed, over the tasks
    half = 4.302652729911275 * np.std(means, ddof=1) / np.sqrt(3)  # t(0.975, 2)
    np.testing.assert_allclose(stats["intervals"]["tuned adam"],
                               [means.mean() - half, means.mean() + half])
    # per task, x's mean lies inside tuned adam's wide interval (seeds 0, 1, 3 apart)
    assert d["x"]["tuned adam"]["worse"] == d["x"]["tuned adam"]["better"] == []


def test_suite_statistics_name_the_tasks_outside_the_baselines_interval():
    """A large gain on one task beside a loss on another: the suite mean favours x, and the
    tasks say where it lost (outside the baseline's interval there) and where it won."""
    noise = np.array([-0.01, 0.0, 0.01])
    rows = [{"task": "a", "rule": "x", "scores": list(-5.0 + noise)},
            {"task": "b", "rule": "x", "scores": list(0.5 + noise)},
            {"task": "c", "rule": "x", "scores": list(0.005 + noise)},
            *[{"task": t, "rule": "tuned adamw", "scores": list(noise)} for t in "abc"]]
    d = suite_statistics(rows, ["x"], ["tuned adamw"])["differences"]["x"]["tuned adamw"]
    assert d["mean"] == pytest.approx((-5.0 + 0.5 + 0.005) / 3)
    assert d["ci95"][1] < 0 and d["better"] == ["a"] and d["worse"] == ["b"]


def test_horizon_scale_doubles_steps(tmp_path, one_device_mesh, monkeypatch):
    """One smoke task: its reference at twice the budget is tuned here (a grid of 16 runs)."""
    one = SMOKE[:1]
    monkeypatch.setitem(tasks.SUITES, "smoke_one", tuple(one))
    asked = []
    get = References.get

    def spy(self, task, optimizer, budget, seeds):
        asked.append((task.name, optimizer, budget, seeds))
        return get(self, task, optimizer, budget, seeds)

    monkeypatch.setattr(References, "get", spy)
    with Store(tmp_path / "lab.db") as store:
        doc = replay(resolve("baseline:adam", None), "smoke_one", 2, baselines=(), store=store,
                     mesh=one_device_mesh, horizon_scale=2)
    assert doc["horizon_scale"] == 2
    assert [(r["task"], r["steps"]) for r in doc["rows"]] == \
        [(t, 2 * tasks.get_task(t).steps) for t in one]
    assert asked == [(t, "adam", 2 * tasks.get_task(t).steps, 2) for t in one]
    for r in doc["rows"]:
        assert r["speedup"] is None or (r["speedup"] < 1 and math.isfinite(r["speedup"]))
    with pytest.raises(ValueError, match="horizon_scale"):
        replay(resolve("baseline:adam", None), "smoke", 2, baselines=(), horizon_scale=0)


def test_replay_table_shows_speedups(capsys):
    from lab.tables import replay_table
    row = {"task": "t", "rule": "r", "steps": 80, "score": 0.1, "ci95": [None, None],
           "final_loss": 1.0, "eval_loss": 1.0, "lr": None, "diverged": False,
           "speedup": 2.5, "steps_to_adam": 32}
    doc = {"label": "x", "suite": "smoke", "seeds": 1, "horizon_scale": 2, "plot": None,
           "rows": [row, {**row, "speedup": None, "steps_to_adam": None},
                    {**row, "speedup": None, "diverged": True},
                    {**row, "ci95": [0.05, 0.15]}], "summary": {"r": 0.1}}
    replay_table(doc)
    out = capsys.readouterr().out
    assert "speedup" in out and "2.50x" in out and "never" in out and "diverged" in out
    assert "2x steps" in out
    assert "[+0.050, +0.150]" in out  # one seed's row has no interval: "-"
    assert sum(line.split("│")[5].strip() == "-" for line in out.splitlines()
               if line.count("│") > 5) == 3


def test_readme_tables_render_a_metrics_file_read_back():
    """A diverged row's final loss is null in metrics.json (JSON has no inf) and inf before it
    is written: the tables render either as n/a."""
    from lab.core.replay import readme_tables
    row = {"task": "a", "rule": "x", "score": 5.0, "ci95": [5.0, 5.0], "final_loss": None,
           "speedup": None}
    held = {"suite": "s", "seeds": 2, "rows": [row], "summary": {"x": 5.0}}
    assert "| a | x | +5.000 | [+5.000, +5.000] | n/a | never |" in readme_tables({"heldout": held})
    # and before it is written, from the replay itself (inf): the same
    fresh = {**held, "rows": [{**row, "final_loss": float("inf")}]}
    line = "| a | x | +5.000 | [+5.000, +5.000] | n/a | never |"
    assert line in readme_tables({"heldout": fresh})
