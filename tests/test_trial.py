"""One trial without Ray: cost, constraints, training reports, failures."""
import math

import pytest
import torch

from nas_attn.space import loads
from nas_attn.metrics import REPORTED as REPORTED_METRICS
from nas_attn.intervals import wilson_interval
from nas_attn.trial import constraint_violations, run_trial, settings_from_space


@pytest.fixture
def space_yaml(tiny_space):
    return tiny_space(epochs=2, attention="{choices: [none, dsa]}", constraints=None)


def collect():
    rows = []

    def report(metrics, checkpoint_dir=None):
        rows.append((dict(metrics), checkpoint_dir))
    return rows, report


def dsa_arch(space):
    arch = space.baseline()
    arch["blocks"]["layer1.0"] = {"attention": "dsa", "attention_kwargs": {"threshold": 0.5}, "aw_conv": None}
    return arch


def test_a_trial_reports_every_epoch_and_saves_weights_at_the_end(space_yaml):
    space = loads(space_yaml)
    rows, report = collect()
    final = run_trial(dsa_arch(space), settings_from_space(space), report, gpu_ids=[])
    assert [r["epoch"] for r, _ in rows] == [1, 2]
    assert rows[0][1] is None and rows[1][1] is not None  # checkpoint with the final weights only
    for metrics, _ in rows:
        assert metrics["status"] == "ok" and metrics["device"] == "cpu"
        assert all(name in metrics for name in REPORTED_METRICS)
        assert 0 <= metrics["accuracy"] <= 1 and metrics["latency_ms"] > 0
        assert metrics["effective_macs"] <= metrics["macs"]
        # the 95% Wilson interval over the validation images travels with every accuracy
        assert metrics["val_images"] == 359  # 20% of scikit-learn's 1,797 digits
        assert (metrics["accuracy_low"], metrics["accuracy_high"]) == wilson_interval(metrics["accuracy"], 359)
    assert final == rows[-1][0]


def test_constraints_make_a_trial_infeasible_before_training(tiny_space):
    space = loads(tiny_space(epochs=2, attention="{choices: [none, dsa]}", constraints="{max_macs: 1000}"))
    rows, report = collect()
    final = run_trial(space.baseline(), settings_from_space(space), report, gpu_ids=[])
    assert len(rows) == 1 and final["status"] == "infeasible" and final["epoch"] == 0
    assert final["violations"]["max_macs"] == pytest.approx((final["macs"] - 1000) / 1000)
    assert math.isnan(final["accuracy"])


def test_constraint_violations_are_relative_excess():
    cost = {"params": 120, "macs": 50, "effective_macs": 40}
    assert constraint_violations(cost, {"max_params": 100, "max_macs": 50}) == {"max_params": pytest.approx(0.2)}
    assert constraint_violations(cost, {}) == {}


def test_a_broken_arch_is_reported_failed_not_raised(space_yaml):
    space = loads(space_yaml)
    arch = space.baseline()
    arch["blocks"]["layer9.0"] = {"attention": "se"}
    rows, report = collect()
    final = run_trial(arch, settings_from_space(space), report, gpu_ids=[])
    assert final["status"] == "failed" and "layer9.0" in final["error"]
    assert all(name in final for name in REPORTED_METRICS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: here the GPU would be used")
def test_gpus_assigned_without_cuda_fail_the_trial_clearly(space_yaml):
    space = loads(space_yaml)
    rows, report = collect()
    final = run_trial(space.baseline(), settings_from_space(space), report, gpu_ids=[0])
    assert final["status"] == "failed" and "CUDA" in final["error"]
