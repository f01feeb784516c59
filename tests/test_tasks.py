"""Tests of the task families, the registry and the suites (CPU, fast)."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny

import tasks
from tasks import suites as suites_mod
from tasks._common import data_file, load_npz
from tasks.charlm import ALPHABET, load_corpus
from tasks.cnn import conv1d_same
from tasks.quadratic import make_quadratic, quadratic_parts
from tasks.rosenbrock import make_rosenbrock, rosenbrock

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"quadratic", "rosenbrock", "teacher_student", "digits", "mnist1d", "charlm"}
# Adam learning rates that make every family's loss fall within a few dozen steps.
ADAM_LR = {"quadratic": 0.1, "rosenbrock": 0.05}
TRAIN_STEPS = 40
# Families whose tasks have a held-out split.
HELD_OUT = {"teacher_student", "digits", "mnist1d", "charlm"}
# supervised tasks (RL environments, tasks.rl.EnvTask, have their own tests in test_drift*.py)
SUPERVISED = [n for n in tasks.TASKS if n not in tiny.FACTORIES
              and not any(n in v for s, v in tasks.SUITES.items() if tasks.is_rl_suite(s))]


# one representative task per family by default (the smallest: the first registered); the whole
# matrix with -m slow
_FIRST = {}
for _name in SUPERVISED:
    _FIRST.setdefault(tasks.get_task(_name).family, _name)
EVERY_TASK = [pytest.param(n, marks=[] if n in _FIRST.values() else [pytest.mark.slow])
              for n in SUPERVISED]


@pytest.fixture(autouse=True, scope="module")
def shipped_registry():
    """The registry as shipped: without the tests' own tiny tasks and suites."""
    saved = ({n: tasks.TASKS.pop(n) for n in tiny.FACTORIES},
             {n: tasks.SUITES.pop(n) for n in tiny.SUITES})
    yield
    tasks.TASKS.update(saved[0])
    tasks.SUITES.update(saved[1])


def _width_depth(task: tasks.Task) -> tuple[int, int]:
    hidden = task.config.get("hidden", [])
    return (max(hidden) if hidden else 0), len(hidden)


@pytest.fixture(scope="module")
def all_tasks() -> dict[str, tasks.Task]:
    return {name: tasks.get_task(name) for name in SUPERVISED}


# ----------------------------------------------------------------------------- every task


def _check(task: tasks.Task):
    """One compiled function per task: init, batches under vmap, a short Adam run under scan."""
    opt = optax.adam(ADAM_LR.get(task.family, 1e-2))

    def run(key):
        k_init, k_data, k_probe = jax.random.split(key, 3)
        params = task.init(k_init)
        probe = jax.vmap(task.batch, in_axes=(0, None))(jax.random.split(k_probe, 4),
                                                       jnp.int32(0))

        def probe_loss(p):
            return jnp.mean(jax.vmap(task.loss, in_axes=(None, 0))(p, probe))

        def step(carry, t):
            p, s = carry
            batch = task.batch(jax.random.fold_in(k_data, t), t)
            loss, grads = jax.value_and_grad(task.loss)(p, batch)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (final, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                          jnp.arange(TRAIN_STEPS, dtype=jnp.int32))
        ev = (task.eval_loss(params), task.eval_loss(final)) if task.eval_loss else None
        return params, probe_loss(params), probe_loss(final), losses, ev

    return jax.jit(run)(jax.random.key(0))


@pytest.mark.parametrize("name", EVERY_TASK)
def test_task_inits_samples_and_trains(name: str):
    task = tasks.get_task(name)
    assert task.name == name and task.family in FAMILIES
    assert task.steps > 0 and task.floor == 0.0
    params, before, after, losses, ev = _check(task)
    leaves = jax.tree.leaves(params)
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
    assert sum(x.size for x in leaves) == task.param_count()
    assert losses.dtype == jnp.float32 and losses.shape == (TRAIN_STEPS,)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert np.isfinite(before) and np.isfinite(after)
    assert float(after) < 0.9 * float(before), (name, float(before), float(after))
    assert float(np.min(losses)) >= task.floor - 1e-6
    if ev is not None:
        ev_before, ev_after = map(float, ev)
        assert np.isfinite(ev_before) and np.isfinite(ev_after)
        assert ev_after < ev_before


@pytest.mark.parametrize("name", ["digits_mlp_tiny", "charlm_mlp", "quadratic_noisy_16"])
def test_batch_jit_vmap_and_keys(name: str):
    task = tasks.get_task(name)
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(task.batch, in_axes=(0, None)))(keys, jnp.int32(7))
    one = jax.jit(task.batch)(keys[0], jnp.int32(7))
    for b, o in zip(jax.tree.leaves(batched), jax.tree.leaves(one), strict=True):
        assert b.shape == (3, *o.shape)
        np.testing.assert_allclose(np.asarray(b[0]), np.asarray(o), rtol=1e-5, atol=1e-6)
        assert not np.array_equal(np.asarray(b[0]), np.asarray(b[1]))  # keys give new data
    p = task.init(jax.random.key(0))
    losses = jax.vmap(task.loss, in_axes=(None, 0))(p, batched)
    assert losses.shape == (3,) and np.all(np.isfinite(np.asarray(losses)))


def test_init_is_float32_under_x64(all_tasks):
    with jax.enable_x64(True):  # the fingerprinting code runs with x64 on: tasks stay float32
        for name, task in all_tasks.items():
            params = jax.eval_shape(task.init, jax.random.key(0))
            assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}, name
            batch = jax.eval_shape(task.batch, jax.random.key(1), jnp.int32(0))
            assert jax.eval_shape(task.loss, params, batch).dtype == jnp.float32, name


def test_init_depends_on_key():
    for name in ("rosenbrock_2d", "quadratic_ill_16", "digits_mlp_tiny", "charlm_mlp"):
        task = tasks.get_task(name)
        a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(task.init(jax.random.key(k)))])
                for k in (0, 1))
        assert not np.array_equal(a, b), name


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", ["quadratic_ill_8", "quadratic_ill_16", "quadratic_noisy_16",
                                  "quadratic_ill_64"])
def test_quadratic_closed_form_minimum(name: str):
    task = tasks.get_task(name)
    cfg = task.config
    parts = quadratic_parts(cfg["dim"], cfg["cond"], cfg["seed"])
    eigs = np.linalg.eigvalsh(parts["a"])
    assert eigs.min() > 0 and eigs.max() / eigs.min() == pytest.approx(cfg["cond"], rel=1e-6)
    x_star = np.linalg.solve(parts["a"], parts["a"] @ parts["optimum"])  # A x = b, b = A x*
    opt = {"x": jnp.asarray(x_star * cfg.get("scale", 1.0), jnp.float32)}
    zero = jnp.zeros((cfg["dim"],), jnp.float32)
    assert float(task.loss(opt, zero)) == pytest.approx(0.0, abs=1e-9)
    grad = jax.grad(task.loss)(opt, zero)["x"]
    assert float(jnp.max(jnp.abs(grad))) < 1e-5
    away = {"x": opt["x"] + 0.1}
    assert float(task.loss(away, zero)) > 0
    if cfg["noise"] > 0:
        assert float(task.eval_loss(opt)) == pytest.approx(0.0, abs=1e-9)
        batches = jax.vmap(task.batch, in_axes=(0, None))(
            jax.random.split(jax.random.key(3), 4000), 0)
        losses, grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(opt, batches)
        # The batch loss is exact (0 at x*); its gradient carries noise of covariance noise^2 A.
        assert float(jnp.max(jnp.abs(losses))) < 1e-9
        g = np.asarray(grads["x"], np.float64) * cfg.get("scale", 1.0)  # back to unit scale
        assert np.abs(g.mean(0)).max() < 0.05 * cfg["noise"]
        np.testing.assert_allclose(np.cov(g.T), cfg["noise"] ** 2 * parts["a"],
                                   atol=0.1 * cfg["noise"] ** 2)
        x = {"x": opt["x"] + 0.3}
        assert float(task.loss(x, batches[0])) == pytest.approx(float(task.eval_loss(x)))
    else:
        assert task.eval_loss is None


def test_rosenbrock_minimum_and_start():
    for name in ("rosenbrock_2d", "rosenbrock_chain_8"):
        task = tasks.get_task(name)
        dim = task.config["dim"]
        ones = {"x": jnp.ones((dim,), jnp.float32)}
        assert float(task.loss(ones, None)) == 0.0
        assert float(jnp.max(jnp.abs(jax.grad(task.loss)(ones, None)["x"]))) == 0.0
    x0 = np.asarray(tasks.get_task("rosenbrock_2d").init(jax.random.key(0))["x"])
    assert np.allclose(x0, [-1.5, 2.0], atol=0.5)
    assert float(rosenbrock(jnp.array([0.0, 0.0]))) == 1.0
    with pytest.raises(ValueError):
        make_rosenbrock("bad", dim=1)


def test_conv1d_same_matches_lax():
    for length, kernel, stride in [(40, 5, 2), (20, 5, 2), (40, 3, 1), (9, 4, 3)]:
        h = jax.random.normal(jax.random.key(0), (3, length, 2))
        w = jax.random.normal(jax.random.key(1), (kernel, 2, 5))
        ref = jax.lax.conv_general_dilated(h, w, (stride,), "SAME",
                                           dimension_numbers=("NWC", "WIO", "NWC"))
        np.testing.assert_allclose(conv1d_same(h, w, stride), ref, atol=1e-5)


# ----------------------------------------------------------------------------- suites


def test_suites_reference_registered_tasks(all_tasks):
    assert {"smoke", "train", "heldout"} <= set(tasks.SUITES)
    from tasks.rl import EnvTask
    rl = {s for s in tasks.SUITES if tasks.is_rl_suite(s)}
    assert rl == {"rl-smoke", "rl-train", "rl-heldout", "rl-levels", "rl-levels-heldout"}
    for suite in tasks.SUITES:
        assert all(isinstance(t, EnvTask) == (suite in rl) for t in tasks.get_suite(suite))
    assert not set(tasks.SUITES["rl-train"]) & set(tasks.SUITES["rl-heldout"])
    assert not set(tasks.SUITES["rl-levels"]) & set(tasks.SUITES["rl-levels-heldout"])
    for suite, names in tasks.SUITES.items():
        assert names and len(set(names)) == len(names), suite
        assert [t.name for t in tasks.get_suite(suite)] == list(names)
    for task in tasks.get_suite("smoke"):
        assert 30 <= task.steps <= 60 and task.param_count() < 5000, task.name
    assert 2 <= len(tasks.SUITES["smoke"]) <= 3
    assert 5 <= len(tasks.SUITES["train"]) <= 6
    for task in tasks.get_suite("train"):
        assert 100 <= task.steps <= 300, task.name


def test_heldout_constraints():
    train, heldout = tasks.get_suite("train"), tasks.get_suite("heldout")
    assert not {t.name for t in train} & {t.name for t in heldout}
    # A family that training never sees.
    assert {t.family for t in heldout} - {t.family for t in train}
    # The same task as one in train, with four times the horizon.
    assert any(h.family == t.family and h.config == t.config and h.steps == 4 * t.steps
               for h in heldout for t in train)
    # A wider or deeper network than any in train.
    w_train = max(_width_depth(t)[0] for t in train)
    d_train = max(_width_depth(t)[1] for t in train)
    assert any(_width_depth(h)[0] > w_train and _width_depth(h)[1] > d_train
               for h in heldout if h.family in {t.family for t in train})


def test_train_wide_adds_the_held_out_shapes_on_other_data():
    """train-wide (what learned optimizers meta-train on) is train plus the held-out families'
    shapes: a deeper MLP, a CNN, a transformer and a longer Rosenbrock chain, none of them a
    held-out task's model on a held-out task's data."""
    train, heldout = tasks.SUITES["train"], tasks.get_suite("heldout")
    wide = tasks.SUITES["train-wide"]
    assert wide[:len(train)] == train and not set(wide) & {t.name for t in heldout}
    added = [tasks.get_task(n) for n in wide[len(train):]]
    for task in added:
        assert 100 <= task.steps <= 300, task.name
        for h in heldout:
            same_data = task.config.get("data_digest") == h.config.get("data_digest")
            same_model = all(task.config.get(k) == h.config.get(k)
                             for k in ("model", "hidden", "channels", "width", "dim"))
            assert not (same_data and same_model), (task.name, h.name)
    models = {t.config.get("model") for t in added}
    assert {"cnn", "transformer", "mlp"} <= models
    depth = max(_width_depth(t)[1] for t in added if t.config.get("model") == "mlp")
    assert depth == max(_width_depth(h)[1] for h in heldout if h.config.get("model") == "mlp")
    assert any(t.family == "rosenbrock" and t.config["dim"] > 2 for t in added)
    transformer = next(t for t in added if t.config.get("model") == "transformer")
    assert transformer.config["data"] == "markov"


def test_train_wide_mnist1d_adds_two_mnist1d_networks_no_held_out_task_has():
    """train-wide-mnist1d is train-wide plus a wider MLP and a CNN on train's MNIST-1D data:
    the held-out MNIST-1D tasks' data, but neither of their models."""
    wide, plus = tasks.SUITES["train-wide"], tasks.SUITES["train-wide-mnist1d"]
    assert plus[:len(wide)] == wide
    added = [tasks.get_task(n) for n in plus[len(wide):]]
    assert {t.config["model"] for t in added} == {"mlp", "cnn"}
    mnist1d = tasks.get_task("mnist1d_mlp").config["data_digest"]
    for task in added:
        assert task.family == "mnist1d" and task.config["data_digest"] == mnist1d
        assert 100 <= task.steps <= 300, task.name
        for h in tasks.get_suite("heldout"):
            assert any(task.config.get(k) != h.config.get(k)
                       for k in ("model", "hidden", "channels", "kernel")), (task.name, h.name)


def test_train_wide_chain_adds_a_chain_at_the_held_out_horizon_of_a_size_no_held_out_task_has():
    """train-wide-chain is train-wide plus a 6-D Rosenbrock chain at the held-out chain's 300
    steps: the held-out family and horizon on the train side, at a dimension no held-out task
    has; its minimum is 0 at all ones, and the start is the classic chained one."""
    wide, plus = tasks.SUITES["train-wide"], tasks.SUITES["train-wide-chain"]
    assert plus[:len(wide)] == wide and plus[len(wide):] == ("rosenbrock_6d",)
    chain = tasks.get_task("rosenbrock_6d")
    held = [t for t in tasks.get_suite("heldout") if t.family == "rosenbrock"]
    assert held and chain.family == "rosenbrock" and chain.config["dim"] == 6
    assert chain.steps == max(t.steps for t in held)
    assert all(t.config["dim"] != 6 for t in held)
    assert chain.config["start"] == pytest.approx([-1.2, 1.0] * 3)
    assert float(chain.loss({"x": jnp.ones(6)}, None)) == 0.0
    # the 5 links at the classic start: three (-1.2, 1) and two (1, -1.2)
    assert float(chain.loss({"x": jnp.asarray(chain.config["start"])}, None)) == \
        pytest.approx(3 * (100 * 0.44 ** 2 + 2.2 ** 2) + 2 * 100 * 2.2 ** 2, rel=1e-5)


def test_markov_corpus_is_deterministic_and_has_its_copies():
    from tasks.charlm import markov_corpus
    markov_corpus.cache_clear()
    a = markov_corpus(20_000, 8, 0.3, 0.1, 0)
    markov_corpus.cache_clear()
    b = markov_corpus(20_000, 8, 0.3, 0.1, 0)
    assert a.dtype == np.uint8 and not a.flags.writeable and np.array_equal(a, b)
    assert not np.array_equal(a, markov_corpus(20_000, 8, 0.3, 0.1, 1))
    assert a.max() < len(ALPHABET)
    # a character repeats the one 8 back with probability copy + (1 - copy) * chance
    repeat = float(np.mean(a[8:] == a[:-8]))
    assert 0.3 < repeat < 0.45, repeat
    # peaked bigram rows: well below the 3.93 nats of a uniform next character (the copies
    # spread each row: 2.76 nats at seed 0)
    pairs = np.bincount(a[:-1].astype(int) * 51 + a[1:], minlength=51 * 51).reshape(51, 51)
    rows = pairs / np.maximum(pairs.sum(1, keepdims=True), 1)
    logs = np.log(np.where(rows > 0, rows, 1.0))
    h = -np.sum(pairs * logs) / pairs.sum()
    assert h < 0.75 * np.log(len(ALPHABET)), h


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ValueError, match="digits_mlp") as err:
        tasks.get_task("digits_mpl")
    assert "unknown task 'digits_mpl'" in str(err.value)
    with pytest.raises(ValueError, match="heldout"):
        tasks.get_suite("heldot")
    with pytest.raises(ValueError, match="smoke"):  # nothing close: every name is listed
        tasks.get_suite("zzzzzz")


def test_registry_caches():
    assert tasks.get_task("quadratic_ill_8") is tasks.get_task("quadratic_ill_8")
    assert tasks.get_suite("smoke")[0] is tasks.get_task(tasks.SUITES["smoke"][0])


def test_suite_version_tracks_task_changes(monkeypatch):
    versions = {s: tasks.suite_version(s) for s in tasks.SUITES}
    assert len(set(versions.values())) == len(versions)
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in versions.values())
    assert tasks.suite_version("train") == versions["train"]  # deterministic

    task = tasks.get_task("quadratic_ill_16")
    base = tasks.task_version(task)
    changed = dataclasses.replace(task, config={**task.config, "cond": 1e4})
    assert tasks.task_version(changed) != base
    assert tasks.task_version(dataclasses.replace(task, steps=task.steps + 1)) != base
    rebuilt = make_quadratic("quadratic_ill_16", dim=16, cond=1e3, scale=0.05, steps=150)
    assert tasks.task_version(rebuilt) == base
    assert tasks.task_version(make_quadratic("quadratic_ill_16", dim=16, cond=1e4, scale=0.05,
                                             steps=150)) != base

    monkeypatch.setitem(suites_mod._CACHE, "quadratic_ill_16", changed)
    assert tasks.suite_version("train") != versions["train"]
    assert tasks.suite_version("heldout") == versions["heldout"]


def test_task_rows(all_tasks):
    rows = tasks.task_rows()
    assert [r["name"] for r in rows] == list(tasks.TASKS)
    for row in rows:
        if row["name"] not in all_tasks:  # an RL environment
            task = tasks.get_task(row["name"])
            assert row["env"] == task.env_id and row["family"] == "gymnax"
            assert row["params"] == task.param_count() > 0 and row["steps"] == task.steps
            continue
        assert set(row) == {"name", "family", "suites", "params", "steps"}
        task = all_tasks[row["name"]]
        assert row["family"] == task.family and row["steps"] == task.steps
        assert row["params"] == task.param_count() > 0
        assert row["suites"] == [s for s, n in tasks.SUITES.items() if row["name"] in n]


def test_eval_loss_where_a_held_out_split_exists(all_tasks):
    for task in all_tasks.values():
        if task.family in HELD_OUT:
            assert task.eval_loss is not None, task.name
    digits = all_tasks["digits_mlp"]
    assert digits.config["n_train"] == 1400 and digits.config["n_test"] == 397
    charlm = all_tasks["charlm_mlp"]
    assert charlm.config["vocab"] == len(ALPHABET)


# ----------------------------------------------------------------------------- packaged data


def test_packaged_data_loads_without_pickle():
    path = ROOT / "tasks" / "data" / "mnist1d.npz"
    assert path.stat().st_size < 2_000_000
    with np.load(path, allow_pickle=False) as z:
        assert z["x_train"].shape == (4000, 40) and z["x_train"].dtype == np.float16
        assert z["x_test"].shape == (1000, 40) and z["y_test"].dtype == np.uint8
    data = load_npz("mnist1d.npz")
    assert set(np.unique(data["y_train"])) == set(range(10))
    assert data_file("mnist1d.npz").is_file()

    text = data_file("charlm.txt").read_text(encoding="ascii")
    assert 20_000 < len(text) < 200_000 and set(text) <= set(ALPHABET)
    assert len(load_corpus()) == len(text)


def test_charlm_alphabet_matches_its_generator():
    spec = importlib.util.spec_from_file_location(
        "make_charlm_text", ROOT / "tasks" / "data" / "make_charlm_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ALPHABET == ALPHABET


def test_data_files_are_package_data():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["tasks"]
    covered = {Path(p) for pat in patterns for p in glob.glob(str(ROOT / "tasks" / pat))}
    shipped = {p for p in (ROOT / "tasks" / "data").iterdir()
               if p.is_file() and p.suffix in {".npz", ".txt"}}
    assert {"mnist1d.npz", "charlm.txt"} <= {p.name for p in shipped}
    assert shipped <= covered


@pytest.mark.slow  # 6-20 s on 2 cores: make test stays under 6 minutes
def test_scaled_task_multiplies_the_loss_and_adam_takes_the_same_steps():
    """``tasks.base.scaled``: loss, gradients, floor and held-out loss ``factor`` times the
    base task's; Adam (eps 0) follows the same trajectory on both, so a tuned reference and
    the log-ratio fitness are unchanged by the scale; the version differs from the base's."""
    from tasks.base import scaled
    base = tasks.get_task("digits_mlp")
    big = scaled(base, 1e3, "digits_mlp_big")
    params = base.init(jax.random.key(0))
    batch = base.batch(jax.random.key(1), jnp.asarray(0))
    np.testing.assert_allclose(big.loss(params, batch), 1e3 * base.loss(params, batch),
                               rtol=1e-6)
    np.testing.assert_allclose(big.eval_loss(params), 1e3 * base.eval_loss(params), rtol=1e-6)
    g_base, g_big = (jax.grad(t.loss)(params, batch) for t in (base, big))
    for a, b in zip(jax.tree.leaves(g_base), jax.tree.leaves(g_big), strict=True):
        np.testing.assert_allclose(b / 1e3, a, rtol=1e-4, atol=1e-8)
    assert big.floor == 1e3 * base.floor and big.steps == base.steps
    assert big.config == {**base.config, "base": "digits_mlp", "loss_scale": 1e3}
    assert tasks.task_version(big) != tasks.task_version(base)

    def adam_run(task):
        tx = optax.adam(1e-2, eps=0.0)
        p, state = params, tx.init(params)
        for t in range(5):
            upd, state = tx.update(jax.grad(task.loss)(p, task.batch(jax.random.key(t), t)),
                                   state, p)
            p = optax.apply_updates(p, upd)
        return p

    for a, b in zip(jax.tree.leaves(adam_run(base)), jax.tree.leaves(adam_run(big)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="loss scale must be positive"):
        scaled(base, 0.0, "bad")


def test_train_scaled_is_train_plus_two_of_its_tasks_at_1000x_the_loss():
    train, scaled_suite = tasks.SUITES["train"], tasks.SUITES["train-scaled"]
    assert scaled_suite[:len(train)] == train
    added = [tasks.get_task(n) for n in scaled_suite[len(train):]]
    assert len(added) == 2
    for task in added:
        assert task.config["base"] in train and task.config["loss_scale"] == 1e3
        base = tasks.get_task(task.config["base"])
        assert task.steps == base.steps and task.family == base.family
