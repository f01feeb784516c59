"""A drift search end to end through the `lab` command, on a tiny RL suite: launch, inspect the
run, export the best objective (replayed against PPO-clip and DPO), load the artifact back,
inspect it (closest known objective, surface PNG) and replay it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tasks.suites as suites
from lab.artifacts import load_artifact
from lab.cli import main
from tasks.rl import make_env_task

# about a minute of compiles: with -m slow (the acceptance check runs the same flow end to end)
pytestmark = pytest.mark.slow

TINY = make_env_task("cartpole_cli_tiny", "CartPole-v1", steps=512, num_envs=4, num_steps=32,
                     epochs=1, minibatches=2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setitem(suites.TASKS, TINY.name, lambda: TINY)
    mp.setitem(suites.SUITES, "rl-tiny", (TINY.name,))
    mp.setenv("LAB_JAX_CACHE", "")
    base = tmp_path_factory.mktemp("rl-cli")
    store = str(base / "lab.db")

    def run(*args, capsys=None):
        return main([*args, "--store", store])
    run.base = base
    yield run
    mp.undo()


@pytest.fixture(scope="module")
def run_id(lab):
    # all 8 fake CPU devices: RL evaluation falls back to one (lab.rl.scoring.rl_mesh), since
    # PPO sharded over several CPU devices hangs in XLA's CPU runtime
    rc = lab("launch", "configs/lpo_smoke.yaml", "--name", "tiny-lpo", "--set", "suite=rl-tiny",
             "--set", "rule.hidden=4", "--set", "search.population=4",
             "--set", "search.generations=2", "--set", "output.top_k=1")
    assert rc == 0
    return "tiny-lpo"


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_inspect_run_names_the_closest_objective(lab, run_id, capsys):
    assert lab("inspect", run_id, "--json") == 0
    doc = _json(capsys)
    assert doc["run"]["kind"] == "drift" and len(doc["generations"]) == 2
    best = doc["best"][0]
    assert best["kind"] == "drift" and best["name"] == "lpo(hidden=4)"
    assert best["closest"]["name"] in ("ppo_clip", "dpo")
    assert best["constraints"] == {"valid": True, "reason": ""}
    assert set(best["distances"]) == {"ppo_clip", "dpo"}
    assert best["plot"].endswith(".png")


def test_export_load_inspect_replay(lab, run_id, capsys, tmp_path):
    out = tmp_path / "discovered"
    assert lab("export", run_id, "--name", "tiny", "--out", str(out), "--suite", "rl-tiny",
               "--seeds", "2") == 0
    capsys.readouterr()
    folder = out / "tiny"
    rule = json.loads((folder / "rule.json").read_text())
    assert rule["kind"] == "drift" and rule["weights"] == "weights.npz"
    assert (folder / "weights.npz").exists()
    metrics = json.loads((folder / "metrics.json").read_text())
    held = metrics["heldout"]
    assert held["suite"] == "rl-tiny" and held["seeds"] == 2
    assert [r["rule"] for r in held["rows"]] == ["tiny-lpo:0", "ppo_clip", "dpo"]
    ppo = held["rows"][1]
    assert ppo["score"] == pytest.approx(0.0, abs=1e-9)  # PPO-clip is the 0 of the score
    assert len(ppo["returns"]) == 2 and ppo["ci95"][0] <= ppo["final_return"] <= ppo["ci95"][1]
    assert "Held-out scores (rl-tiny, 2 seeds)" in (folder / "README.md").read_text()

    target = load_artifact(folder)
    assert target.rule.kind == "drift" and target.rule.name == "lpo(hidden=4)"
    assert target.genome["w0"].shape == (8, 4) and target.genome["w1"].shape == (4,)

    assert lab("inspect", str(folder), "--json") == 0
    doc = _json(capsys)
    assert doc["hash"] == rule["hash"] and doc["closest"] == rule["closest"]
    assert (folder / "surface.png").exists() and doc["plot"] == str(folder / "surface.png")

    assert lab("replay", str(folder), "--suite", "rl-tiny", "--seeds", "2", "--json") == 0
    again = _json(capsys)
    # the same seeds and code: the artifact replays to the numbers it was exported with
    np.testing.assert_allclose([r["final_return"] for r in again["rows"]],
                               [r["final_return"] for r in held["rows"]], rtol=1e-5)


def test_replay_of_a_drift_on_a_supervised_suite_exits_2(lab, run_id, capsys):
    assert lab("replay", run_id, "--suite", "heldout") == 2
    assert "RL suite" in capsys.readouterr().err
