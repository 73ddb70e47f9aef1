"""Augmentation and resizing as tensor ops on whole batches (no per-sample Python pipeline)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_CIFAR_PAD = 4  # pixels of zero padding for the random crop, at 32x32
_DIGITS_MAX_ROTATE_DEG = 10.0
_DIGITS_SCALE = (0.9, 1.1)
_DIGITS_MAX_SHIFT = 0.1  # fraction of the image side


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < max(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _random_crop_flip(x: torch.Tensor, pad: int, generator) -> torch.Tensor:
    """Per-image random crop of the original size from the zero-padded batch, then a
    horizontal flip with probability 1/2 (torchvision's RandomCrop(padding) + RandomHorizontalFlip)."""
    b, _, h, w = x.shape
    offset_y = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = offset_y[:, None] + torch.arange(h)
    cols = offset_x[:, None] + torch.arange(w)
    # Reading a crop window's columns in reverse order is the flip of that crop.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    batch_index = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _random_affine(x: torch.Tensor, generator) -> torch.Tensor:
    """Per-image random rotation, isotropic scale and shift (zero fill) of a [0, 1] batch."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator, dtype=torch.float32)
    angle = (u[:, 0] * 2 - 1) * math.radians(_DIGITS_MAX_ROTATE_DEG)
    scale = _DIGITS_SCALE[0] + u[:, 1] * (_DIGITS_SCALE[1] - _DIGITS_SCALE[0])
    # affine_grid's coordinates span [-1, 1], i.e. 2 per image side.
    shift = (u[:, 2:] * 2 - 1) * (2 * _DIGITS_MAX_SHIFT)
    # theta maps output to input coordinates, so dividing by scale enlarges the digit.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
