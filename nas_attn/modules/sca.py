"""SCA: Spatial Channel Attention, cross-dimensional gating without channel reduction.

Paper: T. Liu et al., "Spatial Channel Attention for Deep Convolutional Neural Networks",
Mathematics 10(10):1750, 2022, doi:10.3390/math10101750.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import BatchNorm2dAnySize, check_values, int_spec, reject_unknown


class PlaneGate(nn.Module):
    """Sigmoid gate over a 2-D plane of two pooled maps: [avg; max] -> k x k conv 2->1 -> BN -> sigmoid.

    Parameters: 2*k*k conv weights + 2 BN affine, whatever the plane's size.
    """

    def __init__(self, kernel_size: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.bn = BatchNorm2dAnySize(1, **dd)

    def forward(self, avg: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """avg, peak: (B, P, Q) pooled maps -> gate (B, 1, P, Q) in (0, 1)."""
        return torch.sigmoid(self.bn(self.conv(torch.stack((avg, peak), dim=1))))


class SCA(nn.Module):
    """Spatial Channel Attention: three parallel gates over the pairs (C,W), (C,H), (H,W).

    Stated by the paper's abstract (the method section is not available to us): captures
    cross-dimensional interaction between the spatial and channel dimensions; no
    dimensionality reduction (no reduction ratio, no bottleneck MLP); negligible overhead;
    lightweight, drops into any CNN.

    Reconstruction (ours): three parallel branches, each gating ``x`` over one pair of
    dimensions. The (C, W) branch pools over H, the (C, H) branch pools over W, the (H, W)
    branch pools over C; each pools with average and max to two maps, runs a k x k conv
    2->1 with BN and a sigmoid, and multiplies ``x`` by the gate broadcast over the pooled
    dimension. The output is the mean of the three gated copies. Parameters:
    3 x (2*k*k + 2) = 300 for k = 7, independent of the channel count: no layer has width
    C/r.

    Args:
        channels: number of input channels C (the parameter count does not depend on it).
        kernel_size: side of each branch's square conv, odd int >= 1, in pixels (channels
            for the two branches whose plane contains C).
        **kwargs: timm pass-through keywords; ``device``/``dtype`` are honoured, the others
            (act_layer, rd_ratio, ...) ignored; anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "kernel_size": int_spec(7, 1, None, odd=True, doc="branch conv size (pixels/channels)"),
    }

    def __init__(self, channels: int, kernel_size: int = 7, **kwargs):
        super().__init__()
        reject_unknown("SCA", kwargs, self.HYPERPARAMETERS)
        check_values("SCA", self.HYPERPARAMETERS, dict(kernel_size=kernel_size))
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.channels = channels
        self.kernel_size = int(kernel_size)
        self.gate_cw = PlaneGate(self.kernel_size, **dd)
        self.gate_ch = PlaneGate(self.kernel_size, **dd)
        self.gate_hw = PlaneGate(self.kernel_size, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 1, C, W) and (B, 1, C, H) share memory layout with (B, C, 1, W) / (B, C, H, 1).
        g_cw = self.gate_cw(x.mean(dim=2), x.amax(dim=2)).view(b, c, 1, w)
        g_ch = self.gate_ch(x.mean(dim=3), x.amax(dim=3)).view(b, c, h, 1)
        g_hw = self.gate_hw(x.mean(dim=1), x.amax(dim=1))
        # mean of the three gated copies = x times the mean gate: one full-size product.
        return x * ((g_cw + g_ch + g_hw) * (1.0 / 3.0))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
