"""PPO references for RL environments: shipped in tasks/references.json (section ``rl``), else
computed once and cached in the store; ``lab references build`` keeps the other section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab import references
from lab.rl import scoring
from lab.rl.scoring import RLReferences
from lab.store import Store
from tasks.rl import make_env_task

TINY = make_env_task("cartpole_refs_tiny", "CartPole-v1", steps=256, num_envs=2, num_steps=32,
                     epochs=1, minibatches=2)


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def fake(task, which, budget, seeds, mesh=None):
        calls.append((task.name, which, budget, seeds))
        base = 20.0 if which == "ppo_clip" else 10.0
        return {"final_return": base + seeds, "returns": [base + seeds] * seeds}

    monkeypatch.setattr(scoring, "compute_reference", fake)
    return calls


def test_computed_once_then_cached_in_the_store(tmp_path, counted):
    with Store(tmp_path / "lab.db") as store:
        refs = RLReferences(store)
        assert refs.pair(TINY, 0, 2) == {"ppo": 22.0, "random": 12.0}
        assert refs.pair(TINY, 0, 2) == {"ppo": 22.0, "random": 12.0}
        assert RLReferences(store).get(TINY, "ppo_clip", 256, 2)["returns"] == [22.0, 22.0]
    assert counted == [("cartpole_refs_tiny", "ppo_clip", 256, 2),
                       ("cartpole_refs_tiny", "random", 256, 2)]


def test_shipped_entries_answer_first(monkeypatch, counted):
    ctx = RLReferences().context(TINY)
    doc = {"rl": [{"task": TINY.name, "context": ctx, "budget": 256, "seeds": 1,
                   "which": w, "final_return": v, "returns": [v]}
                  for w, v in (("ppo_clip", 100.0), ("random", 5.0))]}
    monkeypatch.setattr(references, "shipped_doc", lambda: doc)
    assert RLReferences().pair(TINY, 256, 1) == {"ppo": 100.0, "random": 5.0}
    assert counted == []
    # another budget, or an edited task (another version), is not answered by the file
    RLReferences().pair(TINY, 512, 1)
    assert len(counted) == 2


def test_build_writes_rl_and_keeps_the_supervised_section(tmp_path, counted):
    path = tmp_path / "references.json"
    path.write_text(json.dumps({"format": references.FORMAT, "grid_id": references.grid_id(),
                                "entries": [{"task": "kept"}], "rl": [{"task": "old"}]}))
    doc = references.build([], (1,), path=path, rl_tasks=[TINY])
    back = json.loads(path.read_text())
    assert back == doc and back["entries"] == [{"task": "kept"}]
    assert [(e["task"], e["which"], e["seeds"]) for e in back["rl"]] == [
        (TINY.name, "ppo_clip", 1), (TINY.name, "random", 1)]
    assert back["rl"][0]["context"] == RLReferences().context(TINY)
    # building the supervised section alone keeps the rl one
    references.build([], (1,), path=path)
    assert json.loads(path.read_text())["rl"] == back["rl"]


def test_shipped_rl_references_match_the_registered_tasks():
    """Every shipped RL entry belongs to a registered environment at its current version (a
    task edit without `lab references build` would leave stale rows that nothing reads)."""
    import tasks
    doc = references.shipped_doc()
    rl = doc.get("rl", [])
    assert rl, "tasks/references.json has no rl section"
    for e in rl:
        task = tasks.get_task(e["task"])
        assert e["context"] == RLReferences().context(task), e["task"]
        assert np.isfinite(e["final_return"]) and len(e["returns"]) == e["seeds"]
    ppo = {(e["task"], e["seeds"]): e["final_return"] for e in rl if e["which"] == "ppo_clip"}
    rnd = {(e["task"], e["seeds"]): e["final_return"] for e in rl if e["which"] == "random"}
    assert set(ppo) == set(rnd)
    for name in tasks.SUITES["rl-train"] + tasks.SUITES["rl-smoke"]:
        assert (name, 1) in ppo, f"no seeds=1 PPO reference for {name}"
        assert ppo[(name, 1)] > rnd[(name, 1)], f"PPO does not beat random on {name}"
