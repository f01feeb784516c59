"""The benchmarks behind ``lab bench``: every registered benchmark's output contract (one strict
JSON document on stdout with its gated figures as plain numbers; bad arguments exit 2), then
what each one measures."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

try:
    import benchmarks
except ImportError:  # plain `pytest` (not `python -m pytest`) without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks
from benchmarks import population

# rl's small run is three PPO compiles (~25 s) and scaling's starts JAX processes: with -m slow
# (`lab bench rl` and `lab bench scaling` run in the acceptance checks)
SLOW = {"rl", "scaling"}
BENCH = [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [])
         for n in sorted(benchmarks.BENCHMARKS)]
_RESULTS: dict[str, dict] = {}


def _plain_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def small_result(name: str, capsys) -> dict:
    """``lab bench NAME --json SMALL``'s document, run once per session."""
    if name not in _RESULTS:
        module = importlib.import_module(benchmarks.BENCHMARKS[name])
        capsys.readouterr()
        assert benchmarks.run_benchmark(name, ["--json", *module.SMALL]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1, "exactly one document, nothing else on stdout"
        _RESULTS[name] = json.loads(out, parse_constant=lambda c: pytest.fail(c))
    return _RESULTS[name]


@pytest.mark.parametrize("name", sorted(benchmarks.BENCHMARKS))
def test_registered_benchmarks_are_modules_with_main_run_gated_small(name):
    module = importlib.import_module(benchmarks.BENCHMARKS[name])
    assert benchmarks.BENCHMARKS[name] == f"benchmarks.{name}"
    assert callable(module.main) and callable(module.run)
    assert module.GATED and all(isinstance(k, str) for k in module.GATED)
    assert isinstance(module.SMALL, tuple)


@pytest.mark.parametrize("name", BENCH)
def test_small_run_prints_one_strict_json_document_with_its_gated_figures(name, capsys):
    r = small_result(name, capsys)
    assert r["benchmark"] == name
    for key in importlib.import_module(benchmarks.BENCHMARKS[name]).GATED:
        assert _plain_number(r[key]) and r[key] > 0, (key, r.get(key))
    assert json.loads(json.dumps(r, allow_nan=False)) == r


@pytest.mark.parametrize("name", sorted(benchmarks.BENCHMARKS))
def test_bad_arguments_exit_2_with_nothing_on_stdout(name, capsys):
    try:
        code = benchmarks.run_benchmark(name, ["--json", "--bogus"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unrecognized arguments: --bogus" in captured.err


def test_unknown_benchmark_names_known_ones():
    with pytest.raises(ValueError, match="population"):
        benchmarks.run_benchmark("populaton", [])
    known = ", ".join(sorted(benchmarks.BENCHMARKS))
    with pytest.raises(ValueError, match=f"known benchmarks: {known}"):
        benchmarks.run_benchmark("zzz", [])


# ---- population ----------------------------------------------------------------------------

def test_population_result_contract(capsys):
    r = small_result("population", capsys)
    top = {"benchmark", "task", "seeds", "steps", "device", "devices", "by_population",
           "speedup_vs_loop", "compile_seconds", "loop_compile_seconds", "agree"}
    assert top <= set(r)
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
    # XLA's memory analysis per candidate: at least its own arguments (the Adam genome's
    # log-hyperparameters and 2 seeds' keys) and outputs (2 seeds' metrics)
    assert r["memory_bytes_per_candidate"] == r["by_population"][1]["memory_bytes_per_candidate"]
    assert all(type(row["memory_bytes_per_candidate"]) is float for row in r["by_population"])
    floor = 4 * len(population.adam_population(1)) + 2 * 8 + 2 * 4 * (3 + 8)
    assert r["memory_bytes_per_candidate"] >= floor


def test_population_genomes_differ():
    import numpy as np

    g = population.adam_population(5)
    lr = np.exp(np.asarray(g["learning_rate"]))
    assert lr.shape == (5,)
    assert lr[0] == pytest.approx(population.LR_RANGE[0], rel=1e-5)
    assert lr[-1] == pytest.approx(population.LR_RANGE[1], rel=1e-5)
    assert np.allclose(np.diff(np.log(lr)), np.log(lr[1] / lr[0]), rtol=1e-4)


# ---- programs ------------------------------------------------------------------------------
from benchmarks import programs  # noqa: E402

PROGRAMS_GATED = ("interpreter_overhead", "speedup_vs_compile_each", "n_sampled")
PROGRAMS_NUMBERS = ("population", "steps", "seeds", "repeats", "devices",
                    "adam_interpreter_seconds", "adam_optax_seconds",
                    "interpreter_compile_seconds", "optax_compile_seconds", "max_rel_diff",
                    "compile_seconds_per_program", "run_seconds_per_program_compiled",
                    "compile_each_seconds", "interpreter_seconds",
                    "speedup_vs_compile_each_first_generation", "program_length_mean",
                    "total_seconds")


def test_programs_result_contract(capsys):
    r = small_result("programs", capsys)
    assert r["benchmark"] == "programs"
    assert r["task"] == "quadratic_ill_8"
    assert (r["population"], r["steps"], r["seeds"], r["n_sampled"]) == (8, 10, 1, 2)
    assert isinstance(r["device"], str) and r["device"]
    assert isinstance(r["backend"], str) and r["backend"]
    for key in PROGRAMS_GATED + PROGRAMS_NUMBERS:
        assert _plain_number(r[key]), (key, r[key])
    assert type(r["n_sampled"]) is int
    assert r["interpreter_overhead"] > 0 and r["speedup_vs_compile_each"] > 0
    assert r["interpreter_overhead"] == pytest.approx(
        r["adam_interpreter_seconds"] / r["adam_optax_seconds"])
    assert r["compile_each_seconds"] == pytest.approx(
        8 * (r["compile_seconds_per_program"] + r["run_seconds_per_program_compiled"]))
    assert r["speedup_vs_compile_each"] == pytest.approx(
        r["compile_each_seconds"] / r["interpreter_seconds"])
    assert r["agree"] is True and r["max_rel_diff"] <= programs.RTOL
    assert r["cache_hit_rate"] is None  # skipped
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_programs_distinct_and_deterministic():
    from lab.kinds.program.ir import is_valid, symbolic_hash
    from lab.kinds.program.programs import MAX_LEN, genome_of

    ps = programs.distinct_programs(40)
    assert len(ps) == 40
    assert len({symbolic_hash(p) for p in ps}) == 40
    assert all(is_valid(p) and len(p) <= MAX_LEN for p in ps)
    assert all(genome_of(p)["op"].shape == (MAX_LEN,) for p in ps)
    assert [symbolic_hash(p) for p in programs.distinct_programs(40)] == \
        [symbolic_hash(p) for p in ps]


def test_programs_arguments_reach_run(monkeypatch, capsys):
    seen = {}
    programs_result = {"benchmark": "programs", "agree": True, "backend": "gpu",
                       "speedup_vs_compile_each": 20.0, "interpreter_overhead": 1.1}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return programs_result

    monkeypatch.setattr(programs, "run", fake_run)
    code = benchmarks.run_benchmark("programs", [
        "--json", "--task", "quadratic_ill_8", "--population", "8", "--steps", "10",
        "--sampled", "2", "--skip-search"])
    assert code == 0
    assert seen == {"task": "quadratic_ill_8", "population": 8, "steps": 10, "seeds": 1,
                    "n_sampled": 2, "repeats": programs.DEFAULT_REPEATS, "skip_search": True}
    out = capsys.readouterr().out
    assert json.loads(out) == programs_result  # exactly one document, nothing else on stdout
    assert out.count("\n") == 1


def test_programs_defaults_are_the_pinned_configuration(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(programs, "run",
                        lambda **kw: seen.update(kw) or {"agree": False, "max_rel_diff": 0.5})
    monkeypatch.setattr(programs, "_table", lambda result: None)
    assert benchmarks.run_benchmark("programs", []) == 1  # losses differ: exit 1
    assert seen == {"task": None, "population": 256, "steps": None, "seeds": 1, "n_sampled": 16,
                    "repeats": programs.DEFAULT_REPEATS, "skip_search": False}
    assert programs.DEFAULT_TASK == "digits_mlp" and programs.DEFAULT_STEPS == 100
    assert "differ" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--population", "0"], "expected a positive integer"),
    (["--sampled", "x"], "expected a positive integer"),
])
def test_programs_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        benchmarks.run_benchmark("programs", argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert "lab bench programs" in captured.err


def test_programs_search_unavailable_fails_before_timing(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "program_smoke.yaml"
    with pytest.raises(programs.SearchUnavailable, match="does not exist"):
        programs.run(search_config=missing)  # raised before any timing: fast
    monkeypatch.setattr(programs, "SEARCH_CONFIG", missing)
    assert benchmarks.run_benchmark("programs", ["--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no document, no fake number
    assert "does not exist" in captured.err and "--skip-search" in captured.err


def test_programs_cache_hit_rate_sums_generations(monkeypatch):
    import lab.core.loop
    import lab.core.store

    class FakeStore:
        def __init__(self, path):
            self.path = path

        def generations(self, run_id):
            assert run_id == "run-1"
            return [{"hits": 0, "misses": 4}, {"hits": 1, "misses": 3}, {"hits": 2, "misses": 2}]

        def close(self):
            pass

    monkeypatch.setattr(programs, "_search_config", lambda config, overrides: "cfg")
    monkeypatch.setattr(lab.core.store, "Store", FakeStore)
    monkeypatch.setattr(lab.core.loop, "launch", lambda cfg, store: "run-1")
    r = programs.measure_cache_hit_rate()
    assert r["cache_hit_rate"] == pytest.approx(3 / 12)
    assert (r["search_hits"], r["search_misses"], r["search_generations"]) == (3, 9, 3)

    def broken(cfg, store):
        raise ValueError("kind 'program' is not searchable yet")

    monkeypatch.setattr(lab.core.loop, "launch", broken)
    with pytest.raises(programs.SearchUnavailable, match="launching .* failed.*not searchable"):
        programs.measure_cache_hit_rate()


# ---- lopt ----------------------------------------------------------------------------------

LOPT_GATED = ("inner_steps_per_second", "cost_vs_adam")
LOPT_NUMBERS = ("adam_inner_steps_per_second", "learned_inner_steps_per_second",
                "seconds_per_call", "adam_seconds_per_call", "compile_seconds",
                "adam_compile_seconds", "first_call_seconds", "adam_first_call_seconds",
                "start_seconds", "adam_start_seconds", "total_seconds")


def test_lopt_result_contract(capsys):
    r = small_result("lopt", capsys)
    assert r["benchmark"] == "lopt"
    assert r["tasks"] == ["quadratic_ill_8"]
    assert (r["population"], r["unroll"], r["repeats"], r["devices"]) == (2, 3, 1, 1)
    assert r["inner_steps_per_call"] == 2 * 1 * 3
    assert r["rule"] == "mlp(hidden=4,depth=1)"
    assert isinstance(r["device"], str) and r["device"]
    assert isinstance(r["backend"], str) and r["backend"]
    for key in LOPT_GATED + LOPT_NUMBERS:
        assert _plain_number(r[key]) and r[key] > 0, (key, r[key])
    assert r["inner_steps_per_second"] == pytest.approx(6 / r["seconds_per_call"])
    assert r["adam_inner_steps_per_second"] == pytest.approx(6 / r["adam_seconds_per_call"])
    assert r["cost_vs_adam"] == pytest.approx(
        r["adam_inner_steps_per_second"] / r["inner_steps_per_second"])
    assert r["diverged"] == 0 and r["adam_diverged"] == 0
    assert json.loads(json.dumps(r, allow_nan=False)) == r


@pytest.mark.parametrize("argv, message", [
    (["--json", "--population", "0"], "expected a positive integer"),
    (["--tasks", "digits_mlpp"], "digits_mlp"),  # unknown task: one line, the closest names
])
def test_lopt_bad_arguments(capsys, argv, message):
    try:
        code = benchmarks.run_benchmark("lopt", argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


# ---- rl ------------------------------------------------------------------------------------
from benchmarks import rl  # noqa: E402

RL_GATED = ("env_steps_per_second", "population_env_steps_per_second", "drift_cost_vs_clip")
RL_NUMBERS = ("lpo_env_steps_per_second", "population_speedup_vs_single", "clip_seconds",
              "lpo_seconds", "population_seconds", "clip_compile_seconds",
              "lpo_compile_seconds", "population_compile_seconds", "clip_first_call_seconds",
              "lpo_first_call_seconds", "population_first_call_seconds", "total_seconds",
              "drift_program_cost_vs_clip", "program_seconds", "program_compile_seconds",
              "program_first_call_seconds", "level_cost_vs_clip", "level_seconds",
              "level_compile_seconds", "level_first_call_seconds")


@pytest.mark.slow  # three PPO compiles (~25 s); `lab bench rl` runs in the acceptance check
def test_rl_result_contract(capsys):
    r = small_result("rl", capsys)  # 4 updates of 4 envs x 128 steps
    assert r["benchmark"] == "rl" and r["env"] == "CartPole-v1"
    assert (r["steps"], r["population"], r["repeats"], r["population_repeats"], r["hidden"],
            r["devices"]) == (2048, 2, 1, 1, 4, 1)
    assert (r["updates"], r["num_envs"], r["num_steps"], r["env_steps"]) == (4, 4, 128, 2048)
    assert r["objective"] == "lpo(hidden=4)"
    assert r["lpo_weights"] == 8 * 4 + 4
    assert r["sigma"] == rl.SIGMA == 0.03
    for key in ("device", "backend", "jax_version"):
        assert isinstance(r[key], str) and r[key], key
    import jax
    assert r["jax_version"] == jax.__version__
    for key in RL_GATED + RL_NUMBERS:
        assert _plain_number(r[key]) and r[key] > 0, (key, r[key])
    for key in ("final_return", "lpo_final_return", "program_final_return",
                "population_final_return", "diverged"):
        assert _plain_number(r[key]), (key, r[key])
    assert r["final_return"] > 0  # CartPole pays 1 per step
    assert r["diverged"] == 0
    assert r["env_steps_per_second"] == pytest.approx(2048 / r["clip_seconds"])
    assert r["lpo_env_steps_per_second"] == pytest.approx(2048 / r["lpo_seconds"])
    assert r["population_env_steps_per_second"] == pytest.approx(
        2 * 2048 / r["population_seconds"])
    assert r["drift_cost_vs_clip"] == pytest.approx(r["lpo_seconds"] / r["clip_seconds"])
    assert r["drift_program_cost_vs_clip"] == pytest.approx(
        r["program_seconds"] / r["clip_seconds"])
    assert r["program_statements"] == 32
    assert r["level_cost_vs_clip"] == pytest.approx(r["level_seconds"] / r["clip_seconds"])
    assert r["level_seed"] == rl.LEVEL_SEED and _plain_number(r["level_final_return"])
    # PPO-clip as a program trains as PPO-clip (the same gradients, through the interpreter)
    assert r["program_final_return"] == pytest.approx(r["final_return"], rel=1e-3)
    assert r["population_speedup_vs_single"] == pytest.approx(
        r["population_env_steps_per_second"] / r["lpo_env_steps_per_second"])
    for name in ("clip", "lpo", "program", "population"):
        assert r[f"{name}_compile_seconds"] == pytest.approx(
            max(r[f"{name}_first_call_seconds"] - r[f"{name}_seconds"], 1e-6))
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_rl_population_is_noisy_lpo():
    import numpy as np

    from lab.kinds.drift.objectives import LPOSpec, lpo

    objective, g = rl.lpo_population(3, hidden=128)
    assert objective.name == lpo().name == "lpo"  # the family default, 1,152 weights
    assert objective is lpo(LPOSpec(hidden=128))
    assert g["w0"].shape == (3, 8, 128) and g["w1"].shape == (3, 128)
    assert sum(np.size(x) for x in objective.genome.values()) == 1152
    for name, x in g.items():
        noise = np.asarray(x) - np.asarray(objective.genome[name])[None]
        assert np.std(noise) == pytest.approx(rl.SIGMA, rel=0.2), name
        assert not np.allclose(noise[0], noise[1]), name  # the candidates differ


def test_rl_defaults_are_the_reference_configuration(monkeypatch, capsys):
    seen = {}
    result = {k: 1.0 for k in rl.GATED}
    monkeypatch.setattr(rl, "run", lambda **kw: seen.update(kw) or result)
    monkeypatch.setattr(rl, "_table", lambda r: print("drift cost vs clip"))
    assert benchmarks.run_benchmark("rl", []) == 0  # the table, on stdout
    assert seen == {"steps": 500_000, "population": 16, "repeats": 2, "population_repeats": 1,
                    "hidden": 128, "devices": 0, "peer": None, "peer_seeds": 8}
    assert "drift cost vs clip" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--json", "--population", "0"], "expected a positive integer"),
    (["--steps", "x"], "expected a positive integer"),
    (["--json", "--devices", "999"], "999"),  # more devices than JAX sees: one line
])
def test_rl_bad_arguments(capsys, argv, message):
    try:
        code = benchmarks.run_benchmark("rl", argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err




# A stand-in for PureJaxRL's ppo.py: make_train(config) -> train(rng) -> {"metrics": ...}, with
# 10 updates of 2 steps x 3 envs; an episode ends at every step of update u with return u.
FAKE_PEER = """
import jax.numpy as jnp
SEEN = []
def make_train(config):
    SEEN.append(dict(config))
    def train(rng):
        u = jnp.arange(10.0)[:, None, None] * jnp.ones((10, 2, 3))
        return {"metrics": {"returned_episode_returns": u + 0 * rng.sum(),
                            "returned_episode": jnp.ones((10, 2, 3), bool)}}
    return train
"""


def test_rl_peer_runs_the_task_configuration(tmp_path):
    (tmp_path / "ppo.py").write_text(FAKE_PEER)
    module = rl.load_peer(tmp_path)  # a folder holding ppo.py, or the file itself
    from tasks.rl import make_env_task
    task = make_env_task("cartpole_bench", rl.ENV_ID, steps=4096)
    config = rl.peer_config(task, 4096)
    assert config == {"LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 4096,
                      "UPDATE_EPOCHS": 4, "NUM_MINIBATCHES": 4, "GAMMA": 0.99,
                      "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5,
                      "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ENV_NAME": "CartPole-v1",
                      "ANNEAL_LR": True, "DEBUG": False}
    for seeds in (1, 3):
        peer = rl._Peer("peer", module, config, seeds)
        assert peer.call() > 0
        assert peer.final_return() == 9.0  # the last tenth of 10 updates: update 9
    assert module.SEEN[-1] == config


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("x = 1\n", "has no make_train"),
    ("import no_such_module_here\n", "cannot import it: ModuleNotFoundError"),
])
def test_rl_bad_peer(tmp_path, capsys, text, message):
    if text is not None:
        (tmp_path / "ppo.py").write_text(text)
    code = benchmarks.run_benchmark("rl", ["--json", "--peer", str(tmp_path / "ppo.py")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "ppo.py" in captured.err
