"""The benchmarks behind ``lab bench``: output contract and registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

try:
    import benchmarks
except ImportError:  # plain `pytest` (not `python -m pytest`) without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks
from benchmarks import population


@pytest.fixture(scope="module")
def small_result():
    return population.run(populations=(4, 8), steps=20, repeats=1)


def test_population_result_contract(small_result):
    r = small_result
    top = {"benchmark", "task", "seeds", "steps", "device", "devices", "by_population",
           "speedup_vs_loop", "compile_seconds", "loop_compile_seconds", "agree"}
    assert top <= set(r)
    assert r["benchmark"] == "population"
    assert isinstance(r["task"], str) and r["task"]
    assert r["seeds"] == 2 and r["steps"] == 20
    assert isinstance(r["device"], str)
    assert isinstance(r["devices"], int) and r["devices"] >= 1
    assert r["agree"] is True
    for key in ("speedup_vs_loop", "compile_seconds", "loop_compile_seconds"):
        assert type(r[key]) is float and r[key] > 0, key
    assert [row["population"] for row in r["by_population"]] == [4, 8]
    for row in r["by_population"]:
        assert type(row["population"]) is int
        for key in ("evaluator_seconds", "loop_seconds", "speedup", "candidates_per_s"):
            assert type(row[key]) is float and row[key] > 0, key
        assert row["speedup"] == pytest.approx(row["loop_seconds"] / row["evaluator_seconds"])
        assert row["candidates_per_s"] == pytest.approx(
            row["population"] / row["evaluator_seconds"])
    # no middle 64 here: the middle population (8) gives the headline speedup
    assert r["speedup_vs_loop"] == r["by_population"][1]["speedup"]
    doc = json.dumps(r, allow_nan=False)
    assert json.loads(doc) == r


def test_population_genomes_differ():
    import numpy as np

    g = population.adam_population(5)
    lr = np.exp(np.asarray(g["learning_rate"]))
    assert lr.shape == (5,)
    assert lr[0] == pytest.approx(population.LR_RANGE[0], rel=1e-5)
    assert lr[-1] == pytest.approx(population.LR_RANGE[1], rel=1e-5)
    assert np.allclose(np.diff(np.log(lr)), np.log(lr[1] / lr[0]), rtol=1e-4)


def test_population_main_json_stdout(capsys):
    code = benchmarks.run_benchmark(
        "population", ["--json", "--populations", "2", "--steps", "10", "--repeats", "1"])
    assert code == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # exactly one document, nothing else on stdout
    assert doc["benchmark"] == "population" and doc["agree"] is True
    assert out.count("\n") == 1


def test_unknown_benchmark_names_known_ones():
    assert "population" in benchmarks.BENCHMARKS
    with pytest.raises(ValueError, match="population"):
        benchmarks.run_benchmark("populaton", [])
    with pytest.raises(ValueError, match="known benchmarks: population"):
        benchmarks.run_benchmark("zzz", [])
