"""Training and evaluation of one model on a :class:`nas_attn.data.DataBundle`.

:func:`train` runs inside every trial of the search, so it is plain and quick:
SGD (Nesterov-free, momentum 0.9) or AdamW, a per-step cosine learning-rate schedule
to 0 with an optional linear warmup, cross-entropy with optional label smoothing,
mixed precision (float16 autocast + GradScaler) on CUDA only, and top-1 accuracy on the
validation split after every epoch.

Early stopping: ``on_epoch(epoch, metrics)`` is called after every epoch; returning
``True`` stops training after that epoch (``TrainResult.stopped_early`` is then True).
``None`` or ``False`` continue; any other return value is a ValueError, so a callback
that returns something by accident does not stop a trial silently.

Divergence: a non-finite training loss (or validation loss) raises :class:`DivergedError`
carrying the epoch, the exact step and the value, so a search can record the trial as failed
with its reason. The training loss is watched on its device and read back every
``DIVERGENCE_CHECK_STEPS`` steps and at each epoch's end (not every step: on a GPU each read
waits for the queued work), so a diverged run stops at most that many steps later.

Determinism: ``seed`` seeds Python's ``random``, numpy's global RNG and torch (all
devices), and a dedicated CPU generator drives the shuffling and augmentation; on CPU two
runs with the same seed, model initialisation and thread count give identical weights.
The model's own initialisation happens before :func:`train`; seed it separately.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from nas_attn.data import DataBundle

__all__ = [
    "OPTIMIZERS",
    "DEFAULT_WEIGHT_DECAY",
    "DivergedError",
    "DeviceError",
    "TrainResult",
    "train",
    "evaluate",
    "select_device",
    "seed_everything",
]

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


class DivergedError(FloatingPointError):
    """The loss became NaN or infinite.

    Attributes: ``epoch`` (1-based), ``step`` (1-based optimizer step counted from the
    start of training; for ``phase="val"`` the number of steps taken so far), ``value``
    (the loss, a float) and ``phase`` ("train" or "val").
    """

    def __init__(self, epoch: int, step: int, value: float, phase: str = "train"):
        self.epoch, self.step, self.value, self.phase = epoch, step, value, phase
        super().__init__(f"{phase} loss diverged to {value} at epoch {epoch}, step {step}")

    def __reduce__(self):  # keeps the attributes across processes (Ray pickles errors)
        return type(self), (self.epoch, self.step, self.value, self.phase)


class DeviceError(ValueError):
    """GPUs were assigned to the trial but CUDA cannot use them."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`. Accuracies are fractions in [0, 1], times in seconds.

    ``accuracy``/``val_loss``/``train_loss`` are those of the last epoch run (the model is
    left with that epoch's weights); ``history`` holds every epoch's metrics dict.
    """

    accuracy: float
    val_loss: float
    train_loss: float
    epochs: int
    stopped_early: bool
    train_time_s: float
    best_accuracy: float
    best_epoch: int
    device: str
    history: list = field(default_factory=list)


def select_device(gpu_ids: Optional[Sequence] = None, cuda_available: Optional[bool] = None) -> torch.device:
    """The device for a trial given the GPU ids Ray assigned to it (``ray.get_gpu_ids()``).

    No ids (None or empty) -> CPU. Some ids and CUDA available -> ``cuda:0``: Ray sets
    CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible device is the trial's.
    Some ids but no CUDA -> :class:`DeviceError`. ``cuda_available`` defaults to
    ``torch.cuda.is_available()``; tests pass it explicitly.
    """
    ids = list(gpu_ids) if gpu_ids is not None else []
    if not ids:
        return torch.device("cpu")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise DeviceError(
            f"gpu_ids: Ray assigned GPU(s) {ids} to this trial but torch.cuda.is_available() is "
            f"False (torch {torch.__version__}, CUDA build: {torch.version.cuda}); install a CUDA "
            "build of torch on that node or request gpu: 0 in the search resources"
        )
    return torch.device("cuda:0")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _batches(dataset: Dataset, batch_size: int, *, shuffle: bool, generator, drop_last: bool,
             device: torch.device, num_workers: int, loader: Optional[DataLoader] = None):
    """(images, labels) batches on ``device``: the dataset's own tensor batching when it
    has one, else the given (or a new) DataLoader."""
    if hasattr(dataset, "iter_batches"):
        yield from dataset.iter_batches(batch_size, shuffle=shuffle, generator=generator,
                                        drop_last=drop_last, device=device)
        return
    if loader is None:
        loader = _make_loader(dataset, batch_size, shuffle=shuffle, generator=generator,
                              drop_last=drop_last, device=device, num_workers=num_workers)
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _make_loader(dataset, batch_size, *, shuffle, generator, drop_last, device, num_workers,
                 persistent=False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and num_workers > 0)


def evaluate(model: nn.Module, data, device=None, batch_size: int = 256, num_workers: int = 0) -> tuple:
    """Top-1 accuracy (fraction in [0, 1]) and mean cross-entropy of ``model`` on ``data``.

    ``data`` is a :class:`DataBundle` (its validation split), a Dataset, or an iterable of
    (images, labels) batches such as a DataLoader. ``device`` defaults to the model's;
    ``num_workers`` feeds a DataLoader for datasets without tensor batching. The model
    runs in eval mode without gradients; its train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    _check("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1, "an integer >= 1")
    _check("num_workers", num_workers, _is_int(num_workers) and num_workers >= 0, "an integer >= 0")
    if isinstance(data, DataBundle):
        data = data.val
    if isinstance(data, Dataset):
        batches = _batches(data, batch_size, shuffle=False, generator=None, drop_last=False,
                           device=device, num_workers=num_workers)
    else:
        batches = ((x.to(device), y.to(device)) for x, y in data)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            for images, labels in batches:
                logits = model(images).float()
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
                correct += (logits.argmax(1) == labels).sum()
                count += len(labels)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("data must hold at least one example, got an empty dataset")
    return correct.item() / count, loss_sum.item() / count


def _cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based): linear warmup
    from 1/warmup_steps to 1, then a half cosine from 1 to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


#: Optimizer steps between divergence checks: each check copies the loss state to the host,
#: which on a GPU waits for every queued kernel; one per step would serialise training.
DIVERGENCE_CHECK_STEPS = 50


class _DivergenceWatch:
    """Keeps, on the loss's device, the first step whose loss was not finite and that loss."""

    def __init__(self, device):
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        new_bad = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad = torch.where(new_bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.value = torch.where(new_bad, loss.float(), self.value)

    def check(self, epoch: int) -> None:
        step = int(self.first_bad.item())
        if step:
            raise DivergedError(epoch, step, float(self.value.item()), "train")


def train(model: nn.Module, data: DataBundle, epochs: int, batch_size: int = 64, lr: float = 0.05,
          optimizer: str = "sgd", weight_decay: Optional[float] = None, momentum: float = 0.9,
          label_smoothing: float = 0.0, seed: int = 0, device=None,
          on_epoch: Optional[Callable[[int, dict], Optional[bool]]] = None, num_workers: int = 0,
          warmup_epochs: float = 0.0) -> TrainResult:
    """Train ``model`` on ``data.train`` for up to ``epochs`` epochs; evaluate on ``data.val``.

    Args:
        epochs: number of epochs (>= 1); the cosine schedule spans all of them even when
            ``on_epoch`` stops training early.
        batch_size: images per optimizer step (>= 1). The last partial batch of an epoch
            is dropped when the split holds at least one full batch (a batch of 1 breaks
            BatchNorm).
        lr: peak learning rate (> 0).
        optimizer: "sgd" (with ``momentum``) or "adamw".
        weight_decay: >= 0; None means 5e-4 for sgd, 0.05 for adamw. Applied to weights
            with 2 or more dimensions only.
        momentum: SGD momentum in [0, 1).
        label_smoothing: cross-entropy label smoothing in [0, 1) (training loss only).
        seed: integer >= 0 for shuffling, augmentation and global RNGs.
        device: torch device or string; None keeps the model where it is.
        on_epoch: ``on_epoch(epoch, metrics)`` after each epoch; metrics has ``epoch``
            (1-based), ``accuracy`` (validation top-1, fraction), ``val_loss``,
            ``train_loss``, ``train_accuracy`` (on augmented batches), ``lr`` (at the end
            of the epoch), ``steps`` (cumulative), ``epoch_time_s`` (training and
            evaluation of that epoch, seconds) and ``train_time_s`` (cumulative seconds,
            callback time excluded). Return True to stop.
        num_workers: DataLoader worker processes for datasets without tensor batching
            (ImageFolder); in-memory datasets (digits, CIFAR) ignore it.
        warmup_epochs: length of the linear warmup, in epochs (>= 0, may be fractional).

    Returns:
        :class:`TrainResult`; the model holds the last epoch's weights and is in eval mode.

    Raises:
        DivergedError: the training or validation loss became NaN or infinite.
        ValueError: an argument is out of range.
    """
    _check("data", data, isinstance(data, DataBundle), "a nas_attn.data.DataBundle")
    _check("epochs", epochs, _is_int(epochs) and epochs >= 1, "an integer >= 1")
    _check("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1, "an integer >= 1")
    _check("lr", lr, _is_number(lr) and lr > 0 and math.isfinite(lr), "a finite number > 0")
    _check("optimizer", optimizer, optimizer in OPTIMIZERS, f"one of {list(OPTIMIZERS)}")
    if weight_decay is None:
        weight_decay = DEFAULT_WEIGHT_DECAY[optimizer]
    _check("weight_decay", weight_decay, _is_number(weight_decay) and weight_decay >= 0, "a number >= 0")
    _check("momentum", momentum, _is_number(momentum) and 0 <= momentum < 1, "a number in [0, 1)")
    _check("label_smoothing", label_smoothing, _is_number(label_smoothing) and 0 <= label_smoothing < 1,
           "a number in [0, 1)")
    _check("seed", seed, _is_int(seed) and seed >= 0, "an integer >= 0")
    _check("num_workers", num_workers, _is_int(num_workers) and num_workers >= 0, "an integer >= 0")
    _check("warmup_epochs", warmup_epochs, _is_number(warmup_epochs) and 0 <= warmup_epochs <= epochs,
           f"a number in [0, epochs={epochs}]")
    _check("on_epoch", on_epoch, on_epoch is None or callable(on_epoch), "None or callable")
    if len(data.train) == 0:
        raise ValueError("data.train must hold at least one example, got an empty split")

    device = torch.device(device) if device is not None else _model_device(model)
    use_amp = device.type == "cuda"
    model.to(device)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)

    train_set = data.train
    drop_last = len(train_set) >= batch_size
    steps_per_epoch = len(train_set) // batch_size if drop_last else 1
    loader = None
    if not hasattr(train_set, "iter_batches"):
        # One loader for all epochs so persistent workers survive between epochs.
        loader = _make_loader(train_set, batch_size, shuffle=True, generator=generator,
                              drop_last=drop_last, device=device, num_workers=num_workers,
                              persistent=True)

    total_steps = steps_per_epoch * epochs
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    # Weight decay on biases and norm scales (1-D parameters) only shrinks them towards a
    # degenerate network: timm's grouping decays conv/linear weights only.
    from timm.optim import param_groups_weight_decay
    groups = param_groups_weight_decay(model, float(weight_decay))
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _cosine_factor(step, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))

    history = []
    step = 0
    train_time_s = 0.0
    stopped_early = False
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
        watch = _DivergenceWatch(device)
        for images, labels in _batches(train_set, batch_size, shuffle=True, generator=generator,
                                       drop_last=drop_last, device=device, num_workers=num_workers,
                                       loader=loader):
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images)
                loss = criterion(logits.float(), labels)
            watch.update(loss.detach(), step + 1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            schedule.step()
            step += 1
            if step % DIVERGENCE_CHECK_STEPS == 0:
                watch.check(epoch)
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
        watch.check(epoch)
        accuracy, val_loss = evaluate(model, data.val, device=device, batch_size=max(batch_size, 256),
                                      num_workers=num_workers)
        if not math.isfinite(val_loss):
            raise DivergedError(epoch, step, val_loss, "val")
        epoch_time_s = time.perf_counter() - start
        train_time_s += epoch_time_s
        metrics = {
            "epoch": epoch,
            "accuracy": accuracy,
            "val_loss": val_loss,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_accuracy": correct.item() / max(seen, 1),
            "lr": opt.param_groups[0]["lr"],
            "steps": step,
            "epoch_time_s": epoch_time_s,
            "train_time_s": train_time_s,
        }
        history.append(metrics)
        if on_epoch is not None:
            verdict = on_epoch(epoch, dict(metrics))
            if verdict is not None and not isinstance(verdict, (bool, np.bool_)):
                raise ValueError(f"on_epoch must return True (stop), False or None, got {verdict!r}")
            if verdict:
                stopped_early = epoch < epochs
                break

    model.eval()
    best = max(history, key=lambda m: m["accuracy"])
    last = history[-1]
    return TrainResult(
        accuracy=last["accuracy"], val_loss=last["val_loss"], train_loss=last["train_loss"],
        epochs=len(history), stopped_early=stopped_early, train_time_s=train_time_s,
        best_accuracy=best["accuracy"], best_epoch=best["epoch"], device=str(device), history=history,
    )
