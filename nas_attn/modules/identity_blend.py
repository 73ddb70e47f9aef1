"""IdentityBlend: an attention module blended with the identity by a learned, bounded weight.

``y = x + tanh(alpha) * (attn(x) - x)``, alpha per channel, 0 at init: the fresh module is
the identity, and however far training throws alpha the output stays between ``2x - attn(x)``
and ``attn(x)``. For a gate ``attn(x) = x * g`` with g in (0, 1) the gain per element is
``1 + tanh(alpha) * (g - 1)``, in (0, 2).

Why (issue 11): in a MobileNetV2/EfficientNet inverted residual the attention slot feeds
the 1x1 projection, and the first block of each stage has no shortcut, so a channel the
gate shuts is lost for good. timm's CBAM placed bare there (digits_mobilenetv2's recipe,
seed 0, CBAM in blocks.1-2) reached 0.643 validation accuracy against plain 0.799; its
channel gate, sigmoid(MLP(avg) + MLP(max)), sits at 0.5 at init but in a tiny MobileNetV2
after 30 SGD steps at lr 0.05 about half of its gates were below 0.05 and the rest above
0.95 (saturated: no gradient, shut channels stay shut). The spatial gate alone trained as
well as plain there, the channel gate alone did not. Blended, the same run gave 0.783 and
the gates stayed near 0.5 (the blend weight scales the gradient that reaches the gate's
MLP, so the first large-gradient steps no longer saturate it). timm's CBAM class is not
changed; :func:`nas_attn.arch.build_model` wraps the modules listed in
``nas_attn.modules.registry.BLEND_IN_INVERTED_RESIDUAL`` in inverted-residual blocks only
(in a ResNet block the slot output is added to the shortcut after the last BN, and CBAM
trained within noise of plain there).

Parameters: the wrapped module's plus C (alpha). Cost: two element-wise passes over the map.
"""
from __future__ import annotations

import torch
from torch import nn


class IdentityBlend(nn.Module):
    """``x + tanh(alpha) * (attn(x) - x)`` with a per-channel ``alpha`` starting at 0.

    Args:
        attn: the attention module, (B, C, H, W) -> same shape; its state dict sits under ``attn.``.
        channels: C, the number of channels (alpha has shape (1, C, 1, 1)).
    """

    def __init__(self, attn: nn.Module, channels: int):
        super().__init__()
        self.attn = attn
        first = next(attn.parameters(), None)
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1, 1, device=None if first is None else first.device,
                                              dtype=None if first is None else first.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lerp(x, self.attn(x), torch.tanh(self.alpha))
