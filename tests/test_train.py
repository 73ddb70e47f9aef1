"""Tests for nas_attn.train: training loop, determinism, early stop, divergence, devices."""

import math
import pickle

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from nas_attn import data as D
from nas_attn.train import (DeviceError, DivergedError, TrainResult, evaluate, select_device,
                            train)


def tiny_cnn(in_chans=1, num_classes=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions split over threads stall whenever another process holds a core
    # (this file took 6 to 75 s on a shared 2-core machine with 2 threads, 7-8 s with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits8():
    return D.load("digits", image_size=8, val_fraction=0.2, seed=0)


METRIC_KEYS = {"epoch", "accuracy", "train_loss", "val_loss", "epoch_time_s", "train_time_s"}


def test_tiny_cnn_learns_digits_and_reports_every_epoch(digits8):
    seen = []
    result = train(tiny_cnn(), digits8, epochs=3, batch_size=32, lr=0.1,
                   on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert isinstance(result, TrainResult)
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert [m["epoch"] for _, m in seen] == [1, 2, 3]
    for _, metrics in seen:
        assert METRIC_KEYS <= set(metrics)
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["epoch_time_s"] > 0 and math.isfinite(metrics["train_loss"])
    cumulative = np.cumsum([m["epoch_time_s"] for _, m in seen])
    assert np.allclose([m["train_time_s"] for _, m in seen], cumulative)
    assert result.epochs == 3 and not result.stopped_early
    assert result.accuracy == seen[-1][1]["accuracy"] and result.history == [m for _, m in seen]
    assert result.accuracy > 0.6  # chance is 0.1
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert seen[-1][1]["steps"] == 3 * (len(digits8.train) // 32)


def test_same_seed_same_weights_different_seed_different(digits8):
    runs = []
    for seed in (7, 7, 8):
        model = tiny_cnn(seed=0)
        result = train(model, digits8, epochs=1, batch_size=64, seed=seed)
        runs.append((result, model.state_dict()))
    (first, w1), (second, w2), (third, w3) = runs
    assert first.accuracy == second.accuracy and first.train_loss == second.train_loss
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_on_epoch_true_stops_training(digits8):
    calls = []

    def stop_after_two(epoch, metrics):
        calls.append(epoch)
        return epoch == 2

    result = train(tiny_cnn(), digits8, epochs=5, on_epoch=stop_after_two)
    assert calls == [1, 2] and result.epochs == 2 and result.stopped_early
    assert len(result.history) == 2
    with pytest.raises(ValueError, match="on_epoch must return"):
        train(tiny_cnn(), digits8, epochs=2, on_epoch=lambda epoch, metrics: metrics)


def test_cosine_schedule_with_warmup(digits8):
    lrs = []
    train(tiny_cnn(), digits8, epochs=4, lr=0.2, on_epoch=lambda e, m: lrs.append(m["lr"]))
    # Per-step cosine from 0.2 to 0; the value after epoch e is 0.1 * (1 + cos(pi * e / 4)).
    assert np.allclose(lrs, [0.1 * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)])
    lrs.clear()
    train(tiny_cnn(), digits8, epochs=3, lr=0.2, warmup_epochs=1, on_epoch=lambda e, m: lrs.append(m["lr"]))
    # Warmup ends after epoch 1, at the peak; the cosine then spans epochs 2..3.
    assert np.allclose(lrs, [0.2, 0.1, 0.0])


def test_adamw_and_label_smoothing_run(digits8):
    # One full-batch step. AdamW's first step moves every weight by lr x sign(grad) (m / sqrt(v)
    # = g / |g|) after the decoupled decay w *= 1 - lr x wd; SGD would move it by lr x grad.
    model = tiny_cnn()
    before = model[0].weight.detach().clone()
    lr, wd = 3e-3, 0.05
    result = train(model, digits8, epochs=1, batch_size=len(digits8.train), optimizer="adamw", lr=lr,
                   label_smoothing=0.1)
    assert result.history[-1]["steps"] == 1
    step = model[0].weight.detach() - before * (1 - lr * wd)
    moved = step.abs() > lr / 10  # weights whose gradient is not ~0 (Adam's eps)
    assert moved.float().mean() > 0.9
    torch.testing.assert_close(step[moved].abs(), torch.full_like(step[moved], lr), rtol=1e-3, atol=0)
    assert math.isfinite(result.val_loss) and 0.0 <= result.accuracy <= 1.0


def test_label_smoothing_reaches_the_training_loss(digits8):
    # A model with fixed, confident logits: its smoothed cross-entropy is, by hand,
    # eps x (mean over the classes of -log p) + (1 - eps) x (-log p_true).
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            logits = torch.full((len(x), 10), -4.0)
            logits[:, 0] = 4.0
            return logits + 0 * self.bias  # a parameter for the optimizer, zero gradient

    eps = 0.1
    result = train(Fixed(), digits8, epochs=1, batch_size=len(digits8.train), lr=1e-3, label_smoothing=eps)
    log_p = F.log_softmax(torch.tensor([4.0] + [-4.0] * 9), dim=0)
    labels = torch.tensor([int(digits8.train[i][1]) for i in range(len(digits8.train))])
    nll = -log_p[labels].double().mean()
    expected = eps * (-log_p.double().mean()) + (1 - eps) * nll
    # float32 loss of one batch: ~1e-7 relative error; no smoothing would be 1.4e-4 away
    assert result.train_loss == pytest.approx(expected.item(), rel=1e-6)


class InfAfter(nn.Module):
    """A model whose output becomes infinite on its ``bad_call``-th training forward."""

    def __init__(self, bad_call):
        super().__init__()
        self.body = tiny_cnn()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                out = out * float("inf")
        return out


def test_nonfinite_loss_raises_diverged(digits8):
    steps_per_epoch = len(digits8.train) // 64
    with pytest.raises(DivergedError) as info:
        train(InfAfter(bad_call=steps_per_epoch + 3), digits8, epochs=2)
    error = info.value
    assert (error.epoch, error.step, error.phase) == (2, steps_per_epoch + 3, "train")
    assert not math.isfinite(error.value)
    assert "epoch 2" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # Ray ships errors between processes
    assert (copy.epoch, copy.step, copy.phase) == (2, steps_per_epoch + 3, "train")


def test_huge_learning_rate_diverges(digits8):
    # A deep linear net (no normalisation to absorb it): the update of each layer scales
    # with the others' weights, so weights grow geometrically until they overflow.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10))
    with pytest.raises(DivergedError) as info:
        train(model, digits8, epochs=1, lr=1e10, weight_decay=0.0)
    assert info.value.epoch == 1 and 1 < info.value.step <= len(digits8.train) // 64
    assert math.isnan(info.value.value) or math.isinf(info.value.value)


def test_evaluate_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, -1.0]])
    labels = torch.tensor([0, 1, 2, 2])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    accuracy, loss = evaluate(nn.Identity(), batches, device="cpu")
    assert accuracy == 0.5  # rows 0 and 1 right, rows 2 and 3 wrong
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_evaluate_bundle_equals_result_and_restores_mode(digits8):
    model = tiny_cnn()
    result = train(model, digits8, epochs=1)
    assert not model.training
    model.train()
    accuracy, loss = evaluate(model, digits8)
    assert model.training
    assert accuracy == result.accuracy and loss == pytest.approx(result.val_loss)
    assert evaluate(model, digits8.val, batch_size=7) == pytest.approx((accuracy, loss))


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(optimizer="adam"), "optimizer must be one of"),
    (dict(momentum=1.0), "momentum"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(seed=-3), "seed"),
    (dict(warmup_epochs=5), "warmup_epochs"),
])
def test_train_rejects_bad_arguments(digits8, kwargs, match):
    arguments = dict(epochs=1) | kwargs
    with pytest.raises(ValueError, match=match):
        train(tiny_cnn(), digits8, **arguments)


def test_select_device():
    assert select_device() == torch.device("cpu")
    assert select_device([], cuda_available=True) == torch.device("cpu")
    assert select_device([2], cuda_available=True) == torch.device("cuda:0")
    assert select_device(["0", "1"], cuda_available=True) == torch.device("cuda:0")
    with pytest.raises(DeviceError, match=r"gpu_ids.*\[3\].*cuda.is_available\(\) is False") as info:
        select_device([3], cuda_available=False)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------
# Training on the on-disk formats


def write_cifar10(root, per_batch=8, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_resnet18_trains_one_epoch_on_cifar_folder(tmp_path):
    write_cifar10(tmp_path)
    bundle = D.load("cifar10", root=tmp_path, image_size=16, val_fraction=0.25)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, in_chans=3)
    result = train(model, bundle, epochs=1, batch_size=8)
    assert result.epochs == 1 and 0.0 <= result.accuracy <= 1.0
    assert result.history[0]["steps"] == 30 // 8
    assert math.isfinite(result.train_loss) and math.isfinite(result.val_loss)
    test_accuracy, _ = evaluate(model, bundle.test)
    assert 0.0 <= test_accuracy <= 1.0


def test_trains_one_epoch_on_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    bundle = D.load("imagefolder", root=tmp_path, image_size=16, val_fraction=0.25)
    model = tiny_cnn(in_chans=3, num_classes=2)
    result = train(model, bundle, epochs=1, batch_size=4)
    assert result.epochs == 1 and result.history[0]["steps"] == 9 // 4
    assert result.accuracy in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 validation images
    again = train(tiny_cnn(in_chans=3, num_classes=2), bundle, epochs=1, batch_size=4)
    assert again.train_loss == result.train_loss  # DataLoader path is seeded as well
    workers = train(tiny_cnn(in_chans=3, num_classes=2), bundle, epochs=2, batch_size=4, num_workers=1)
    assert workers.epochs == 2 and math.isfinite(workers.train_loss)


def test_training_reads_the_loss_back_rarely_not_every_step(digits8, monkeypatch):
    # Each Tensor.item() is a device-to-host copy (a GPU sync); a step must not need one.
    from nas_attn import train as train_mod
    calls = []
    original = torch.Tensor.item

    def counting_item(self):
        calls.append(1)
        return original(self)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    steps = len(digits8.train) // 8
    assert steps > 2 * train_mod.DIVERGENCE_CHECK_STEPS
    train(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10)), digits8, epochs=1, batch_size=8)
    # One check per DIVERGENCE_CHECK_STEPS steps, the epoch-end check, the epoch's loss and accuracy,
    # and evaluate's two: far fewer than one per step.
    assert len(calls) <= steps // train_mod.DIVERGENCE_CHECK_STEPS + 8 < steps
