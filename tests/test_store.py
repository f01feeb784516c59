import math
import re
import sqlite3

import numpy as np
import pytest

from lab.core.store import SCHEMA_VERSION, Store, StoreError, default_store_path
from lab.treeio import tree_from_npz, tree_to_npz

CTX = "c0ffee"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "sub" / "lab.db") as s:
        yield s


def new_run(store, name="smoke", context=CTX):
    return store.create_run(
        name, "program", {"suite": "smoke", "lr": [1e-3, math.nan]}, "cfg1", "0.1.0",
        context, {"suite": "smoke", "budget": 10},
    )  # fmt: skip


def cand(h, parent=None):
    genome = tree_to_npz({"ops": np.arange(4, dtype=np.int32), "c": np.float32(h.count("a"))})
    return {"hash": h, "kind": "program", "name": f"p-{h}", "genome": genome,
            "readable": f"step = g * {h}", "fingerprint": None, "parent": parent}  # fmt: skip


def ev(h, fitness, context=CTX, diverged=False):
    return {"hash": h, "context": context, "fitness": fitness, "diverged": diverged,
            "metrics": {"final_loss": np.float32(0.25),
                        "curve": np.array([1.0, math.inf])}}  # fmt: skip


def stats(best, **kw):
    return {"best": best, "mean": best + 1, "hits": 0, "misses": 2, "hit_rate": 0.0,
            "evaluated": 2, "seconds": 0.5, "candidates_per_s": 4.0, **kw}  # fmt: skip


def record(store, run, idx, fits, hits=(), **kw):
    """Records generation ``idx`` with candidates ``{hash: fitness}`` all evaluated fresh."""
    new = [h for h in fits if h not in hits]
    store.record_generation(
        run, idx, [cand(h) for h in new], [ev(h, fits[h]) for h in new],
        [{"hash": h, "fitness": f} for h, f in fits.items()],
        stats(min(f for f in fits.values() if math.isfinite(f)), **kw), hit_hashes=list(hits),
    )  # fmt: skip


def test_pragmas_and_layout(store, tmp_path):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    run = new_run(store)
    assert store.run_dir(run) == tmp_path / "sub" / "runs" / run and store.run_dir(run).is_dir()
    with pytest.raises(StoreError, match="not a run id"):
        store.run_dir("../escape")


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("LAB_STORE", raising=False)
    assert default_store_path() == default_store_path().__class__("lab.db")
    monkeypatch.setenv("LAB_STORE", str(tmp_path / "env" / "x.db"))
    with Store() as s:
        assert s.path == tmp_path / "env" / "x.db" and s.path.exists()


def test_schema_version_recorded_and_future_refused(tmp_path):
    path = tmp_path / "lab.db"
    Store(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))}.*version {SCHEMA_VERSION + 1}"):
        Store(path)


def _as_version_2(path) -> None:
    """Rewrites a store in version 2's layout: the references table as it was (RL returns in
    ``final_loss``, an ``optimizer`` column, a learning rate of 0 for RL rows)."""
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE refs")
        raw.execute("CREATE TABLE refs (task TEXT NOT NULL, budget INTEGER NOT NULL, seeds "
                    "INTEGER NOT NULL, optimizer TEXT NOT NULL, context TEXT NOT NULL, lr REAL, "
                    "final_loss REAL, losses TEXT, created REAL, PRIMARY KEY (task, budget, "
                    "seeds, optimizer, context))")
        raw.executemany("INSERT INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            ("quadratic", 100, 2, "adam", "v1-grid", 0.01, 0.125, "[0.1, 0.15]", 1.0),
            ("cartpole", 4096, 1, "ppo_clip", "rl-v2-1", 0.0, 207.5, "[207.5]", 2.0)])
        raw.execute("ALTER TABLE members DROP COLUMN selection")
        raw.execute("DELETE FROM schema_version")
        raw.execute("INSERT INTO schema_version VALUES (2)")
    raw.close()


def test_version_2_store_is_migrated_naming_what_references_measure(tmp_path):
    """Version 2 kept RL returns in a column named final_loss: version 3's references carry
    their metric, every row is kept, and a return has no learning rate."""
    path = tmp_path / "lab.db"
    with Store(path) as s:
        run = new_run(s)
        record(s, run, 0, {"aa01": 0.5})
    _as_version_2(path)
    with Store(path) as s:
        loss = s.get_ref("quadratic", 100, 2, "adam", "v1-grid")
        ret = s.get_ref("cartpole", 4096, 1, "ppo_clip", "rl-v2-1")
        assert (loss["metric"], loss["value"], loss["values"], loss["lr"]) == (
            "final_loss", 0.125, [0.1, 0.15], 0.01)
        assert (ret["metric"], ret["value"], ret["values"], ret["lr"]) == (
            "final_return", 207.5, [207.5], None)
        assert [m["hash"] for m in s.best_members(run)] == ["aa01"]
        versions = [r[0] for r in s.conn.execute("SELECT version FROM schema_version")]
        assert max(versions) == SCHEMA_VERSION == 4


def test_version_1_store_is_migrated_keeping_its_generations(tmp_path):
    """A store written before the diverged column gains it (and then version 3's references);
    nothing stored is lost."""
    path = tmp_path / "lab.db"
    with Store(path) as s:
        run = new_run(s)
        s.record_generation(run, 0, [], [], [], {"best": 1.5, "mean": 2.0, "seconds": 0.1})
    _as_version_2(path)
    with sqlite3.connect(path) as raw:  # back to version 1's layout
        raw.execute("ALTER TABLE generations DROP COLUMN diverged")
        raw.execute("UPDATE schema_version SET version = 1")
    raw.close()
    with Store(path) as s:
        (gen,) = s.generations(run)
        assert gen["best"] == 1.5 and gen["diverged"] is None
        s.record_generation(run, 1, [], [], [], {"best": 1.0, "mean": 1.2, "diverged": 0.25})
        assert s.generations(run)[1]["diverged"] == 0.25
        assert s.get_ref("cartpole", 4096, 1, "ppo_clip", "rl-v2-1")["metric"] == "final_return"
        versions = [r[0] for r in s.conn.execute("SELECT version FROM schema_version")]
        assert sorted(versions) == [1, 2, 3, 4]


def _finalists(store, run, finals: dict, selection: dict) -> None:
    store.record_generation(run, 1, [cand(h) for h in finals if h not in ("aa01",)], [],
                            [{"hash": h, "final": f, **({"selection": selection[h]}
                                                        if h in selection else {})}
                             for h, f in finals.items()], stats(0.0))


def test_selection_ranks_finalists_ahead_of_their_final_score(store):
    """A run that selects by another score (a program search's funnel): the finalists with a
    selection score come first, by it, then the others by their final score; the run's best is
    the selected finalist at its final score."""
    run = new_run(store)
    record(store, run, 0, {"aa01": 0.5})
    _finalists(store, run, {"aa01": 0.1, "bb02": 0.5, "cc03": 0.05, "dd04": 0.3},
               {"aa01": 0.9, "bb02": 0.2, "dd04": math.nan})
    best = store.best_members(run)
    assert [m["hash"] for m in best] == ["bb02", "aa01", "cc03", "dd04"]
    assert [m["selection"] for m in best] == [0.2, 0.9, None, None]  # NaN: no selection
    assert [m["fitness"] for m in best] == [0.5, 0.1, 0.05, 0.3]  # the final scores
    got = store.get_run(run)
    assert (got["best_hash"], got["best"]) == ("bb02", 0.5)


def test_version_3_store_gains_the_selection_column(tmp_path):
    """Version 3 had no selection score: its runs keep their ranking by final score."""
    path = tmp_path / "lab.db"
    with Store(path) as s:
        run = new_run(s)
        record(s, run, 0, {"aa01": 0.5})
        _finalists(s, run, {"aa01": 0.4, "bb02": 0.2}, {})
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE members DROP COLUMN selection")
        raw.execute("DELETE FROM schema_version")
        raw.execute("INSERT INTO schema_version VALUES (3)")
    raw.close()
    with Store(path) as s:
        assert [(m["hash"], m["final"], m["selection"]) for m in s.best_members(run)] == [
            ("bb02", 0.2, None), ("aa01", 0.4, None)]
        assert max(r[0] for r in s.conn.execute("SELECT version FROM schema_version")) == 4


def test_refuses_files_that_are_not_stores(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(StoreError, match="not a lab store"):
        Store(other)


def test_runs_round_trip(store):
    run = new_run(store)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run)
    ids = {new_run(store, name=f"r{i}") for i in range(30)}
    assert len(ids) == 30 and run not in ids
    (got,) = [r for r in store.runs() if r["id"] == run]
    assert store.runs()[0]["id"] == run  # oldest first
    assert got["status"] == "running" and got["generations"] == 0 and got["best"] is None
    assert got["config"] == {"suite": "smoke", "lr": [1e-3, None]}  # NaN -> null
    assert got["context"] == CTX and got["context_json"] == {"suite": "smoke", "budget": 10}
    assert got["code_version"] == "0.1.0" and got["config_hash"] == "cfg1"
    store.finish_run(run, "done", best=0.5, best_hash="aa")
    got = store.get_run(run)
    assert (got["status"], got["best"], got["best_hash"]) == ("done", 0.5, "aa")
    assert got["finished"] >= got["created"]
    with pytest.raises(StoreError, match="status"):
        store.finish_run(run, "exploded")


def test_generations_round_trip(store):
    run = new_run(store)
    record(store, run, 0, {"aa01": 0.5, "bb02": math.nan})
    record(store, run, 1, {"aa01": 0.7, "cc03": -0.25}, hits=["aa01"], checkpoint="ckpt/1")
    got = store.get_run(run)
    assert got["generations"] == 2 and got["best"] == -0.25 and got["best_hash"] == "cc03"

    best = store.best_members(run)
    assert [m["hash"] for m in best] == ["cc03", "aa01", "bb02"]  # NaN (NULL) last
    assert best[1]["fitness"] == 0.5 and best[1]["generation"] == 0  # min fitness, first gen
    assert best[2]["fitness"] is None
    assert best[0]["readable"] == "step = g * cc03" and best[0]["kind"] == "program"
    np.testing.assert_array_equal(tree_from_npz(best[0]["genome"])["ops"], np.arange(4))
    assert len(store.best_members(run, k=1)) == 1

    gens = store.generations(run)
    assert [g["idx"] for g in gens] == [0, 1]
    assert gens[1]["best"] == -0.25 and gens[1]["checkpoint"] == "ckpt/1"
    assert gens[0]["misses"] == 2 and gens[0]["checkpoint"] is None

    (e,) = store.evaluations_for("aa01")
    assert e["hits"] == 1 and e["first_run"] == run and e["first_generation"] == 0
    assert e["diverged"] is False and e["metrics"] == {"final_loss": 0.25, "curve": [1.0, None]}

    fp = tree_to_npz(np.linspace(0, 1, 5))
    store.set_fingerprint("cc03", fp)
    c = store.candidate("cc0")
    assert c["hash"] == "cc03" and c["fingerprint"] == fp and c["name"] == "p-cc03"
    with pytest.raises(StoreError, match="no candidate"):
        store.set_fingerprint("ffff", fp)


def test_candidate_prefix(store):
    run = new_run(store)
    record(store, run, 0, {"abc1": 1.0, "abd2": 2.0, "ab": 3.0})
    assert store.candidate("ab")["hash"] == "ab"  # exact beats prefix
    assert store.candidate("abc")["hash"] == "abc1"
    with pytest.raises(StoreError, match="ambiguous.*abc1.*abd2"):
        store.candidate("a")
    with pytest.raises(StoreError, match="no candidate"):
        store.candidate("zz")


def test_cache_hits_only_in_same_context(store):
    run = new_run(store)
    record(store, run, 0, {"aa01": 0.5, "bb02": 1.5})
    store.record_generation(run, 1, [], [ev("aa01", 9.0, context="other", diverged=True)],
                            [], stats(0.0))  # fmt: skip
    hits = store.lookup(["aa01", "bb02", "zz99", "aa01"], CTX)
    assert set(hits) == {"aa01", "bb02"}
    assert hits["aa01"] == {"fitness": 0.5, "diverged": False,
                            "metrics": {"final_loss": 0.25, "curve": [1.0, None]}}  # fmt: skip
    assert store.lookup(["aa01", "bb02"], "other") == {
        "aa01": {"fitness": 9.0, "diverged": True,
                 "metrics": {"final_loss": 0.25, "curve": [1.0, None]}}}  # fmt: skip
    assert store.lookup(["aa01"], "nowhere") == {}
    store.record_generation(run, 2, [], [], [], stats(0.0), ["aa01", "aa01"], context="other")
    assert {e["context"]: e["hits"] for e in store.evaluations_for("aa01")} == {CTX: 0, "other": 2}
    many = [f"{i:04x}" for i in range(1200)] + ["bb02"]
    assert set(store.lookup(many, CTX)) == {"bb02"}


@pytest.mark.parametrize("bad", ["unknown_member", "missing_key"])
def test_failed_generation_rolls_back(store, bad):
    run = new_run(store)
    record(store, run, 0, {"aa01": 0.5})
    members = [{"hash": "dd04", "fitness": -1.0}]
    if bad == "unknown_member":  # a member that is no candidate: a foreign-key error
        members.append({"hash": "nope", "fitness": -2.0})
    else:
        members.append({"hash": "dd04"})  # no fitness: a KeyError after the inserts began
    with pytest.raises(StoreError, match="generation 1"):
        store.record_generation(run, 1, [cand("dd04")], [ev("dd04", -1.0)], members,
                                stats(-1.0), hit_hashes=["aa01"])  # fmt: skip
    with pytest.raises(StoreError, match="no candidate"):
        store.candidate("dd04")
    assert store.lookup(["dd04"], CTX) == {}
    assert store.evaluations_for("aa01")[0]["hits"] == 0
    assert [g["idx"] for g in store.generations(run)] == [0]
    got = store.get_run(run)
    assert got["generations"] == 1 and got["best"] == 0.5 and got["best_hash"] == "aa01"
    record(store, run, 1, {"dd04": -1.0})  # the store is still usable
    assert store.get_run(run)["best_hash"] == "dd04"


def test_unknown_run_refused(store):
    with pytest.raises(StoreError, match="no run"):
        record(store, "20000101-000000-0000", 0, {"aa01": 0.5})
    assert store.lookup(["aa01"], CTX) == {}


def test_second_store_sees_commits(store):
    run = new_run(store)
    with Store(store.path) as other:
        assert other.get_run(run)["name"] == "smoke"
        record(store, run, 0, {"aa01": 0.5})
        assert [m["hash"] for m in other.best_members(run)] == ["aa01"]
        assert other.get_run(run)["generations"] == 1
        other.finish_run(run, "interrupted")
    assert store.get_run(run)["status"] == "interrupted"


def test_get_run_by_prefix_and_name(store):
    first = new_run(store, name="smoke")
    second = new_run(store, name="smoke")
    third = new_run(store, name="quickstart")
    assert store.get_run("smoke")["id"] == second  # the latest of that name
    ids = [first, second, third]
    for run in ids:  # the shortest unique prefix of each id finds it
        n = min(n for n in range(1, len(run) + 1) if sum(i.startswith(run[:n]) for i in ids) == 1)
        assert store.get_run(run[:n])["id"] == run
        assert store.get_run(run)["id"] == run
    with pytest.raises(StoreError, match=rf"ambiguous: {first}, {second}, {third}"):
        store.get_run("20")
    with pytest.raises(StoreError, match="no run '' among 3 runs"):
        store.get_run("")
    with pytest.raises(StoreError, match=r"no run 'smok'.*closest: smoke"):
        store.get_run("smok")
    with pytest.raises(StoreError, match="quickstart"):
        store.get_run("quikstart")
    with pytest.raises(StoreError, match=re.escape(str(store.path))):
        store.get_run("zzzzzzzz")


def test_refs_cache(store):
    key = ("quadratic", 100, 3, "adam", "r1")
    assert store.get_ref(*key) is None
    store.put_ref(*key, "final_loss", 0.125, [0.1, 0.15, math.nan], lr=1e-2)
    ref = store.get_ref(*key)
    assert ref["lr"] == 1e-2 and ref["value"] == 0.125 and ref["metric"] == "final_loss"
    assert ref["values"] == [0.1, 0.15, None]
    assert store.get_ref("quadratic", 100, 3, "adam", "r2") is None
    store.put_ref(*key, "final_loss", 0.5, [0.5], lr=1e-3)
    assert store.get_ref(*key)["lr"] == 1e-3
    store.put_ref("cartpole", 512, 1, "random", "rl", "final_return", 9.5, [9.5])
    ret = store.get_ref("cartpole", 512, 1, "random", "rl")
    assert ret["metric"] == "final_return" and ret["lr"] is None
