"""``lab compare A B``: two stored replays paired seed by seed (shipped artifacts' metrics.json
and ``lab replay --json`` files); nothing is run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import strict_json

from lab.core.replay import interval

PROGRAM, HPARAMS = "discovered/program-search-train", "discovered/adam-es-train"


def _heldout(name: str) -> dict:
    return json.loads((Path(name) / "metrics.json").read_text())["heldout"]


def _scores(held: dict, rule: str) -> dict[str, np.ndarray]:
    return {r["task"]: np.asarray(r["scores"], np.float64) for r in held["rows"]
            if r["rule"] == rule}


def test_two_artifacts_paired_seed_by_seed(cli):
    rc, out, err = cli("compare", PROGRAM, HPARAMS, "--json")
    assert rc == 0, err
    doc = strict_json(out)
    (c,) = doc["comparisons"]  # the program's 4x replay has no counterpart
    assert [u["side"] for u in doc["unpaired"]] == ["a"] and doc["unpaired"][0][
        "horizon_scale"] == 4
    assert (c["suite"], c["seeds"], c["horizon_scale"]) == ("heldout", 8, 1)
    assert c["a"] == ["program-search-train", "program-search-train (lr tuned)"]
    assert c["b"] == ["adam-es-train"]
    assert "tuned adam" in c["checked"] and c["agreement"] == 0.0
    a, b = _heldout(PROGRAM), _heldout(HPARAMS)
    for rule in c["a"]:  # the suite mean per seed, then the difference, then its interval
        mine, theirs = _scores(a, rule), _scores(b, "adam-es-train")
        diff = np.mean([mine[t] for t in mine], 0) - np.mean([theirs[t] for t in mine], 0)
        d = c["differences"][rule]["adam-es-train"]
        assert d["mean"] == pytest.approx(diff.mean()) and d["ci95"] == pytest.approx(
            list(interval(diff)))
    rows = {r["task"]: r for r in c["tasks"]}  # like with like: the own-rate rows
    assert set(rows) == set(_scores(a, "program-search-train"))
    chain = rows["rosenbrock_chain_8"]
    assert (chain["a"], chain["b"]) == ("program-search-train", "adam-es-train")
    per = _scores(a, "program-search-train")["digits_mlp_long"] - _scores(
        b, "adam-es-train")["digits_mlp_long"]
    assert rows["digits_mlp_long"]["difference"] == pytest.approx(per.mean())
    rc, out, err = cli("compare", PROGRAM, HPARAMS)  # the human form
    assert rc == 0 and "minus" in out and "rosenbrock_chain_8" in out


def test_a_replay_file_against_itself_is_zero_and_renamed(cli, tmp_path):
    held = _heldout(PROGRAM)
    path = tmp_path / "replay.json"
    path.write_text(json.dumps(held))
    rc, out, err = cli("compare", str(path), PROGRAM, "--json")
    assert rc == 0, err
    c = strict_json(out)["comparisons"][0]
    assert c["b"] == ["program-search-train [B]", "program-search-train (lr tuned) [B]"]
    for rule in c["a"]:  # each row against its own copy: zero, on no task beyond
        same = c["differences"][rule][f"{rule} [B]"]
        assert same["mean"] == 0.0 and same["worse"] == [] and same["better"] == []
    assert all(r["difference"] == 0.0 and r["b"] == f"{r['a']} [B]" for r in c["tasks"])
    assert len(c["tasks"]) == 2 * 7  # own with own, tuned with tuned, on the 7 tasks


def _write(tmp_path: Path, held: dict, name: str = "b.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(held))
    return str(path)


def test_replays_of_other_seeds_or_references_are_not_paired(cli, tmp_path):
    held = _heldout(HPARAMS)
    # other references: the shared baseline's scores move (here tuned adam on one task)
    moved = json.loads(json.dumps(held))
    for r in moved["rows"]:
        if r["rule"] == "tuned adam" and r["task"] == "mnist1d_cnn":
            r["scores"] = [s + 0.5 for s in r["scores"]]
    rc, _, err = cli("compare", PROGRAM, _write(tmp_path, moved))
    assert rc == 2 and "disagree on tuned adam on mnist1d_cnn" in err
    assert "Traceback" not in err
    # a baseline tuned to another rate since: skipped, not a disagreement (the normalizer
    # every row of the task shares is checked by the rows that kept their rate)
    retuned = json.loads(json.dumps(held))
    for r in retuned["rows"]:
        if r["rule"] == "tuned lion" and r["task"] == "mnist1d_cnn":
            r["lr"], r["scores"] = r["lr"] * 10, [s + 1.0 for s in r["scores"]]
    rc, out, err = cli("compare", PROGRAM, _write(tmp_path, retuned, "d.json"), "--json")
    assert rc == 0, err
    c = strict_json(out)["comparisons"][0]
    assert [(x["rule"], x["task"]) for x in c["skipped"]] == [("tuned lion", "mnist1d_cnn")]
    assert c["unchecked"] == [] and "tuned adam" in c["checked"]
    # another seed count: no counterpart at all
    fewer = json.loads(json.dumps(held))
    fewer["seeds"] = 4
    for r in fewer["rows"]:
        r["scores"] = r["scores"][:4]
    rc, _, err = cli("compare", PROGRAM, _write(tmp_path, fewer, "c.json"))
    assert rc == 2 and "share no comparable replay" in err and "4 seeds" in err


@pytest.mark.parametrize("make,expect", [
    (lambda p: str(p / "nothing"), "no such file"),
    (lambda p: str(p), "no metrics.json"),
    (lambda p: (p / "x.json").write_text('{"rows": [1,') and str(p / "x.json"), "line 1"),
    (lambda p: (p / "y.json").write_text('{"seeds": 2}') and str(p / "y.json"),
     "holds no replay"),
])
def test_bad_input_exits_2_naming_the_file(cli, tmp_path, make, expect):
    rc, _, err = cli("compare", make(tmp_path), HPARAMS)
    assert rc == 2 and expect in err and "Traceback" not in err
