"""Measured latency: the median forward time of a model, the one cost figure that is a time."""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch


def measure_latency(model: torch.nn.Module, input_size: Sequence[int], batch_size: int = 1,
                    device=None, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of one eval-mode forward pass, in milliseconds.

    ``input_size`` is (C, H, W); the batch is ``batch_size`` random images on ``device`` (the
    model's device by default). ``warmup`` passes run first and are not timed (allocator and
    kernel selection). On CUDA every pass is synchronised before the clock stops.
    """
    if batch_size < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1 and warmup >= 0, "
                         f"got batch_size={batch_size}, warmup={warmup}, repeats={repeats}")
    first = next(iter(model.parameters()), None)
    if device is None:
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    inputs = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for index in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                model(inputs)
                sync()
                if index >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(times)
