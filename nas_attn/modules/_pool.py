"""Adaptive pooling that exports: the same bins as torch's adaptive pooling, from slices.

ONNX has no adaptive pooling. torch's ONNX exporters lower ``adaptive_avg_pool2d`` /
``adaptive_max_pool2d`` to a fixed-window pool, which exists only when the output size
divides the input size (measured, torch 2.14: the recommended exporter, ``dynamo=True``,
fails on ``adaptive_max_pool2d`` from 6x6 or 7x7 to 4x4 with "No ONNX function found";
the TorchScript-based one fails on ``adaptive_avg_pool2d`` the same way).

Adaptive pooling's output cell i along an axis of n input pixels pools the pixels
``[floor(i * n / s), ceil((i + 1) * n / s))``; bins may overlap when s does not divide n,
and repeat pixels when s > n. Both the mean and the max over a cell are separable: pool the
rows of each row bin, then the columns of each column bin. That is a handful of slices and
reductions, which every exporter handles, and gives the same values (the max exactly, the
mean to float rounding) whenever H and W are known when exporting (static shapes).

Eager and TorchScript runs keep torch's single native op: it is faster, and the cost model
counts it as the pooling it is.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ._common import exporting


def adaptive_bins(size: int, out_size: int) -> List[Tuple[int, int]]:
    """[start, end) of each of ``out_size`` adaptive-pooling bins over ``size`` pixels."""
    return [((i * size) // out_size, -((-(i + 1) * size) // out_size)) for i in range(out_size)]


def _pool_dim(x: torch.Tensor, dim: int, out_size: int, mode: str) -> torch.Tensor:
    cells = []
    for start, end in adaptive_bins(x.shape[dim], out_size):
        part = x.narrow(dim, start, end - start)
        cells.append(part.mean(dim, keepdim=True) if mode == "avg" else part.amax(dim, keepdim=True))
    return torch.cat(cells, dim)


def sliced_adaptive_pool2d(x: torch.Tensor, output_size: Tuple[int, int], mode: str = "avg") -> torch.Tensor:
    """Adaptive ``mode`` ("avg" or "max") pooling of (..., H, W) to ``output_size``, from slices."""
    return _pool_dim(_pool_dim(x, -2, output_size[0], mode), -1, output_size[1], mode)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``, from slices while exporting (torch.export, ONNX)."""
    if exporting():
        return sliced_adaptive_pool2d(x, output_size, "avg")
    return F.adaptive_avg_pool2d(x, output_size)


def adaptive_max_pool2d(x: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d``, from slices while exporting (torch.export, ONNX)."""
    if exporting():
        return sliced_adaptive_pool2d(x, output_size, "max")
    return F.adaptive_max_pool2d(x, output_size)
