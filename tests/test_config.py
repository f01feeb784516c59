"""Tests of the config loader (lab/core/config.py): loading, strict validation against the
sections of the config's kind, overrides, round trips."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from lab.core import kind as K
from lab.core.config import ConfigError, config_hash, config_to_dict, dump_yaml, load_config
from lab.core.es import SearchConfig
from lab.core.schema import Config, EvaluatorConfig, OutputConfig, field
from lab.kinds.baseline.config import BaselineRuleConfig


def write(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


FULL = """
name: full
kind: baseline
suite: smoke
budget: 50
seeds: 3
rule:
  name: adam
  lr: 2
  init: {b1: 0.5, learning_rate: 0.001}
  fixed: {nesterov: true}
search:
  strategy: PGPE
  population: 8
  generations: 3
  sigma: 0.2
  lr: 0.01
  optimizer: sgd
  elite_ratio: 1
  seed: 7
evaluator: {chunk: 4, memory_mb: 512, devices: 1, unroll: 2}
output: {checkpoint_every: 1, plots: false, top_k: 3}
"""


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config(rule=BaselineRuleConfig(), search=SearchConfig())
    assert (cfg.search.strategy, cfg.search.population, cfg.search.optimizer) == ("Open_ES", 16,
                                                                                   "adam")
    hash(cfg)  # frozen and hashable (dict fields are left out of the hash)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seeds = 3


def test_full_file(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.name == "full" and cfg.suite == "smoke" and cfg.budget == 50 and cfg.seeds == 3
    assert cfg.rule == BaselineRuleConfig("adam", 2.0, {"b1": 0.5, "learning_rate": 0.001},
                                          {"nesterov": True})
    assert isinstance(cfg.rule.lr, float) and isinstance(cfg.search.elite_ratio, float)
    assert cfg.search == SearchConfig("PGPE", 8, 3, 0.2, 0.01, "sgd", 1.0, 7)
    assert cfg.evaluator == EvaluatorConfig(4, 512.0, 1, 2)
    assert cfg.output == OutputConfig(1, False, 3)


def test_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    again = load_config(write(tmp_path, dump_yaml(cfg), "dumped.yaml"))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert json.loads(json.dumps(config_to_dict(cfg))) == config_to_dict(cfg)
    assert len(config_hash(cfg)) == 16 and config_hash(cfg) != config_hash(load_config(None))
    assert load_config(write(tmp_path, "", "empty.yaml")) == load_config(None)


def test_unknown_keys_all_reported_with_suggestions(tmp_path):
    path = write(tmp_path, """
        nmae: x
        seeds: not-a-number
        rule: {nmae: adam, init: {b1: 0.5}}
        search:
          strategy: Open_Es
          populaton: 4
        evaluator: {chunks: 2}
        """)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert len(e.value.problems) == 4, msg
    for key, line, hint in [("nmae", 1, "name"), ("rule.nmae", 3, "name"),
                            ("search.populaton", 6, "population"),
                            ("evaluator.chunks", 7, "chunk")]:
        assert f"run.yaml:{line}: {key}: unknown key; did you mean {hint}" in msg
    # unknown keys come before any other check: neither the type nor the strategy is reported
    assert "seeds" not in msg and "Open_Es" not in msg


def test_exponent_floats(tmp_path):
    # PyYAML reads YAML 1.1, where `1e-6` is a string; float fields accept it, others do not
    cfg = load_config(write(tmp_path, "search: {sigma: 1e-3}\nrule: {init: {eps: 1e-6}}\n"))
    assert cfg.search.sigma == 1e-3 and cfg.rule.init == {"eps": 1e-6}
    with pytest.raises(ConfigError, match=r"budget: must be an integer, got string '1e3'"):
        load_config(None, ["budget=1e3"])


def test_unknown_strategy_case_slip(tmp_path):
    path = write(tmp_path, "name: x\nsearch: {strategy: Open_Es}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and "run.yaml:2" in msg and "search.strategy" in msg
    assert "did you mean Open_ES" in msg


@pytest.mark.parametrize("text, key, expect", [
    ("seeds: 2.5", "seeds", "must be an integer"),
    ("seeds: true", "seeds", "must be an integer"),
    ("budget: '10'", "budget", "must be an integer"),
    ("name: 3", "name", "must be a string"),
    ("search: {sigma: fast}", "search.sigma", "must be a number"),
    ("search: {sigma: true}", "search.sigma", "must be a number"),
    ("output: {plots: 1}", "output.plots", "must be true or false"),
    ("search: 3", "search", "must be a mapping"),
    ("rule: {init: [1, 2]}", "rule.init", "must be a mapping"),
    ("rule: {init: {b1: high}}", "rule.init.b1", "must be a number"),
    ("rule: {fixed: {nesterov: [1]}}", "rule.fixed.nesterov", "must be a number, string"),
])
def test_wrong_types(tmp_path, text, key, expect):
    with pytest.raises(ConfigError, match=rf"run\.yaml:1: {key}: {expect}"):
        load_config(write(tmp_path, text + "\n"))


@pytest.mark.parametrize("override, expect", [
    ("seeds=0", r"seeds: must be >= 1"),
    ("search.population=1", r"search.population: must be >= 2"),
    ("search.sigma=0", r"search.sigma: must be > 0"),
    ("search.elite_ratio=1.5", r"search.elite_ratio: must be <= 1"),
    ("evaluator.unroll=0", r"evaluator.unroll: must be >= 1"),
    ("suite=trian", r"suite: unknown suite 'trian'; did you mean train"),
    ("search.optimizer=adamm", r"search.optimizer: unknown optax optimizer 'adamm'; did you mean"),
    ("rule.name=Adam", r"rule.name: unknown baseline 'Adam'; did you mean adam"),
    ("rule.init.b1=1.5", r"rule.init.b1: must be in \(0, 1\)"),
    ("rule.init.beta1=0.5", r"rule.init.beta1: baseline 'adam' does not search 'beta1'"),
    ("rule.fixed.nesterv=true", r"rule.fixed.nesterv: optax.adam has no keyword 'nesterv'; did"),
    ("task_seeds.rosenbrock_4d=8", r"task_seeds.rosenbrock_4d: no task 'rosenbrock_4d' in suite "
                                   r"'train' \(its tasks: quadratic_ill_16, "),
    ("task_seeds.rosenbrock_2d=0", r"task_seeds.rosenbrock_2d: must be >= 1"),
])
def test_bad_values(override, expect):
    with pytest.raises(ConfigError, match=rf"^--set {override}: {expect}"):
        load_config(None, [override])


def test_overrides(tmp_path):
    path = write(tmp_path, FULL)
    cfg = load_config(path, ["search.population=32", "search.strategy=Open_ES", "seeds=1",
                             "output.plots=true", "name=other", "search.sigma=1"])
    assert (cfg.search.population, cfg.search.strategy, cfg.seeds) == (32, "Open_ES", 1)
    assert cfg.output.plots is True and cfg.name == "other" and cfg.search.sigma == 1.0
    assert cfg.search.generations == 3  # untouched keys of the section keep the file's values


def test_override_dict_fields(tmp_path):
    path = write(tmp_path, FULL)
    # a dotted key sets one entry and keeps the others
    cfg = load_config(path, ["rule.init.b1=0.7", "rule.init.eps=1e-6"])
    assert cfg.rule.init == {"b1": 0.7, "learning_rate": 0.001, "eps": 1e-6}
    # a mapping replaces the whole dict
    cfg = load_config(path, ["rule.init={b2: 0.5}"])
    assert cfg.rule.init == {"b2": 0.5}
    # and entries work without a file, creating the sections on the way
    assert load_config(None, ["rule.init.b1=0.5"]).rule.init == {"b1": 0.5}
    # a mapping for a section replaces the section: other keys fall back to defaults
    cfg = load_config(path, ["search={population: 4}"])
    assert cfg.search == SearchConfig(population=4)


@pytest.mark.parametrize("override, expect", [
    ("search.population", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("search..population=3", "expected KEY=VALUE"),
    ("seeds.x=3", "seeds is integer 2, not a section"),
    ("name=[unclosed", "cannot read the value"),
    ("search.popsize=3", "search.popsize: unknown key; did you mean population"),
    ("serch.population=3", "serch: unknown key; did you mean search"),
])
def test_malformed_overrides(override, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["seeds=2", override])
    assert str(e.value).startswith(f"--set {override}: ") and expect in str(e.value)


def test_override_text_named_over_file_line(tmp_path):
    path = write(tmp_path, "search:\n  population: 4\n")
    with pytest.raises(ConfigError, match=r"^--set search.population=1: search.population"):
        load_config(path, ["search.population=1"])
    with pytest.raises(ConfigError, match=r"run\.yaml:2: search.population: must be >= 2"):
        load_config(write(tmp_path, "search:\n  population: 1\n"))


def test_task_seeds_name_their_line(tmp_path):
    cfg = load_config(write(tmp_path, "suite: train\ntask_seeds:\n  rosenbrock_2d: 8\n"))
    assert cfg.task_seeds == {"rosenbrock_2d": 8} and cfg.seeds == 2
    with pytest.raises(ConfigError, match=r"run\.yaml:3: task_seeds.rosenbrok_2d: no task "):
        load_config(write(tmp_path, "suite: train\ntask_seeds:\n  rosenbrok_2d: 8\n"))


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(missing)


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "name: x\nsearch:\n  population: [1, 2\n  sigma: 0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:\d+: invalid YAML") as e:
        load_config(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"run\.yaml:1: invalid YAML"):
        load_config(write(tmp_path, "a: !!python/object:os.system {}\n"))


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:1: the top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_kind_selects_rule_section(tmp_path, monkeypatch):
    """The rule and search sections are the dataclasses the kind registers."""
    @dataclasses.dataclass(frozen=True)
    class ToyRuleConfig:
        source: str = "adam"
        length: int = field(8, ge=1)

    toy = dataclasses.replace(K.get("baseline"), name="toy", rule_config=ToyRuleConfig)
    monkeypatch.setitem(K._REGISTERED, "toy", toy)
    cfg = load_config(write(tmp_path, "kind: toy\nrule: {length: 12}\n"))
    assert cfg.rule == ToyRuleConfig(length=12) and cfg.search == SearchConfig()
    assert load_config(None, ["kind=toy"]).rule == ToyRuleConfig()
    # the rule section is checked against the kind's own keys
    with pytest.raises(ConfigError, match=r"run\.yaml:2: rule.name: unknown key"):
        load_config(write(tmp_path, "kind: toy\nrule: {name: adam}\n"))
    with pytest.raises(ConfigError, match=r"rule.length: must be >= 1"):
        load_config(None, ["kind=toy", "rule.length=0"])
    # an unknown kind is reported with its closest names, and the rule section is skipped
    with pytest.raises(ConfigError, match=r"run\.yaml:1: kind: unknown kind 'programm'; did you "
                                          r"mean program"):
        load_config(write(tmp_path, "kind: programm\nrule: {whatever: 1}\n"))


def test_kind_trains_on_the_suites_of_its_domain():
    with pytest.raises(ConfigError, match=r"suite: kind 'baseline' cannot train on suite "
                                          r"'rl-smoke'; use one of smoke, train, train-wide, "
                                          r"train-wide-mnist1d, train-wide-chain, train-scaled, "
                                          r"heldout"):
        load_config(None, ["suite=rl-smoke"])
    with pytest.raises(ConfigError, match=r"kind 'drift' cannot train on suite 'smoke'"):
        load_config(None, ["kind=drift", "suite=smoke"])


def test_baseline_sections_against_optax():
    cfg = load_config(None, ["rule.name=adamw", "rule.init.weight_decay=1e-3",
                             "rule.fixed.eps_root=0.0"])
    assert cfg.rule.init == {"weight_decay": 1e-3} and cfg.rule.fixed == {"eps_root": 0.0}
    with pytest.raises(ConfigError, match=r"rule.name: unknown baseline 'Lion'; did you mean lion"):
        load_config(None, ["rule.name=Lion"])
    with pytest.raises(ConfigError, match=r"rule.fixed.b11: optax.adam has no keyword 'b11'"):
        load_config(None, ["rule.fixed.b11=0.5"])
    with pytest.raises(ConfigError, match=r"did you mean Open_ES"):
        load_config(None, ["search.strategy=Open_Es"])


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    """Every file in configs/ is a valid config named after its file, and its dump loads back
    to the same config."""
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert load_config(write(tmp_path, dump_yaml(cfg), path.name)) == cfg
