"""The confirmation step's pieces without Ray: retraining with another seed, the Pareto set by
mean accuracy over seeds, and how the interval prints."""
import math

from nas_attn.metrics import accuracy_text
from nas_attn.results import objective_value, pareto_records
from nas_attn.search._confirm import _retrain
from nas_attn.space import loads
from nas_attn.trial import settings_from_space

OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "macs", "direction": "minimize"}]


def record(number, accuracy, macs, confirm=None):
    r = {"number": number, "status": "ok", "arch": {}, "metrics": {"accuracy": accuracy, "macs": macs,
                                                                   "accuracy_low": accuracy - 0.02,
                                                                   "accuracy_high": accuracy + 0.02}}
    if confirm is not None:
        r["confirm"] = {"seeds": [0, 1, 2], "accuracy": confirm, "mean": sum(confirm) / 3,
                        "low": min(confirm), "high": max(confirm)}
    return r


def test_confirmed_pareto_set_uses_the_mean_and_only_confirmed_trials():
    # trial 1 won trial 0 by luck on seed 0; over three seeds it is worse at more MACs
    records = [record(0, 0.80, 1e6), record(1, 0.82, 2e6), record(2, 0.70, 0.5e6)]
    assert [r["number"] for r in pareto_records(records, OBJECTIVES)] == [0, 1, 2]
    records[0] = record(0, 0.80, 1e6, confirm=[0.80, 0.81, 0.79])
    records[1] = record(1, 0.82, 2e6, confirm=[0.82, 0.76, 0.77])
    records[2] = record(2, 0.70, 0.5e6, confirm=[0.70, 0.71, 0.69])
    records.append(record(3, 0.90, 3e6))  # never confirmed (was dominated on its one seed)
    assert [r["number"] for r in pareto_records(records, OBJECTIVES)] == [0, 2]
    assert objective_value(records[1], "accuracy") == (0.82 + 0.76 + 0.77) / 3
    assert objective_value(records[3], "accuracy") == 0.90


def test_accuracy_text_shows_the_interval():
    assert accuracy_text(record(0, 0.8, 1)) == "0.8000 [0.7800, 0.8200]"
    assert accuracy_text(record(0, 0.8, 1, confirm=[0.8, 0.81, 0.79]), digits=3) == "0.800 [0.790, 0.810] mean of 3 seeds"
    assert accuracy_text({"metrics": {"accuracy": float("nan")}}) == "-"


def test_retrain_uses_the_given_seed():
    space = loads("""\
model: {name: resnet18, args: {num_classes: 10, in_chans: 1, layers: [1, 1, 1, 1], channels: [8, 16, 32, 64]}}
data: {dataset: digits, image_size: 16}
train: {epochs: 1, batch_size: 128, lr: 0.05}
blocks: {"layer1.*": {attention: {choices: [none, se]}}}
""")
    settings = settings_from_space(space)
    a, b, a_again = (_retrain(space.baseline(), settings, seed) for seed in (1, 2, 1))
    assert a["status"] == "ok" and 0 <= a["accuracy"] <= 1 and not math.isnan(a["accuracy_low"])
    assert a["accuracy"] == a_again["accuracy"]  # the seed decides the run
    assert a["train_loss"] != b["train_loss"]
