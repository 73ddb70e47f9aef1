"""One trial: Arch -> model -> cost -> (constraints) -> training, reporting after every epoch.

:func:`run_trial` knows nothing about Ray or Optuna: it takes a ``report(metrics, checkpoint_dir)``
callable. The search passes Ray Tune's ``tune.report``; the sequential benchmark passes its own.
"""
from __future__ import annotations

import os
import tempfile
import traceback
from typing import Any, Callable, Dict, Optional

import torch

from .arch import Arch, build_model
from .cost import measure
from .data import load as load_data
from .intervals import wilson_interval
from .latency import measure_latency
from .metrics import REPORTED
from .plugins import import_plugins
from .results import WEIGHTS_FILE
from .train import DivergedError, select_device, train


_DATA_CACHE: Dict[tuple, Any] = {}


def settings_from_space(space) -> Dict[str, Any]:
    """The plain, picklable part of a SearchSpace a trial needs."""
    return {"input_size": list(space.input_size), "data": dict(space.data), "train": dict(space.train),
            "constraints": dict(space.constraints), "seed": space.search["seed"],
            "latency_batch_size": space.search["latency_batch_size"], "plugins": list(space.plugins)}


def get_data(data_settings: Dict[str, Any], seed: int):
    """Load (once per worker process) the dataset a trial trains on.

    Workers are reused between trials (``reuse_actors``), so the decoded dataset is cached.
    """
    key = (data_settings["dataset"], data_settings.get("root"), data_settings["image_size"],
           data_settings["val_fraction"], data_settings.get("augment", True), seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(data_settings["dataset"], root=data_settings.get("root"),
                                     image_size=data_settings["image_size"],
                                     val_fraction=data_settings["val_fraction"], seed=seed,
                                     augment=data_settings.get("augment", True))
    return _DATA_CACHE[key]


def constraint_violations(cost: Dict[str, float], constraints: Dict[str, float]) -> Dict[str, float]:
    """Relative excess of each broken limit: ``{"max_params": 0.25}`` means 25% over."""
    violations = {}
    for key, limit in constraints.items():
        value = cost[key[len("max_"):]]
        if value > limit:
            violations[key] = (value - limit) / limit
    return violations


def has_dsa(arch: Arch) -> bool:
    """True if a block carries DSA or a DSA gate: its effective MACs depend on the data."""
    return any(b.get("attention") == "dsa" or b.get("gate") is not None
               for b in arch.get("blocks", {}).values())


def run_trial(arch: Arch, settings: Dict[str, Any], report: Callable[..., None],
              gpu_ids=None, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Measure, check constraints, train and report one Arch. Returns the last metrics.

    Every report carries ``status``: ``ok`` while training, else ``infeasible`` (cost only,
    never trained) or ``failed`` (with ``error``). A trial never raises for a bad Arch or a
    diverging loss: the search records it and goes on.
    """
    extra = dict(extra or {})
    base: Dict[str, Any] = {**extra, **{name: float("nan") for name in REPORTED}, "epoch": 0}
    train_cfg = settings["train"]
    input_size = tuple(settings["input_size"])
    seed = settings["seed"]
    try:
        # A Ray worker is its own process: the user's modules must be registered in it too.
        import_plugins(settings.get("plugins", ()))
        torch.manual_seed(seed)
        model = build_model(arch)
        cost = measure(model, input_size).as_dict()
        base.update(params=cost["params"], macs=cost["macs"], effective_macs=cost["effective_macs"],
                    elementwise_ops=cost["elementwise_ops"])
        violations = constraint_violations(cost, settings["constraints"])
        if violations:
            final = {**base, "status": "infeasible", "violations": violations, "train_time_s": 0.0}
            report(final)
            return final
        device = select_device(gpu_ids)
        data = get_data(settings["data"], seed)
        model.to(device)
        base["latency_ms"] = measure_latency(model, input_size, batch_size=settings["latency_batch_size"],
                                             device=device)
        base["device"] = str(device)
        probe = data.sample_batch(64, split="val") if has_dsa(arch) else None
        epochs = train_cfg["epochs"]
        last: Dict[str, Any] = {}

        def on_epoch(epoch: int, metrics: Dict[str, Any]):
            nonlocal last
            low, high = wilson_interval(metrics["accuracy"], len(data.val))
            row = {**base, "status": "ok", "epoch": epoch, "accuracy": metrics["accuracy"],
                   "train_loss": metrics["train_loss"], "val_loss": metrics["val_loss"],
                   "train_time_s": metrics["train_time_s"], "val_images": len(data.val),
                   "accuracy_low": low, "accuracy_high": high}
            if probe is not None:  # DSA's kept fraction changes as the model trains
                row["effective_macs"] = measure(model, input_size, data=probe.to(device)).effective_macs
            if epoch == epochs:
                # The objective is the trained model's latency; the pre-training figure stands in
                # for earlier epochs so every report has one (schedulers rank on it).
                row["latency_ms"] = measure_latency(model, input_size, batch_size=settings["latency_batch_size"],
                                                    device=device)
            last = row
            if epoch == epochs:
                with tempfile.TemporaryDirectory() as folder:
                    save_weights(model, folder)
                    report(row, checkpoint_dir=folder)
            else:
                report(row)

        train(model, data, epochs=epochs, batch_size=train_cfg["batch_size"], lr=train_cfg["lr"],
              optimizer=train_cfg["optimizer"], weight_decay=train_cfg.get("weight_decay"),
              momentum=train_cfg.get("momentum", 0.9), label_smoothing=train_cfg.get("label_smoothing", 0.0),
              seed=seed, device=device, on_epoch=on_epoch)
        return last
    except DivergedError as exc:
        final = {**base, "status": "failed", "error": f"loss diverged: {exc}"}
    except Exception as exc:  # a bad Arch must not stop the search; the reason is recorded
        final = {**base, "status": "failed",
                 "error": f"{type(exc).__name__}: {exc}",
                 "traceback": "".join(traceback.format_exception(exc))[-4000:]}
    report(final)
    return final


def save_weights(model: torch.nn.Module, folder: str) -> str:
    """Write the model's state dict as safetensors into ``folder``; returns the file path."""
    from safetensors.torch import save_file
    path = os.path.join(folder, WEIGHTS_FILE)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
    return path

