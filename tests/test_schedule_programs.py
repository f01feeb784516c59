"""Program search over learning-rate schedules (``kind: program``, ``rule.signature:
schedule``): Adam's step times a program of ``(t, T)``, scored like update rules against tuned
Adam on every multiplier of the lr grid, keyed by the schedule's curve. Compiled once; stored as
the family ``schedule(adam)``; inspect names the known schedules and draws the curve; replay
tunes the learning rate; ``program:PATH`` reads schedule and drift files by their header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab import treeio
from lab.core.config import ConfigError, load_config
from lab.kinds.program import schedules as S
from lab.kinds.program.programs import genome_of, load_seed, program_of
from lab.kinds.program.signatures import SCHEDULE
from lab.kinds.program.text import to_source

SMALL = ["kind=program", "suite=tiny", "budget=8", "seeds=1", "rule.signature=schedule",
         "rule.seed=cosine", "rule.max_len=10", "rule.lr=20", "search.population=8",
         "search.children=4", "search.generations=3", "evaluator.devices=1",
         "search.lr_grid=[1.0, 3.0]", "output.top_k=2", "search.simplify=false"]


def test_schedule_search_compiles_once_and_stores_schedules(store, program_generations):
    from lab.core.loop import launch
    sizes, evos = program_generations["sizes"], program_generations["evolutions"]
    run_id = launch(load_config(None, SMALL), store, name="schedules")
    assert store.get_run(run_id)["status"] == "done"
    assert len(sizes) == 3 and all(s == [1] * len(s) for s in sizes), sizes
    evo = evos[-1]
    # the cache key of a schedule is its curve's hash: the seed's is optax's cosine decay's
    assert evo.keys([load_seed("cosine", "schedule")])[0] == S.fingerprint_known("cosine")[1]
    rows = store.best_members(run_id, k=10)
    assert {(r["kind"], r["name"]) for r in rows} == {("program", "schedule(adam)")}
    for r in rows:
        p = program_of(treeio.tree_from_npz(r["genome"]), "s", SCHEDULE)
        assert p.sig == SCHEDULE and "return multiplier" in to_source(p)


@pytest.mark.slow  # a search, replays and an export at two horizons
def test_schedule_inspect_replay_and_program_file_targets(cli, tmp_path):
    rc, _, err = cli("launch", "configs/schedule_smoke.yaml", "--set", "suite=tiny", "--set",
                     "budget=8", "--set", "seeds=1", "--set", "search.generations=2", "--set",
                     "search.population=4", "--set", "search.children=2", "--name", "sch")
    assert rc == 0, err
    rc, out, err = cli("inspect", "sch:1", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["name"] == "schedule(adam)" and "def " in info["source"]
    assert info["closest"]["name"].startswith(("optax.", "REX"))
    assert info["hash"] == info["store_key"]  # named by its curve, the key it is stored under
    assert info["plot"] and info["plot"].endswith(".png")
    rc, out, err = cli("replay", "sch:1", "--suite", "tiny", "--seeds", "2", "--tune-lr",
                       "--baselines", "adam", "--json")
    assert rc == 0, err
    rules = {r["rule"] for r in json.loads(out)["rows"]}
    assert rules == {"sch:1", "sch:1 (lr tuned)", "tuned adam"}
    # export: 1x and 4x horizons, beside tuned Adam and the seed schedules tuned alike
    rc, out, err = cli("export", "sch:1", "--name", "sch", "--out", str(tmp_path / "art"),
                       "--suite", "tiny", "--seeds", "2")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "art" / "sch" / "metrics.json").read_text())
    for key, scale in (("heldout", 1), ("heldout_4x", 4)):
        held = metrics[key]
        assert held["horizon_scale"] == scale and held["seeds"] == 2
        seeds = ("cosine", "rex", "warmup_cosine") if scale == 1 else ("cosine",)
        assert {"sch:1 (lr tuned)", "tuned adam"} | {f"{n} schedule (lr tuned)" for n in
                                                     seeds} <= set(held["summary"])
    readme = (tmp_path / "art" / "sch" / "README.md").read_text()
    assert "horizons 4x" in readme and "rex schedule (lr tuned)" in readme
    # program files: a schedule is Adam times it (the constant one is Adam), a drift a drift
    for name, sig, equals in (("rex", "schedule", "REX"), ("constant", "schedule",
                                                            "optax.constant_schedule")):
        path = tmp_path / f"{name}.prog"
        path.write_text(to_source(load_seed(name, sig)))
        rc, out, err = cli("inspect", f"program:{path}", "--json")
        assert rc == 0, err
        info = json.loads(out)
        assert info["name"] == "schedule(adam)" and info["equals"][0] == equals
    assert "adam" in info["equals"]  # Adam at a constant schedule is Adam, across kinds
    path = tmp_path / "dpo.prog"
    path.write_text(to_source(load_seed("dpo", "drift")))
    rc, out, err = cli("inspect", f"program:{path}", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["kind"] == "drift" and info["equals"] == ["dpo"]


def test_schedule_configs_are_checked():
    cfg = load_config("configs/schedule_smoke.yaml")
    assert cfg.rule.signature == "schedule" and cfg.suite == "smoke"
    assert load_config("configs/schedule.yaml").rule.signature == "schedule"
    with pytest.raises(ConfigError, match=r"rule.seed: 'ppo_clip' is no schedule seed program"):
        load_config(None, [*SMALL, "rule.seed=ppo_clip"])
    with pytest.raises(ConfigError, match=r"kind 'program' \(supervised\)|kind 'program' "
                                          r"cannot train on suite 'rl-smoke'"):
        load_config(None, [*SMALL, "suite=rl-smoke"])


def test_batched_schedule_fingerprints_equal_one_by_one():
    progs = [load_seed(n, "schedule") for n in ("cosine", "rex", "linear")]
    batched = S.fingerprints([genome_of(p, 12) for p in progs])
    for p, (fp, h) in zip(progs, batched, strict=True):
        fp1, h1 = S.fingerprint(p)
        assert h == h1 and np.array_equal(fp, fp1)
