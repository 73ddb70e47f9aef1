"""CPSAM: Channel and Position Squeeze Attention Module.

Paper: Y. Gong, Z. Gu, Z. Zhang, L. Ma, "CPSAM: Channel and Position Squeeze Attention
Module", ICONIP 2021, LNCS 13108, pp. 190-202.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import BatchNorm2dAnySize, check_values, float_spec, int_spec, reject_unknown


class ChannelSqueezeAttention(nn.Module):
    """CSA branch: one query-independent position map joins all positions (global-context style).

    ``a = softmax_HW(conv1x1_{C->1}(x))``; ``c = sum_j a_j x_j`` (length C);
    ``out = x + W2 ReLU(LN(W1 c))`` with W1: C -> rd, W2: rd -> C. Zeroing W2 (weight and
    bias) makes the branch the identity.
    """

    def __init__(self, channels: int, rd_channels: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=True, **dd)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, **dd)
        self.norm = nn.LayerNorm(rd_channels, **dd)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # float32 softmax: half-precision logits over many positions lose the small weights.
        attn = F.softmax(self.conv_attn(x).view(b, 1, h * w).float(), dim=-1).to(x.dtype)
        context = torch.bmm(x.reshape(b, c, h * w), attn.transpose(1, 2)).view(b, c, 1, 1)
        hidden = self.norm(self.fc1(context).view(b, -1)).view(b, -1, 1, 1)
        return x + self.fc2(F.relu(hidden))


class PositionSqueezeAttention(nn.Module):
    """PSA branch: squeeze positions with avg+max pooling, attend between all channel maps.

    ``P = AvgPool_s(x) + MaxPool_s(x)`` flattened to (C, s*s); ``S = softmax(P P^T)``
    (C x C); ``out = x + gamma * (S x_flat)``; gamma is a learned scalar, 0 at init, so the
    fresh branch is the identity. P P^T and the softmax run in float32 (in half precision
    P P^T overflows for activations above ~16 on 256 channels).
    """

    def __init__(self, pool_size: int, device=None, dtype=None):
        super().__init__()
        self.pool_size = pool_size
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.pool_size
        pooled = (F.adaptive_avg_pool2d(x, s) + F.adaptive_max_pool2d(x, s)).view(b, c, s * s).float()
        affinity = F.softmax(torch.bmm(pooled, pooled.transpose(1, 2)), dim=-1).to(x.dtype)
        mixed = torch.bmm(affinity, x.reshape(b, c, h * w)).view(b, c, h, w)
        return x + self.gamma * mixed


class CPSAM(nn.Module):
    """Channel and Position Squeeze Attention Module: CSA and PSA in parallel, fused by a conv.

    Stated by the paper's abstract (the method section is not available to us): two
    branches in parallel on the same input; a Channel Squeeze Attention joining positions
    through one query-independent map; a Position Squeeze Attention compressing the spatial
    dimensions with both average and max pooling and modelling the correlation between all
    channel maps; the two outputs combined by a conv layer; fewer parameters than a
    Non-Local block on the same channels.

    Reconstruction (ours): the two branch formulas in :class:`ChannelSqueezeAttention` and
    :class:`PositionSqueezeAttention`; the fuse
    ``y = x + BN(conv1x1_{2C->C, groups=C}(interleave(out_csa, out_psa)))`` mixes each
    channel's two branch outputs with 2 weights per channel; the BN weight starts at zero,
    so a fresh CPSAM is the identity (as timm's NonLocalAttn starts). A full 2C->C fuse
    would break "fewer parameters than Non-Local" (592,066 vs 132,800 at C=512); the
    grouped one keeps it: 1,434 / 18,018 / 68,802 parameters at C = 64 / 256 / 512 against
    NonLocalAttn's 2,264 / 33,632 / 132,800. PSA's ``S x`` costs C*C*H*W MACs per image.

    Args:
        channels: number of input channels C.
        rd_ratio: CSA bottleneck width as a fraction of C, in (0, 1]; rd = max(1, round(C * rd_ratio)).
            timm's EfficientNet builder passes its se ratio here.
        pool_size: side s of PSA's pooled map, int >= 1, in pooled cells (s*s per channel).
        **kwargs: timm pass-through keywords; ``device``/``dtype`` are honoured, the others
            ignored; anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "rd_ratio": float_spec(1 / 8, 0.0, 1.0, low_inclusive=False, doc="CSA bottleneck width / C"),
        "pool_size": int_spec(4, 1, None, doc="PSA pooled map side (cells)"),
    }

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, pool_size: int = 4, **kwargs):
        super().__init__()
        reject_unknown("CPSAM", kwargs, self.HYPERPARAMETERS)
        check_values("CPSAM", self.HYPERPARAMETERS, dict(rd_ratio=rd_ratio, pool_size=pool_size))
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.channels = channels
        self.rd_ratio = float(rd_ratio)
        self.pool_size = int(pool_size)
        rd_channels = max(1, int(round(channels * self.rd_ratio)))
        self.csa = ChannelSqueezeAttention(channels, rd_channels, **dd)
        self.psa = PositionSqueezeAttention(self.pool_size, **dd)
        self.fuse = nn.Conv2d(2 * channels, channels, 1, groups=channels, bias=False, **dd)
        self.bn = BatchNorm2dAnySize(channels, **dd)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        both = torch.stack((self.csa(x), self.psa(x)), dim=2).view(b, 2 * c, h, w)
        return x + self.bn(self.fuse(both))

    def extra_repr(self) -> str:
        return f"rd_ratio={self.rd_ratio:g}, pool_size={self.pool_size}"
