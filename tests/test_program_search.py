"""Program search in-process: compile before generation 0 (hurdles on), the cache and its hit
rate, one cache across representations, hurdles, repeats, the stages after the search. The whole
run with a kill and a resume is in ``test_kinds``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab.core import hashing
from lab.core.config import load_config
from lab.core.evaluate import compiled
from lab.core.fitness import CLIP
from lab.core.loop import build_setup, launch, score_fixed
from lab.core.optimizers import make_baseline
from lab.kinds.program import evolution, finalize, spaces
from lab.kinds.program import search as search_module
from lab.kinds.program.ir import live_statements, simplify, symbolic_hash
from lab.kinds.program.programs import genome_of, load_seed, parse, program_rule

SMALL = ["kind=program", "suite=tiny", "budget=8", "seeds=1", "search.population=8",
         "search.children=4", "search.generations=3", "evaluator.devices=1", "rule.lr=20",
         "search.lr_grid=[1.0, 3.0]", "output.top_k=2", "search.simplify=false"]


def _spy(monkeypatch, module, name, into):
    real = getattr(module, name)

    def spy(*a, **k):
        into.append(real(*a, **k))
        return into[-1]
    monkeypatch.setattr(module, name, spy)


def test_three_generations_with_hurdles_compile_before_generation_0(store, monkeypatch):
    setups, shorts, sizes = [], [], []
    _spy(monkeypatch, __import__("lab.core.loop", fromlist=["x"]), "build_setup", setups)
    _spy(monkeypatch, search_module, "short_scorer", shorts)
    real_step = evolution.Evolution.step

    def step(self, g):
        out = real_step(self, g)
        trains = list(self.scorer.trains.values()) + list(self.short.trains.values())
        sizes.append([compiled(t, setups[0].mesh)._cache_size() for t in trains])
        return out
    monkeypatch.setattr(evolution.Evolution, "step", step)
    cfg = load_config(None, [*SMALL, "search.hurdle=0.5", "search.hurdle_budget=4"])
    run_id = launch(cfg, store, name="hurdle")
    assert len(sizes) == 3 and all(s == [1] * len(s) for s in sizes), sizes  # compiled before g0
    gens = store.generations(run_id)
    assert [g["idx"] for g in gens] == [0, 1, 2]
    for g in gens:  # hit rate = 1 - distinct functions evaluated / children
        generated = g["hits"] + g["misses"]  # B, plus children recognized as their parent
        assert generated >= cfg.search.children and g["misses"] <= cfg.search.children
        assert g["hit_rate"] == pytest.approx(1 - g["misses"] / generated)
    assert store.get_run(run_id)["status"] == "done"


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_cache_hits_skip_evaluation_and_children_join(store, monkeypatch):
    cfg = load_config(None, SMALL)
    calls = []
    real = evolution.Evolution.score_programs

    def counting(self, scorer, programs, *a, **k):
        calls.append(len(programs))
        return real(self, scorer, programs, *a, **k)
    monkeypatch.setattr(evolution.Evolution, "score_programs", counting)
    run_id = launch(cfg, store, name="a")
    first = sum(calls)
    calls.clear()
    again = launch(cfg, store, name="b")  # same seed: every function is already in the store
    gens = store.generations(again)
    assert first > 0 and all(g["misses"] == 0 and g["hit_rate"] == 1.0 for g in gens)
    assert store.get_run(again)["best"] == pytest.approx(store.get_run(run_id)["best"])


def test_adam_program_hits_the_cached_evaluation_of_baseline_adam(store):
    """One cache across representations: baseline:adam scored and stored; the Adam seed program
    is served from that entry, without a run of its own."""
    cfg = load_config(None, [*SMALL, "rule.seed=adam", "rule.lr=1"])
    setup = build_setup(cfg, store)
    rule = make_baseline("adam")
    key = hashing.function_key(rule)
    assert key == hashing.function_key(program_rule(), genome_of(load_seed("adam")))
    ctx = setup.scorer.context.key()
    base_setup = build_setup(load_config(None, ["suite=tiny", "budget=8", "seeds=1",
                                                "evaluator.devices=1"]), store)
    assert base_setup.scorer.context.key() == ctx  # the context does not depend on the form
    result = base_setup.scorer.score({k: np.stack([v]) for k, v in rule.genome.items()})
    run = store.create_run("base", "baseline", {}, "h", "v", ctx, {})
    store.record_generation(run, 0, [{"hash": key, "kind": "baseline", "name": "adam",
                                      "genome": b"x"}],
                            [{"hash": key, "fitness": float(result["fitness"][0]),
                              "diverged": False, "metrics": {}}],
                            [{"hash": key, "fitness": float(result["fitness"][0])}], {})
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, None, load_seed("adam"))
    finals = {evo.keys([load_seed("adam")])[0]: evo.space.genome(load_seed("adam"), evo.length)}
    scores, fresh, hits = score_fixed(setup.scorer, store, finals, evo.full_batch)
    assert list(scores) == [key] and fresh == [] and hits == [key]  # served from the cache
    assert scores[key] == pytest.approx(float(result["fitness"][0]))


def test_children_the_cache_knows_are_mutated_again(store):
    """With the cache, a generation's batch holds new functions only: none known before the
    generation, no two siblings alike; every replaced child counts as a hit."""
    cfg = load_config(None, [*SMALL, "search.retries=50"])
    setup = build_setup(cfg, store)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, None, load_seed("adamw"))
    evo.seed_population()
    replaced = 0
    for g in range(3):
        before = set(evo.cache.scores) | set(evo.cache.failed)
        out = evo.step(g)
        keys = [m.key for m in out["members"]]
        assert len(set(keys)) == len(keys) and not set(keys) & before
        stats, extra = out["stats"], out["extra"]
        assert stats["misses"] == len(keys) == cfg.search.children
        assert stats["hits"] == (extra["same_as_parent_symbolic"] +
                                 extra["same_as_parent_function"] + extra["known_function"])
        replaced += stats["hits"]
    assert replaced > 0


def test_known_children_join_unevaluated_with_hits_join(store):
    """``search.hits: join`` (the Lion search's way): a child whose function the run knows joins
    the population at its cached fitness, unevaluated, and more children are made until B are
    new or B x (1 + retries) were made; the batch keeps its one compiled shape."""
    cfg = load_config(None, [*SMALL, "search.hits=join", "search.population=16"])
    setup = build_setup(cfg, store)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, None, load_seed("adamw"))
    evo.seed_population()  # compiles the batch's shape
    trains = list(setup.scorer.trains.values())
    sizes = [compiled(t, setup.mesh)._cache_size() for t in trains]
    B, cap, joined = cfg.search.children, cfg.search.children * (1 + cfg.search.retries), 0
    for g in range(4):
        before = set(evo.cache.scores) | set(evo.cache.failed)
        out = evo.step(g)
        stats, extra, members = out["stats"], out["extra"], out["members"]
        scored = [e["hash"] for e in out["evaluations"] if e["context"] == evo.context("full", 0)]
        assert len(set(scored)) == len(scored) == stats["misses"] <= B
        assert not set(scored) & before  # only new functions are trained
        assert len(members) == extra["children"] == stats["hits"] + stats["misses"] <= cap
        assert stats["misses"] == B or len(members) == cap
        assert stats["hits"] == (extra["same_as_parent_symbolic"] +
                                 extra["same_as_parent_function"] + extra["known_function"])
        for m in members:  # a hit joins at the fitness its function has
            assert m.fitness == evo.cache.fitness(m.key)
            assert m.key in scored or m.key in before
        joined += stats["hits"]
        assert len(evo.population) == cfg.search.population
    assert joined > 0
    assert [compiled(t, setup.mesh)._cache_size() for t in trains] == sizes  # no recompiles


def test_plateau_restarts_from_the_start_or_from_the_best_genotype(store):
    """``search.restart``: a plateau restarts the population from the start program and the best
    so far in turn ("alternate"), or from the one each time; the best's genotype comes back
    whole, its dead statements too (what ``hits: join`` builds on)."""
    cfg = load_config(None, [*SMALL, "search.plateau=2"])
    setup = build_setup(cfg, store)
    best = parse("""def p(g, w, lr, t, m, v):
    m = interp(g, m, 0.9)
    x1 = tanh(g)
    x2 = sign(m)
    update = mul(x2, lr)
    return update, m, v
""")
    assert live_statements(best) == [0, 2, 3]  # x1 is dead
    for how, order in [("alternate", ["start", "best", "start", "best"]),
                       ("best", ["best"] * 3), ("start", ["start"] * 3)]:
        cfg_how = load_config(None, [*SMALL, "search.plateau=2", f"search.restart={how}"])
        evo = evolution.Evolution(cfg_how, store, "r", setup.scorer, None, load_seed("adamw"))
        evo.seed_population()
        evo.best = evolution.Member(best, "best-key", -1.0, 7)
        for what in order:
            evo.since_best = 2
            assert evo.restart() == what, how
            src = evo.best if what == "best" else evo.seed_member
            assert len(evo.population) == cfg.search.population and evo.since_best == 0
            assert all(m.program == src.program and m.key == src.key for m in evo.population)
        assert evo.restarts == len(order)
    with pytest.raises(ValueError, match="restart"):
        load_config(None, [*SMALL, "search.restart=worst"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_forgotten_hits_take_a_slot_of_the_batch_with_hits_join(store):
    """``search.forget`` with ``hits: join``: a known child drawn to be evaluated again takes a
    slot of the generation's batch, as a new function does, so a generation still trains at
    most B functions (here every distinct function of the generation: forget 1)."""
    cfg = load_config(None, [*SMALL, "search.hits=join", "search.population=16",
                             "search.forget=1.0", "search.confirm=false"])
    setup = build_setup(cfg, store)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, None, load_seed("adamw"))
    evo.seed_population()
    B, cap, again = cfg.search.children, cfg.search.children * (1 + cfg.search.retries), 0
    for g in range(4):
        before = set(evo.cache.scores)
        out = evo.step(g)
        scored = [e["hash"] for e in out["evaluations"]]
        keys = {m.key for m in out["members"]}
        assert len(scored) == out["stats"]["misses"] and set(scored) == keys
        assert len(keys) == B or len(out["members"]) == cap
        again += len(keys & before)
    assert again > 0


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_without_the_cache_every_child_is_scored(store):
    """``search.cache: false``: one mutation per child, symbolically new or not, and a child
    whose function was scored before is scored again, one the hurdle cut too."""
    cfg = load_config(None, [*SMALL, "search.cache=false", "search.children=8",
                             "search.generations=4", "search.hurdle=0.5",
                             "search.hurdle_budget=4"])
    setup = build_setup(cfg, store)
    short = spaces.short_scorer(cfg, setup)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, short, load_seed("adamw"))
    evo.seed_population()
    again = cut_again = 0
    for g in range(4):
        before, cut = set(evo.cache.scores), set(evo.cache.failed)
        out = evo.step(g)
        keys = [m.key for m in out["members"]]
        scored = {e["hash"] for e in out["evaluations"]}
        assert scored == set(keys)  # the known ones too
        assert out["extra"]["same_as_parent_symbolic"] == out["extra"]["known_function"] == 0
        assert out["stats"]["hits"] == len(keys) - len(set(keys))
        again += len(set(keys) & (before | cut))
        cut_again += len(set(keys) & cut)
    assert again > 0 and cut_again > 0  # known functions, cut ones too, were scored again


def test_hurdle_failures_score_worst_and_batches_are_fixed(store):
    cfg = load_config(None, [*SMALL, "search.hurdle=0.75", "search.hurdle_budget=4"])
    setup = build_setup(cfg, store)
    short = spaces.short_scorer(cfg, setup)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, short, load_seed("adamw"))
    assert evo.full_batch == 1  # ceil(4 x (1 - 0.75))
    evo.seed_population()
    out = evo.step(0)
    failed = [m for m in out["members"] if m.key in evo.cache.failed]
    floor = float(np.median(evo.full_window))
    assert failed and all(floor <= m.fitness <= CLIP for m in failed)
    full = [e for e in out["evaluations"] if e["context"] == evo.context("full", 0)]
    short = [e for e in out["evaluations"] if e["context"] == evo.context("short", 0)]
    assert len(full) <= evo.full_batch and len(short) == out["stats"]["misses"]
    assert {e["hash"] for e in full} <= {e["hash"] for e in short}


def test_knock_out_drops_one_statement_and_rewires():
    p = parse("""def p(g, w, lr, t, m, v):
    m = interp(g, m, 0.9)
    x1 = tanh(m)
    x2 = sign(x1)
    update = mul(x2, lr)
    return update, m, v
""")
    q = finalize.knock_out(p, 1)  # tanh out: sign reads m
    assert symbolic_hash(q) == symbolic_hash(parse("""def q(g, w, lr, t, m, v):
    m = interp(g, m, 0.9)
    x1 = sign(m)
    update = mul(x1, lr)
    return update, m, v
"""))
    assert len(live_statements(q)) == 3


def test_constants_rule_at_its_start_equals_the_program():
    from lab.core.rule import make_ctx
    from lab.kinds.program.compiled import structure_rule
    p = simplify(load_seed("lion"))
    rule, idx, signs = finalize.constants_rule(p, 1.0)
    base = structure_rule(p, simplify_first=False)
    params = {"w": np.linspace(-1, 1, 6).astype(np.float32)}
    grads = {"w": np.cos(np.arange(6)).astype(np.float32)}
    ctx = make_ctx(0, 10, 0.1)
    d1, _ = rule.update(rule.genome, grads, rule.init(rule.genome, params), params, ctx)
    d2, _ = base.update(base.genome, grads, base.init(base.genome, params), params, ctx)
    np.testing.assert_allclose(d1["w"], d2["w"], rtol=1e-6)
    assert len(idx) == len(signs) == len(rule.genome["z"]) > 0


def test_program_configs_are_checked():
    from lab.core.config import ConfigError
    with pytest.raises(ConfigError, match="unknown seed program 'adamm'.*adam"):
        load_config(None, ["kind=program", "rule.seed=adamm"])
    with pytest.raises(ConfigError, match="lr_grid"):
        load_config(None, ["kind=program", "search.lr_grid=[1, -3]"])
    with pytest.raises(ConfigError, match="children"):
        load_config(None, ["kind=program", "search.population=4", "search.children=8"])
    for path in ("configs/program_smoke.yaml", "configs/program_search.yaml",
                 "configs/quickstart.yaml"):
        assert load_config(path).kind == "program"


def test_bad_start_file_names_line(tmp_path):
    from lab.core.config import ConfigError
    bad = tmp_path / "bad.prog"
    bad.write_text("def p(g, w, lr, t, m, v):\n    x = frob(g)\n    return x, m, v\n")
    with pytest.raises(ConfigError, match=r"bad.prog: line 2, column 9: unknown op 'frob'"):
        load_config(None, ["kind=program", f"rule.file={bad}"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_stages_after_the_search(store):
    """ES on constants, finalists on fixed seeds, ablation, funnel and meta-validation."""
    import json
    cfg = load_config(None, [*SMALL, "search.es.top=1", "search.es.generations=2",
                             "search.es.population=4", "search.funnel=1",
                             "search.funnel_scale=2", "search.meta_validate_every=1",
                             "search.simplify=true", "search.lr_grid=[0.5, 2.0]"])
    run_id = launch(cfg, store, name="stages")
    report = json.loads((store.run_dir(run_id) / "finalists.json").read_text())
    origins = {f["origin"] for f in report["finalists"]}
    assert {"search", "es"} <= origins
    assert [v["generation"] for v in report["meta_validation"]] == [0, 1, 2]
    (funnel,) = report["funnel"]
    assert funnel["scale"] == 2 and np.isfinite(funnel["funnel"])
    # without lr_per_task the funnel scores the program as baked (its multiplier, not 1, kept)
    from lab.kinds.program.programs import parse as parse_program
    sources = {f["hash"]: f["source"] for f in [*report["finalists"], report["ablation"]]
               if "hash" in f}
    space = spaces.space_of(cfg)
    at_2x = spaces.scorer_at(cfg, build_setup(cfg, store), space, cfg.budget, scale=2)
    g = space.genome(parse_program(sources[funnel["hash"]]), cfg.rule.max_len)
    assert funnel["funnel"] == pytest.approx(
        float(at_2x.score({k: v[None] for k, v in g.items()})["fitness"][0]), abs=1e-5)
    assert "steps" in report["ablation"]
    finals = [m for m in store.best_members(run_id, k=20) if m["final"] is not None]
    assert store.get_run(run_id)["best"] == min(m["final"] for m in finals)
    for f in report["finalists"]:  # every finalist's source parses back to its program
        assert parse(f["source"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_funnel_selects_the_answer_among_finalists_and_validated_programs(store, monkeypatch):
    """``search.select: funnel``: the programs meta-validation scored are finalists and enter
    the funnel beside the best finalists; the funnel's scores rank the run (its answer, rank 0
    of its target, is the best at the longer horizon), each kept as the member's selection.
    The funnel here scores each program at minus its final score, so the ranking it selects
    is the final one reversed."""
    import json

    from lab.commands.targets import resolve
    from lab.core.config import ConfigError
    with pytest.raises(ConfigError, match="select.*search.funnel"):
        load_config(None, [*SMALL, "search.select=funnel"])
    real, measured = finalize._funnel, []

    def reversed_funnel(*a, **k):
        rows = real(*a, **k)
        measured.extend(rows)
        return [{**r, "funnel": -r["final"]} for r in rows]
    monkeypatch.setattr(finalize, "_funnel", reversed_funnel)
    cfg = load_config(None, [*SMALL, "search.funnel=2", "search.funnel_scale=2",
                             "search.meta_validate_every=1", "search.select=funnel"])
    run_id = launch(cfg, store, name="select")
    report = json.loads((store.run_dir(run_id) / "finalists.json").read_text())
    validated = {v["hash"]: v["validation"] for v in report["meta_validation"]}
    from_validation = {f["hash"] for f in report["finalists"]
                       if f["parent"] in validated and f["origin"] in ("search", "validation")}
    funnel = {r["hash"]: r["funnel"] for r in report["funnel"]}
    assert from_validation and from_validation <= set(funnel) and len(funnel) >= 2
    by_final = sorted(report["finalists"], key=lambda f: f["final"])
    assert {f["hash"] for f in by_final[:2]} <= set(funnel)  # funnel: 2, the best by final
    for r in measured:  # the funnel's real scores: meta-validation's, program for program
        parent = next(f["parent"] for f in report["finalists"] if f["hash"] == r["hash"])
        if parent in validated and r["hash"] in from_validation:
            assert r["funnel"] == pytest.approx(validated[parent], abs=1e-6)
    chosen = min(funnel, key=funnel.get)
    assert chosen != by_final[0]["hash"]
    assert report["selection"]["hash"] == chosen
    ranked = store.best_members(run_id, k=len(funnel))
    assert [m["hash"] for m in ranked] == sorted(funnel, key=funnel.get)
    assert [m["selection"] for m in ranked] == pytest.approx(sorted(funnel.values()))
    run = store.get_run(run_id)
    assert run["best_hash"] == chosen == resolve(run_id, store).store_hash
    assert run["best"] == pytest.approx(ranked[0]["final"])


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_finalists_are_scored_again_on_final_seeds_each_task_at_its_own_rate(store):
    """``search.final_seeds`` with ``lr_per_task``: every finalist's final score is on that many
    fixed seeds, each task at its best multiplier of the grid around the baked one (computed
    here from the suite scorer task by task), its score at the baked multiplier kept beside;
    ``select: both`` ranks the funnel's programs by the mean of that score and the funnel's."""
    import dataclasses

    from lab.core.config import ConfigError
    from lab.kinds.program.programs import parse as parse_program
    with pytest.raises(ConfigError, match="select: both.*search.funnel"):
        load_config(None, [*SMALL, "search.select=both"])
    cfg = load_config(None, [*SMALL, "search.lr_per_task=true", "search.final_seeds=2",
                             "search.funnel=2", "search.funnel_scale=2", "search.select=both"])
    run_id = launch(cfg, store, name="final-seeds")
    report = json.loads((store.run_dir(run_id) / "finalists.json").read_text())
    space = spaces.space_of(cfg)
    final_scorer = build_setup(dataclasses.replace(cfg, seeds=2), store).scorer
    funnel_scorer = spaces.scorer_at(cfg, build_setup(cfg, store), space, cfg.budget, scale=2)
    funnel = {r["hash"]: r["funnel"] for r in report["funnel"]}

    def tuned(scorer, source, multiplier):  # each task at its best of the search's grid
        genomes = [space.genome(parse_program(source), cfg.rule.max_len, m / multiplier)
                   for m in cfg.search.lr_grid]
        result = scorer.score({k: np.stack([g[k] for g in genomes]) for k in genomes[0]})
        return {t: min(m["fitness"]) for t, m in result["tasks"].items()}

    assert {f["multiplier"] for f in report["finalists"]} == {1.0, 3.0}  # baked, divided out
    funnel_tasks = {r["hash"]: r["tasks"] for r in report["funnel"]}
    for f in report["finalists"]:
        per_task = tuned(final_scorer, f["source"], f["multiplier"])
        assert f["final"] == pytest.approx(np.mean(list(per_task.values())), abs=1e-5)
        assert f["tasks"] == pytest.approx(per_task, abs=1e-5)  # which task it fails
        assert np.isfinite(f["baked"])
        if f["hash"] in funnel:
            per_task = tuned(funnel_scorer, f["source"], f["multiplier"])
            assert funnel[f["hash"]] == pytest.approx(np.mean(list(per_task.values())),
                                                      abs=1e-5)
            assert funnel_tasks[f["hash"]] == pytest.approx(per_task, abs=1e-5)
    finals = {m["hash"]: m for m in store.best_members(run_id, k=50) if m["final"] is not None}
    for f in report["finalists"]:
        assert finals[f["hash"]]["final"] == pytest.approx(f["final"])
    selection = {r["hash"]: (r["final"] + r["funnel"]) / 2 for r in report["funnel"]}
    assert report["selection"]["by"] == "both"
    assert report["selection"]["hash"] == min(selection, key=selection.get)
    assert store.get_run(run_id)["best_hash"] == report["selection"]["hash"]
    assert [finals[h]["selection"] for h in selection] == pytest.approx(list(selection.values()))


def test_noisy_fitness_is_averaged_over_repeats(store):
    cfg = load_config(None, [*SMALL, "search.evaluations=2"])
    setup = build_setup(cfg, store)
    evo = evolution.Evolution(cfg, store, "r", setup.scorer, None, load_seed("adamw"))
    evo.seed_population()
    seed_key = evo.population[0].key
    out = evo.step(0)
    todo = {seed_key: load_seed("adamw")}
    rows = evo.evaluate(todo, 1)  # the second evaluation: repeat 1, on fresh data
    assert [r["context"] for r in rows] == [evo.context("full", 1)]
    runs = evo.cache.scores[seed_key]
    assert len(runs) == 2 and runs[0] != runs[1]
    assert evo.cache.fitness(seed_key) == pytest.approx(np.mean(runs))
    assert out["stats"]["misses"] <= cfg.search.children


def test_lr_per_task_counts_each_tasks_best_multiplier(store, monkeypatch):
    """``search.lr_per_task``: each task at its own best multiplier of the grid, the fitness
    their mean (the references' learning rate is tuned per task); without it one multiplier,
    the best on the mean, counts for every task. Both keep that one for the program to bake.
    The funnel and meta-validation (fixed seeds, the answer's selection) count each task at its
    own multiplier around the baked one too, as the held-out replay tunes it; without
    ``lr_per_task`` they score the program as it is (its baked multiplier)."""
    # task a is best at multiplier 1, task b at 3; on the mean 3 is best (0.2 against 0.55)
    table = {"a": {1.0: 0.2, 3.0: 0.3}, "b": {1.0: 0.9, 3.0: 0.1}}
    class Fake:  # rows come program by program, each at every multiplier of the grid
        worst_task = 0.0

        def __init__(self, context, grid):
            self.context, self.grid = context, grid

        def score(self, genomes, generation=None, slots=None, stream=0):
            rows = len(next(iter(genomes.values())))
            mult = [self.grid[r % len(self.grid)] for r in range(rows)]
            tasks = {t: {"fitness": np.array([table[t][m] for m in mult])} for t in table}
            return {"fitness": np.mean([m["fitness"] for m in tasks.values()], axis=0),
                    "tasks": tasks}

        def row_metrics(self, result, i):
            return {t: {"fitness": float(m["fitness"][i]), "diverged": False}
                    for t, m in result["tasks"].items()}

    out, contexts, validation, funnel = {}, {}, {}, {}
    for per_task in (True, False):
        cfg = load_config(None, [*SMALL, f"search.lr_per_task={str(per_task).lower()}"])
        setup = build_setup(cfg, store)
        fake = Fake(setup.scorer.context, cfg.search.lr_grid)
        evo = evolution.Evolution(cfg, store, "r", fake, None, load_seed("adamw"))
        [out[per_task]] = evo.score_programs(evo.scorer, [load_seed("adamw")], [0], 1)
        contexts[per_task] = evo.context("full", 0)
        monkeypatch.setattr(finalize, "scorer_at", lambda *a, fake=fake, **k: fake)
        evo.best = evolution.Member(load_seed("adamw"), "k", 0.0, 0)
        validation[per_task] = finalize.MetaValidation(cfg, setup, evo).check(0)
        finals = {"k": (load_seed("adamw"), "k", "search", 1.0)}
        [row] = finalize._funnel(cfg, setup, evo, finals, {"k": 0.0}, 1)
        funnel[per_task] = row["funnel"]
        if per_task:  # search.worst_task: the worst task's best (a, 0.2) counts once more
            fake.worst_task = 1.0
            [worst] = evo.score_programs(evo.scorer, [load_seed("adamw")], [0], 1)
            assert worst["fitness"] == pytest.approx((0.2 + 0.1) / 2 + 0.2)
    assert validation[True] == funnel[True] == pytest.approx((0.2 + 0.1) / 2)
    assert validation[False] == funnel[False] == pytest.approx((0.2 + 0.9) / 2)  # as baked
    assert out[True]["fitness"] == pytest.approx((0.2 + 0.1) / 2)
    assert [out[True]["metrics"][t]["lr_multiplier"] for t in "ab"] == [1.0, 3.0]
    assert out[False]["fitness"] == pytest.approx(0.2)
    assert "lr_multiplier" not in out[False]["metrics"]["a"]
    assert out[True]["metrics"]["lr_multiplier"] == out[False]["metrics"]["lr_multiplier"] == 3.0
    assert contexts[True] != contexts[False]  # cached scores of one never serve the other


def test_worst_task_weighs_the_task_most_behind_tuned_adam(store):
    """``search.worst_task``: every scored function's fitness is its task's score plus the
    weight times that score above zero (one task: ``f + max(f, 0)``), and its cache context is
    another one than the plain mean's."""
    cfg = load_config(None, [*SMALL, "search.worst_task=1", "search.generations=2"])
    run_id = launch(cfg, store, name="worst")
    rows = store.conn.execute("SELECT fitness, metrics FROM evaluations WHERE first_run = ?",
                              (run_id,)).fetchall()
    task = [(float(f), json.loads(m)["tiny_quadratic"]["fitness"]) for f, m in rows
            if "tiny_quadratic" in json.loads(m)]
    assert len(task) >= 4
    for fitness, f in task:
        assert fitness == pytest.approx(f + max(f, 0.0))
    assert any(f > 0 for _, f in task) and any(f < 0 for _, f in task)
    plain = build_setup(load_config(None, SMALL), store).scorer.context.key()
    assert build_setup(cfg, store).scorer.context.key() != plain


# Pinned collisions of the 6-step, one-lr probe (fingerprint fp2, issue 13): AdamW's first-moment
# bias correction clipped by 0.9^t (bites from step 7) got AdamW's key, and a rule scaled by
# min(lr, 0.9^t) the key of the rule scaled by lr; the cache served their scores.
ADAMW_CLIPPED = """def adamw(g, w, lr, t, m, v):
    m = interp(g, m, 0.9)
    x1 = square(g)
    v = interp(x1, v, 0.999)
    x3 = pow_t(0.9)
    x4 = neg(x3)
    x5 = add_k(x4, 1.0)
    x6 = pow_t(0.999)
    x7 = clip_by(x5, x3)
    x8 = neg(x6)
    x9 = add_k(x8, 1.0)
    x10 = div(m, x7)
    x11 = div(v, x9)
    x12 = sqrt_abs(x11)
    x13 = add_k(x12, 1e-08)
    x14 = div(x10, x13)
    x15 = scale_k(w, 1e-04)
    x16 = add(x14, x15)
    x17 = mul(x16, lr)
    update = scale_k(x17, 0.001)
    return update, m, v
"""


def test_equal_hash_means_equal_training(tiny_task):
    """Two programs with one hash train alike (the cache's promise), checked on a pair the
    search found: AdamW, and AdamW with its bias correction clipped."""
    from lab.core.evaluate import evaluate, make_train, task_keys
    rule = program_rule()
    programs = [load_seed("adamw"), parse(ADAMW_CLIPPED)]
    hashes = [hashing.fingerprint(rule, genome_of(p, lr=20.0))[1] for p in programs]
    genomes = {k: np.stack([genome_of(p, lr=20.0)[k] for p in programs]) for k in
               genome_of(programs[0])}
    out = evaluate(make_train(tiny_task, rule, 40), genomes, task_keys(2, 2))
    loss = out["final_loss"].mean(axis=1)
    assert hashes[0] != hashes[1] or abs(loss[0] - loss[1]) <= 1e-3 * abs(loss[0]), \
        (hashes, loss)


LR_SCALED = """def scaled(g, w, lr, t, m, v):
    x0 = pow_t(0.9)
    update = mul(g, lr)
    return update, m, v
"""


def test_a_step_not_proportional_to_lr_has_its_own_hash():
    """g * min(lr, 0.9^t) is g * lr at the probe's base lr (0.01) for 43 steps: only a stream
    at a larger lr tells them apart."""
    rule = program_rule()
    plain = hashing.fingerprint(rule, genome_of(parse(LR_SCALED)))[1]
    assert plain == hashing.fingerprint(rule, genome_of(load_seed("sgd")))[1]
    clipped = LR_SCALED.replace("update = mul(g, lr)", "x1 = min(lr, x0)\n    update = mul(g, x1)")
    assert hashing.fingerprint(rule, genome_of(parse(clipped)))[1] != plain


@pytest.mark.slow
def test_cache_hits_do_not_change_results(tmp_path, monkeypatch):
    """Children the cache serves under a key that a symbolically different program scored
    (equal fingerprints: the same function) score what that program scored when they are
    trained themselves: pairs sampled from a real search and evaluated again, same data."""
    from conftest import ROOT

    from lab.core.store import Store
    seen: dict[str, list] = {}  # key -> the symbolically distinct programs that got it
    found = {}
    real_keys = evolution.Evolution.keys

    def keys(self, programs):
        out = real_keys(self, programs)
        found["evolution"] = self
        for p, k in zip(programs, out, strict=True):
            group = seen.setdefault(k, [])
            if all(symbolic_hash(p) != symbolic_hash(q) for q in group):
                group.append(p)
        return out
    monkeypatch.setattr(evolution.Evolution, "keys", keys)
    cfg = load_config(ROOT / "configs" / "program_smoke.yaml", [
        "suite=tiny", "seeds=1", "evaluator.devices=1", "search.population=8",
        "search.children=8", "search.generations=6", "search.lr_grid=[1.0]",
        "search.simplify=false", "output.plots=false", "output.top_k=1"])
    with Store(tmp_path / "lab.db") as store:
        launch(cfg, store, name="hits")
    evo = found["evolution"]
    pairs = [(group[0], other) for group in seen.values() for other in group[1:]]
    assert pairs, "the search served no child a symbolically different program's score"
    for first, other in pairs[:4]:
        a, b = evo.score_programs(evo.scorer, [first, other], [0, 0], evo.full_batch)
        assert abs(a["fitness"] - b["fitness"]) <= 1e-3, (first, other, a, b)


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_task_seeds_reach_every_scorer_of_a_search_with_references_at_that_count(store):
    from lab.core.references import References
    cfg = load_config(None, [*SMALL, "task_seeds.tiny_quadratic=3"])
    setup, space = build_setup(cfg, store), spaces.space_of(cfg)
    task = setup.scorer.tasks[0]
    assert setup.scorer.seeds_of(task.name) == 3 and cfg.seeds == 1
    refs = References(store)
    assert setup.scorer.refs[task.name] == refs.value(task, "adam", 8, 3)
    assert refs.value(task, "adam", 8, 3) != refs.value(task, "adam", 8, 1)
    at_2x = spaces.scorer_at(cfg, setup, space, cfg.budget, scale=2)
    assert at_2x.seeds_of(task.name) == 3
    assert at_2x.refs[task.name] == refs.value(task, "adam", 16, 3)
    # final_seeds: the larger of the task's count and the finalists' seeds
    assert spaces.scorer_at(cfg, setup, space, cfg.budget, seeds=2).seeds_of(task.name) == 3
    assert spaces.scorer_at(cfg, setup, space, cfg.budget, seeds=5).seeds_of(task.name) == 5
    g = space.genome(load_seed("adamw"), cfg.rule.max_len)
    out = setup.scorer.score({k: v[None] for k, v in g.items()}, generation=0)
    assert out["tasks"][task.name]["final_loss"].shape == (1, 3)
