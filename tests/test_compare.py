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
    assert c["b"] == ["adam-es-train", "adam-es-train (lr tuned)"]
    assert "tuned adam" in c["checked"] and len(c["moved"]) <= 2  # exported on other days
    a, b = _heldout(PROGRAM), _heldout(HPARAMS)
    for rule, other in zip(c["a"], c["b"], strict=True):  # suite mean per seed, difference
        mine, theirs = _scores(a, rule), _scores(b, other)
        diff = np.mean([mine[t] for t in mine], 0) - np.mean([theirs[t] for t in mine], 0)
        d = c["differences"][rule][other]
        assert d["mean"] == pytest.approx(diff.mean()) and d["ci95"] == pytest.approx(
            list(interval(diff)))
    # like with like: own rate with own, tuned with tuned, on every task
    pairs = {(r["a"], r["b"]) for r in c["tasks"]}
    assert pairs == set(zip(c["a"], c["b"], strict=True)) and len(c["tasks"]) == 2 * 7
    rows = {(r["task"], r["a"]): r for r in c["tasks"]}
    per = _scores(a, "program-search-train (lr tuned)")["digits_mlp_long"] - _scores(
        b, "adam-es-train (lr tuned)")["digits_mlp_long"]
    assert rows["digits_mlp_long", "program-search-train (lr tuned)"]["difference"] == (
        pytest.approx(per.mean()))
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


def _edit(held: dict, change) -> dict:
    out = json.loads(json.dumps(held))
    for r in out["rows"]:
        change(r)
    return out


def test_replays_of_other_seeds_or_references_are_not_paired(cli, tmp_path):
    held = _heldout(PROGRAM)
    targets = {"program-search-train", "program-search-train (lr tuned)"}

    def relabel(r):  # B: the same replay under another name
        if r["rule"] in targets:
            r["rule"] = r["rule"].replace("program-search-train", "other")
    base = _edit({**held, "label": "other"}, relabel)

    # other references: every baseline on one task moves by one constant (the normalizer)
    def moved_ref(r):
        if r["task"] == "mnist1d_cnn" and r["rule"].startswith("tuned "):
            r["scores"] = [s + 0.5 for s in r["scores"]]
    rc, _, err = cli("compare", PROGRAM, _write(tmp_path, _edit(base, moved_ref)))
    assert rc == 2 and "every baseline on mnist1d_cnn is -0.5 apart" in err
    assert "Traceback" not in err

    # other seeds: the baselines' scores belong to other seeds (here rolled by one)
    def other_seeds(r):
        r["scores"] = r["scores"][1:] + r["scores"][:1]
    rc, _, err = cli("compare", PROGRAM, _write(tmp_path, _edit(base, other_seeds), "c.json"))
    assert rc == 2 and "did not run on the same seeds" in err

    # a row or two moved (another code version): compared, the row listed
    def one_row(r):
        if r["rule"] == "tuned lamb" and r["task"] == "quadratic_ill_64":
            r["scores"] = [s + 0.3 for s in r["scores"]]
    rc, out, err = cli("compare", PROGRAM, _write(tmp_path, _edit(base, one_row), "d.json"),
                       "--json")
    assert rc == 0, err
    c = strict_json(out)["comparisons"][0]
    assert [(m["rule"], m["task"]) for m in c["moved"]] == [("tuned lamb", "quadratic_ill_64")]
    assert c["differences"]["program-search-train"]["other"]["mean"] == 0.0

    # a baseline tuned to another rate since: skipped, not a disagreement
    def retuned(r):
        if r["rule"] == "tuned lion" and r["task"] == "mnist1d_cnn":
            r["lr"], r["scores"] = r["lr"] * 10, [s + 1.0 for s in r["scores"]]
    rc, out, err = cli("compare", PROGRAM, _write(tmp_path, _edit(base, retuned), "e.json"),
                       "--json")
    assert rc == 0, err
    c = strict_json(out)["comparisons"][0]
    assert [(x["rule"], x["task"]) for x in c["skipped"]] == [("tuned lion", "mnist1d_cnn")]
    assert c["unchecked"] == [] and c["moved"] == [] and c["agreement"] == 0.0

    # another seed count: no counterpart at all
    fewer = _edit({**base, "seeds": 4}, lambda r: r.update(scores=r["scores"][:4]))
    rc, _, err = cli("compare", PROGRAM, _write(tmp_path, fewer, "f.json"))
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
