"""What a learned rule does (lab.kinds.learned.views) and how `lab inspect` shows it: update
against gradient per momentum value (the jitted sweep against a NumPy closed form where the MLP
is switched off), effective step per training step (exactly lr for Adam), the PNG, and the
inspect document of a learned artifact."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lab.kinds.learned import views as view
from lab.kinds.learned.rule import Features, init_genome, learned_rule

FEATURES = Features(hidden=4, depth=1)


@pytest.fixture(scope="module")
def rule():
    return learned_rule(FEATURES, init_genome(FEATURES, jax.random.key(0)))


@pytest.fixture(scope="module")
def curves(rule):
    return view.delta_vs_gradient(rule, rule.genome)


@pytest.fixture(scope="module")
def behaviour_task():
    from tasks import get_task
    return get_task("digits_mlp_tiny")  # inspect's task below: its compiled run is reused


@pytest.fixture(scope="module")
def steps(rule, behaviour_task):
    return view.effective_step(rule, rule.genome, behaviour_task, lr=1.0)


def test_delta_vs_gradient_shapes_and_adam_like_signs(curves):
    m, g = len(view.MOMENTA), view.POINTS
    assert curves["g"].shape == (g,) and curves["momentum"].shape == (m,)
    assert curves["delta"].shape == (m, g) and np.all(np.isfinite(curves["delta"]))
    # the "adam" init steps against Adam's direction m_hat / sqrt(v_hat) (plus a small MLP)
    down, zero, up = curves["delta"]
    assert np.all(up < 0) and np.all(down > 0)
    big = np.abs(curves["g"]) >= 0.5
    assert np.all(np.sign(zero[big]) == -np.sign(curves["g"][big]))
    # larger gradients give larger steps in the same direction
    assert np.all(np.diff(zero) < 0)


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_delta_vs_gradient_closed_form_without_mlp(rule, scale):
    """Output layer zeroed: delta = -lr * step * clip(m_hat / sqrt(v_hat)) of the probe element
    after this gradient (the "adam" feature: Adam's bias-corrected direction at step 100)."""
    genome = dict(rule.genome)
    genome["w1"], genome["b1"] = 0 * genome["w1"], 0 * genome["b1"]
    lr, size = 0.5, 256
    curves = view.delta_vs_gradient(rule, genome, lr=lr, size=size, points=9, scale=scale,
                                    p_scale=0.1)
    np.testing.assert_allclose(curves["g"][[0, -1]], [-view.G_MAX * scale, view.G_MAX * scale])
    bg = {k: np.asarray(v, np.float64)
          for k, v in view._background(jax.random.key(0), size - 1, scale, 0.1).items()}
    for m, row in zip(curves["momentum"], curves["delta"], strict=True):
        for g, d in zip(curves["g"], row, strict=True):
            grad = np.concatenate([[g], bg["g"]])
            mom = 0.9 * np.concatenate([[m], bg["m"]]) + 0.1 * grad
            v = 0.999 * np.concatenate([[m * m + scale**2 / 2], bg["v"]]) + 0.001 * grad ** 2
            t = 101  # the probe's step 100, counted from 1 for bias correction
            u = (mom / (1 - 0.9**t)) / np.sqrt(v / (1 - 0.999**t) + 1e-30)
            want = -lr * FEATURES.step * np.clip(u[0], -10, 10)
            np.testing.assert_allclose(d, want, rtol=2e-4, atol=1e-9)


def test_effective_step_one_value_per_step(steps, behaviour_task):
    for k in ("step", "rms_delta", "cosine", "loss", "rms_grad", "rms_param"):
        assert steps[k].shape == (behaviour_task.steps,) and np.all(np.isfinite(steps[k]))
    assert np.all(steps["step"] > 0)
    # starts as Adam's direction: mostly aligned with it, at about exp(log_step) = 1e-3
    assert steps["cosine"][0] > 0.9 and 1e-4 < steps["step"][0] < 1e-2
    assert steps["loss"][-1] < steps["loss"][0]


def test_effective_step_of_adam_is_its_learning_rate(tiny_task):
    from lab.core.optimizers import make_baseline
    adam = make_baseline("adam", {"learning_rate": 0.01})
    out = view.effective_step(adam, adam.genome, tiny_task, seeds=1)
    np.testing.assert_allclose(out["step"], 0.01, rtol=1e-4)
    np.testing.assert_allclose(out["cosine"], 1.0, rtol=1e-4)


def test_summary_and_plot(curves, steps, tmp_path):
    from lab.kinds.learned.plots import learned_behaviour
    s = view.summary(curves, steps, {"lr": 0.02, "value": 0.1})
    json.dumps(s, allow_nan=False)
    d = s["delta_vs_gradient"]
    assert len(d["g"]) == view.SUMMARY_G and len(d["delta"]) == len(view.MOMENTA)
    e = s["effective_step"]
    assert len(e["values"]) == len(view.FRACTIONS) and e["adam_lr"] == 0.02
    assert e["values"][0] == pytest.approx(steps["step"][0])
    path = learned_behaviour(curves, steps, tmp_path / "sub" / "b.png", "test", 0.02)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cheap_inspect(monkeypatch):
    import lab.kinds.learned.views
    monkeypatch.setattr(lab.kinds.learned.views, "BEHAVIOUR_TASK", "digits_mlp_tiny")
    monkeypatch.setenv("LAB_JAX_CACHE", "")


def test_lab_inspect_learned_artifact(rule, tmp_path, capsys, cheap_inspect):
    from lab.cli import main
    from lab.commands.artifacts import write_artifact
    from lab.core.target import Target
    from lab.tables import inspect_view
    # inspect fingerprints the loaded rule itself: the artifact's own fingerprint is not read
    function = {"hash": "0" * 32, "fingerprint": [], "equals": [],
                "closest": {"name": "adam", "distance": 0.0}}
    folder = write_artifact(tmp_path / "discovered", "lopt",
                            Target("lopt", rule, rule.genome, 1.0, "lopt"), function, {})
    assert main(["inspect", str(folder), "--json", "--store", str(tmp_path / "lab.db")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "learned" and doc["hash"] != function["hash"]
    assert doc["closest"]["name"] and doc["closest"]["distance"] >= 0
    assert doc["plot"] == str(folder / "behaviour.png")
    assert (folder / "behaviour.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["features"] == list(FEATURES.names)
    e = doc["behaviour"]["effective_step"]
    assert e["task"] == "digits_mlp_tiny" and e["adam_lr"] > 0
    assert all(v > 0 for v in e["values"])
    inspect_view(doc)  # the human view of the same document
    assert "effective step on digits_mlp_tiny" in capsys.readouterr().out


def test_plot_paths(rule, tmp_path):
    from lab.core.store import Store
    from lab.core.target import Target, plot_paths
    target = Target("x", rule, rule.genome, 1.0, "x")
    assert plot_paths(target, None, "ab" * 16, "behaviour") == []
    with Store(tmp_path / "lab.db") as store:
        (only,) = plot_paths(target, store, "ab" * 16, "behaviour")
        assert only == tmp_path / "inspect" / f"behaviour-{'ab' * 8}.png"
        run = {"id": "r1"}
        art = tmp_path / "discovered" / "x"
        paths = plot_paths(Target("x", rule, rule.genome, 1.0, "x", run=run, artifact=art),
                           store, "ab" * 16, "behaviour")
    assert paths == [art / "behaviour.png", tmp_path / "runs" / "r1" / only.name, only]
