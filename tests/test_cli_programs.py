"""Programs through the `lab` command, as a user runs them: seeds identified by behaviour, bad
program text refused with its line, a tiny search, its inspect document, replay (with the
learning rate tuned per task) and export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, strict_json
from test_cli import lab  # noqa: F401  (the module-scoped in-process lab command)

SEEDS = ROOT / "lab" / "kinds" / "program" / "seeds"

# make test (``--dist loadfile``) runs the whole module on one worker: its module fixtures (a
# launched run) are made once


@pytest.fixture(scope="module")
def run(lab):  # noqa: F811
    rc, _, err = lab("launch", "configs/program_smoke.yaml", "--name", "prog-e2e",
                     "--set", "suite=tiny", "--set", "search.generations=3",
                     "--set", "evaluator.devices=1")
    assert rc == 0, err
    assert "gen 3/3" in err
    (row,) = [r for r in strict_json(lab("runs", "--json")[1]) if r["name"] == "prog-e2e"]
    assert row["kind"] == "program" and row["status"] == "done"
    return row


def test_seed_copies_are_identified_by_behaviour(lab, tmp_path):  # noqa: F811
    shutil.copy(SEEDS / "lion.prog", tmp_path / "cand_a.prog")
    shutil.copy(SEEDS / "adam.prog", tmp_path / "cand_b.prog")
    a = strict_json(lab("inspect", f"program:{tmp_path / 'cand_a.prog'}", "--json")[1])
    b = strict_json(lab("inspect", f"program:{tmp_path / 'cand_b.prog'}", "--json")[1])
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
def test_malformed_program_exits_2_naming_the_line(lab, tmp_path, text, expect):  # noqa: F811
    bad = tmp_path / "bad.prog"
    bad.write_text(text)
    rc, out, err = lab("inspect", f"program:{bad}", "--json")
    assert rc == 2 and expect in err and "Traceback" not in err
    assert out == ""


def test_inspect_run_shows_parseable_sources_and_hit_rate(run, lab, tmp_path):  # noqa: F811
    doc = strict_json(lab("inspect", run["id"], "--json")[1])
    assert isinstance(doc["cache_hit_rate"], float) and 0 <= doc["cache_hit_rate"] <= 1
    best = doc["best"][0]
    assert {"source", "simplified", "hash", "equals", "closest", "lineage", "scores"} <= set(best)
    assert best["lineage"], "a program found by the search has parents"
    src = tmp_path / "best.prog"
    src.write_text(best["source"])
    again = strict_json(lab("inspect", f"program:{src}", "--json")[1])
    assert again["hash"] == best["hash"]
    assert "finalists" in doc["after_search"]
    # what the cache bought: hits by cause (the counts metrics.jsonl keeps per generation),
    # functions evaluated and their rate per hour of generation time
    search, gens = doc["search"], doc["generations"]
    assert search["generations"] == len(gens) == 3
    assert search["cache_hit_rate"] == pytest.approx(doc["cache_hit_rate"])
    assert search["children_generated"] == doc["cache"]["lookups"]
    hits = search["children_generated"] - search["functions_evaluated"]
    assert hits == doc["cache"]["hits"]
    causes = search["cache_hits_by_cause"]
    assert set(causes) == {"same_as_parent_symbolic", "same_as_parent_function",
                           "known_function"}
    assert all(isinstance(n, int) and n >= 0 for n in causes.values())
    assert sum(causes.values()) <= hits
    assert search["seconds"] == pytest.approx(sum(g["seconds"] for g in gens))
    assert search["functions_per_hour"] == pytest.approx(
        3600 * search["functions_evaluated"] / search["seconds"])


@pytest.mark.slow  # replays with lr tuning and an export (~13 s); the search above stays fast
def test_replay_rank_and_export_program_artifact(run, lab, tmp_path):  # noqa: F811
    doc = strict_json(lab("replay", f"{run['id']}:1", "--suite", "tiny", "--seeds", "2",
                          "--tune-lr", "--json")[1])
    assert {r["rule"] for r in doc["rows"]} >= {"tuned adam", "tuned adamw", "tuned lion",
                                                "prog-e2e:1 (lr tuned)"}
    # tuned on the baselines' grid step around its own rate, which is on the grid: per task the
    # tuned row's lr is rate x a multiplier and its mean final loss at most the untuned row's
    from lab.core.replay import TUNE_MULTIPLIERS
    assert np.allclose(np.diff(np.log10(TUNE_MULTIPLIERS)), 1 / 3) and 1.0 in TUNE_MULTIPLIERS
    rows = {(r["task"], r["rule"]): r for r in doc["rows"]}
    for (task, rule), r in rows.items():
        if rule == "prog-e2e:1 (lr tuned)":
            own = rows[(task, "prog-e2e:1")]
            assert any(np.isclose(r["lr"], 20.0 * m, rtol=1e-5) for m in TUNE_MULTIPLIERS)
            if not own["diverged"]:
                assert r["final_loss"] <= own["final_loss"] * (1 + 1e-4) + 1e-7
    assert lab("export", run["id"], "--name", "prog-best", "--out", str(tmp_path), "--suite",
               "tiny", "--seeds", "2")[0] == 0
    folder = tmp_path / "prog-best"
    rule = json.loads((folder / "rule.json").read_text())
    assert rule["kind"] == "program" and rule["source"].startswith("def ")
    metrics = json.loads((folder / "metrics.json").read_text())
    rules = {r["rule"] for r in metrics["heldout"]["rows"]}
    assert any(r.endswith("(lr tuned)") for r in rules)  # like for like with tuned baselines
    assert 0 <= metrics["search"]["cache_hit_rate"] <= 1
    assert metrics["search"]["after_search"]["finalists"]
    readme = (folder / "README.md").read_text()
    assert "```\ndef " in readme
    # the program at its lr tuned per task against each tuned baseline, seed by seed
    held = metrics["heldout"]
    label = held["label"]
    assert set(held["differences"][f"{label} (lr tuned)"]) == {
        f"tuned {b}" for b in ("adam", "adamw", "lion", "lamb", "schedule_free_adamw")}
    assert f"| {label} (lr tuned) | tuned adamw | " in readme and "Paired differences" in readme
    # and at 4x the horizons, its lr tuned per task, beside AdamW and schedule-free AdamW tuned
    # at that budget
    longer = metrics["heldout_4x"]
    assert longer["horizon_scale"] == 4 and longer["seeds"] == 2 and longer["suite"] == "tiny"
    steps = {r["task"]: r["steps"] for r in longer["rows"]}
    assert steps == {r["task"]: 4 * r["steps"] for r in held["rows"]}
    assert set(longer["differences"][f"{label} (lr tuned)"]) == {
        "tuned adamw", "tuned schedule_free_adamw"}
    assert "horizons 4x the tasks'" in readme
    again = strict_json(lab("inspect", str(folder), "--json")[1])
    assert again["hash"] == rule["hash"] and again["source"] == rule["source"]
    replayed = strict_json(lab("replay", str(folder), "--suite", "tiny", "--seeds", "2",
                               "--json")[1])
    assert replayed["rows"][0]["rule"] == "prog-best"
    # exported again from the folder (more seeds): the run and search it came from are kept
    assert lab("export", str(folder), "--name", "prog-again", "--out", str(tmp_path), "--suite",
               "tiny", "--seeds", "3")[0] == 0
    redone = json.loads((tmp_path / "prog-again" / "metrics.json").read_text())
    (tmp_path / "prog-again" / "metrics.json").write_text("{not json")  # information only
    assert lab("inspect", str(tmp_path / "prog-again"), "--json")[0] == 0
    assert redone["heldout"]["seeds"] == 3 and redone["target"] == str(folder)
    assert redone["run"] == metrics["run"] and redone["search"] == metrics["search"]
    assert f"training run: `{metrics['run']['id']}`" in (
        tmp_path / "prog-again" / "README.md").read_text()


def test_artifact_source_is_never_executed(lab, tmp_path):  # noqa: F811
    folder = tmp_path / "evil"
    folder.mkdir()
    doc = {"format": 1, "kind": "program", "name": "program", "hash": "0" * 32,
           "fingerprint": [], "lr": 1.0, "source": "__import__('os').system('echo hi')"}
    (folder / "rule.json").write_text(json.dumps(doc))
    rc, _, err = lab("inspect", str(folder), "--json")
    assert rc == 2 and "key 'source'" in err and "line 1" in err


def test_program_search_config_errors_exit_2(lab, tmp_path):  # noqa: F811
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: program\nrule:\n  seed: adamx\nsearch:\n  sigma: 0.1\n")
    rc, _, err = lab("launch", str(cfg))
    assert rc == 2 and "search.sigma: unknown key" in err


def test_tune_lr_is_for_update_rules(lab):  # noqa: F811
    rc, _, err = lab("replay", "discovered/lpo-rl-train", "--suite", "rl-smoke", "--seeds", "1",
                     "--tune-lr")
    assert rc == 2 and "--tune-lr" in err and "drift" in err
