"""References of RL environments (the drift kind's ``rl`` family of lab/core/references.py):
shipped in tasks/references.json, else computed once and cached in the store under their own
metric (a return, not a loss); ``build`` rebuilds one family and keeps the others; format-1
files read back without loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab.core import references
from lab.core.references import References
from lab.kinds.drift.scoring import reference_context, reference_pair
from tasks.rl import make_env_task

TINY = make_env_task("cartpole_refs_tiny", "CartPole-v1", steps=256, num_envs=2, num_steps=32,
                     epochs=1, minibatches=2)


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def fake(task, which, budget, seeds, mesh=None):
        calls.append((task.name, which, budget, seeds))
        base = 20.0 if which == "ppo_clip" else 10.0
        return {"value": base + seeds, "values": [base + seeds] * seeds}

    monkeypatch.setitem(references._FAMILIES, "rl",
                        references.Family("rl", "rl", "final_return", ("ppo_clip", "random"),
                                          reference_context, fake))
    return calls


def test_computed_once_then_cached_in_the_store(store, counted):
    refs = References(store)
    assert reference_pair(refs, TINY, 0, 2) == {"ppo": 22.0, "random": 12.0}
    assert reference_pair(refs, TINY, 0, 2) == {"ppo": 22.0, "random": 12.0}
    got = References(store).get(TINY, "ppo_clip", 256, 2)
    assert got["values"] == [22.0, 22.0] and got["metric"] == "final_return"
    assert got["lr"] is None
    row = store.get_ref(TINY.name, 256, 2, "ppo_clip", reference_context(TINY))
    assert row["metric"] == "final_return" and row["value"] == 22.0 and row["lr"] is None
    assert counted == [("cartpole_refs_tiny", "ppo_clip", 256, 2),
                       ("cartpole_refs_tiny", "random", 256, 2)]


def test_shipped_entries_answer_first(monkeypatch, counted):
    ctx = reference_context(TINY)
    doc = {"format": references.FORMAT, "entries": [
        {"family": "rl", "task": TINY.name, "context": ctx, "budget": 256, "seeds": 1,
         "which": w, "metric": "final_return", "value": v, "values": [v]}
        for w, v in (("ppo_clip", 100.0), ("random", 5.0))]}
    monkeypatch.setattr(references, "shipped_text", lambda: json.dumps(doc))
    references.shipped.cache_clear()
    try:
        assert reference_pair(References(), TINY, 256, 1) == {"ppo": 100.0, "random": 5.0}
        assert counted == []
        # another budget, or an edited task (another version), is not answered by the file
        reference_pair(References(), TINY, 512, 1)
        assert len(counted) == 2
    finally:
        references.shipped.cache_clear()


def test_build_rebuilds_its_tasks_and_keeps_the_others(tmp_path, counted):
    """A build rewrites the entries of the tasks and seed counts it builds; every other entry,
    of the same references for other tasks too, stays (``--suites train-wide`` adds one suite)."""
    path = tmp_path / "references.json"
    kept = {"family": "tuned", "task": "kept", "context": "c", "budget": 1, "seeds": 1,
            "which": "adam", "metric": "final_loss", "value": 1.0, "values": [1.0]}
    other = {"family": "rl", "task": "other", "context": "c", "budget": 1, "seeds": 1,
             "which": "ppo_clip", "metric": "final_return", "value": 1.0, "values": [1.0]}
    stale = {**other, "task": TINY.name, "context": "old", "value": 5.0}
    more_seeds = {**stale, "seeds": 3}
    path.write_text(json.dumps({"format": references.FORMAT,
                                "entries": [kept, other, stale, more_seeds]}))
    doc = references.build([(TINY, "rl")], (1,), path=path)
    back = json.loads(path.read_text())
    assert back == doc
    assert [(e["task"], e["which"], e["seeds"], e["metric"]) for e in back["entries"]] == [
        (TINY.name, "ppo_clip", 1, "final_return"), (TINY.name, "random", 1, "final_return"),
        ("kept", "adam", 1, "final_loss"), ("other", "ppo_clip", 1, "final_return"),
        (TINY.name, "ppo_clip", 3, "final_return")]
    assert back["entries"][0]["context"] == reference_context(TINY)


def test_build_of_some_references_keeps_the_familys_others(tmp_path, counted):
    """``which`` (``lab references build --which``): only those are rebuilt; the file's other
    references of the same family stay, as every other family's."""
    path = tmp_path / "references.json"
    entry = lambda fam, which: {"family": fam, "task": TINY.name, "context": "c", "budget": 1,  # noqa: E731
                                "seeds": 1, "which": which, "metric": "m", "value": 1.0,
                                "values": [1.0]}
    path.write_text(json.dumps({"format": references.FORMAT, "entries": [
        entry("rl", "ppo_clip"), entry("rl", "random"), entry("tuned", "adam")]}))
    references.build([(TINY, "rl")], (1,), path=path, which={"rl": ("random",)})
    back = [(e["family"], e["which"], e["context"])
            for e in json.loads(path.read_text())["entries"]]
    assert back == [("rl", "random", reference_context(TINY)), ("rl", "ppo_clip", "c"),
                    ("tuned", "adam", "c")]


def test_format_1_files_upgrade_without_loss():
    v1 = {"format": 1, "grid_id": "g", "entries": [
        {"task": "t", "task_version": "v", "budget": 10, "seeds": 2, "optimizer": "adam",
         "lr": 0.01, "final_loss": 0.5, "losses": [0.4, 0.6], "grid_losses": [1.0, None]}],
          "rl": [{"task": "e", "context": "rl-x", "budget": 64, "seeds": 1, "which": "random",
                  "final_return": 9.0, "returns": [9.0]}]}
    new = references.upgrade(v1)
    assert new["format"] == references.FORMAT and "rl" not in new
    tuned, rl = new["entries"]
    assert tuned == {"family": "tuned", "task": "t", "context": "v-g", "budget": 10,
                     "seeds": 2, "which": "adam", "metric": "final_loss", "value": 0.5,
                     "values": [0.4, 0.6], "lr": 0.01, "grid_values": [1.0, None]}
    assert rl == {"family": "rl", "task": "e", "context": "rl-x", "budget": 64, "seeds": 1,
                  "which": "random", "metric": "final_return", "value": 9.0, "values": [9.0]}
    keys = references.parse(json.dumps(v1), "v1.json")
    assert set(keys) == {("t", "v-g", 10, 2, "adam"), ("e", "rl-x", 64, 1, "random")}


def test_shipped_rl_references_match_the_registered_tasks():
    """Every shipped RL entry belongs to a registered environment at its current version (a
    task edit without `lab references build` would leave stale rows that nothing reads)."""
    import tasks
    rl = [e for e in references.shipped().values() if e["family"] == "rl"]
    assert rl, "tasks/references.json has no rl entries"
    for e in rl:
        task = tasks.get_task(e["task"])
        assert e["context"] == reference_context(task), e["task"]
        assert e["metric"] == "final_return"
        assert np.isfinite(e["value"]) and len(e["values"]) == e["seeds"]
    ppo = {(e["task"], e["seeds"]): e["value"] for e in rl if e["which"] == "ppo_clip"}
    rnd = {(e["task"], e["seeds"]): e["value"] for e in rl if e["which"] == "random"}
    assert set(ppo) == set(rnd)
    for name in tasks.SUITES["rl-train"] + tasks.SUITES["rl-smoke"]:
        assert (name, 1) in ppo, f"no seeds=1 PPO reference for {name}"
        assert ppo[(name, 1)] > rnd[(name, 1)], f"PPO does not beat random on {name}"


def test_shipped_tuned_references_match_the_registered_tasks():
    import tasks
    tuned = [e for e in references.shipped().values() if e["family"] == "tuned"]
    assert tuned
    by_task = {}
    for e in tuned:
        task = tasks.get_task(e["task"])
        assert e["context"] == references.TUNED.context(task), e["task"]
        assert e["lr"] in references.LR_GRID and e["metric"] == "final_loss"
        by_task.setdefault(e["task"], set()).add(e["which"])
    # every suite a search trains on (a config on a fresh machine finds its references)
    for suite in ("smoke", "train", "train-wide", "train-wide-mnist1d", "train-wide-chain",
                  "train-scaled"):
        for name in tasks.SUITES[suite]:
            assert by_task.get(name) == set(references.OPTIMIZERS), (suite, name)
    # held out: every baseline of the held-out tables, so an export on a fresh store tunes none
    from lab.core.kind import HELDOUT_BASELINES
    for name in tasks.SUITES["heldout"]:
        assert by_task.get(name) == set(HELDOUT_BASELINES), name
    # and at 4x on 8 seeds, those of an export's 4x replays (an update program's and a learned
    # optimizer's, tuned Adam), so that part of an export tunes none either
    from lab.kinds.program import LONGER, LONGER_BASELINES
    for name in tasks.SUITES["heldout"]:
        at = {e["which"] for e in tuned if e["task"] == name and e["seeds"] == 8
              and e["budget"] == LONGER * tasks.get_task(name).steps}
        assert at == {*LONGER_BASELINES, "adam"}, name


def test_references_build_names_an_unknown_reference(capsys, tmp_path):
    from lab.cli import main
    rc = main(["references", "build", "--suites", "smoke", "--which", "adam,nope",
               "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "--which: no reference 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_references_build_builds_only_the_named_tasks(capsys, tmp_path, monkeypatch):
    """``--tasks``: only those tasks of the suites are built (the file's other entries are
    kept, as ``build`` keeps them); a task outside the suites is named, exit 2, nothing
    written."""
    import tasks
    from lab.cli import main
    built = []
    monkeypatch.setattr(references, "build",
                        lambda pairs, *a, **k: built.append([t.name for t, _ in pairs])
                        or {"entries": []})
    out = str(tmp_path / "r.json")
    assert main(["references", "build", "--suites", "smoke,train", "--tasks",
                 f"{tasks.SUITES['train'][1]}, {tasks.SUITES['smoke'][0]}", "--out", out]) == 0
    assert built == [[tasks.SUITES["train"][1], tasks.SUITES["smoke"][0]]]
    rc = main(["references", "build", "--suites", "smoke", "--tasks", "nope", "--out", out])
    assert rc == 2 and "--tasks: nope not in the suites smoke" in capsys.readouterr().err
    assert len(built) == 1 and not (tmp_path / "r.json").exists()


def test_build_at_a_horizon_scale_adds_that_budget_and_the_replay_reads_it(tmp_path, counted,
                                                                           monkeypatch, capsys):
    """``lab references build --horizon-scale K``: the references at K times each task's budget
    join the file, the default budget's stay (a stale version's go), and a lookup at that
    budget is answered by the file, nothing computed."""
    from lab.cli import main
    path = tmp_path / "references.json"
    stale = {"family": "rl", "task": TINY.name, "context": "old", "budget": 1024, "seeds": 1,
             "which": "ppo_clip", "metric": "final_return", "value": 9.0, "values": [9.0]}
    path.write_text(json.dumps({"format": references.FORMAT, "entries": [stale]}))
    references.build([(TINY, "rl")], (1,), path=path)
    references.build([(TINY, "rl")], (1,), path=path, scale=4)
    back = json.loads(path.read_text())["entries"]
    assert sorted((e["which"], e["budget"], e["context"]) for e in back) == [
        ("ppo_clip", 256, reference_context(TINY)), ("ppo_clip", 1024, reference_context(TINY)),
        ("random", 256, reference_context(TINY)), ("random", 1024, reference_context(TINY))]
    assert counted[-2:] == [(TINY.name, "ppo_clip", 1024, 1), (TINY.name, "random", 1024, 1)]
    # built again at 4x: its entries are replaced, the 1x ones kept
    references.build([(TINY, "rl")], (1,), path=path, scale=4)
    assert len(json.loads(path.read_text())["entries"]) == 4
    monkeypatch.setattr(references, "shipped_text", lambda: path.read_text())
    references.shipped.cache_clear()
    try:
        before = len(counted)
        assert reference_pair(References(), TINY, 1024, 1) == {"ppo": 21.0, "random": 11.0}
        assert len(counted) == before
    finally:
        references.shipped.cache_clear()
    with pytest.raises(ValueError, match="horizon scale 0: must be at least 1"):
        references.build([(TINY, "rl")], (1,), path=path, scale=0)
    rc = main(["references", "build", "--suites", "smoke", "--horizon-scale", "0",
               "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "--horizon-scale 0: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
