"""DSA: Double Spatial Attention, a parameter-free spatial pruning attention.

Paper: H. Wei, Z. Wang, G. Hua, Y. Zhao, "Double Spatial Attention for Convolution Neural
Networks", ICBDA 2022, pp. 149-153, doi:10.1109/ICBDA55095.2022.9760356.
"""
import math
from typing import Optional

import torch
from torch import nn

from ._common import bool_spec, check_values, choice_spec, exporting, float_spec, reject_unknown


class DSA(nn.Module):
    """Double Spatial Attention: foreground/background coefficients that prune pixels.

    Stated by the paper's abstract (the method section is not available to us): no
    convolution; no non-linear operation (no sigmoid, softmax, ReLU); a foreground and a
    background spatial attention coefficient; redundant spatial pixels are pruned
    dynamically according to them, which reduces computation; zero added parameters.

    Reconstruction (ours, each open choice a constructor argument):

    1. saliency ``s`` = reduction over channels of ``x``, shape (B, 1, H, W): ``reduce`` is
       ``"mean"``, ``"max"`` or ``"mean_max"`` (the average of the two).
    2. foreground ``a_fg = (s - min_HW s) / (max_HW s - min_HW s + eps)`` per sample, in
       [0, 1]; background ``a_bg = 1 - a_fg``.
    3. keep mask ``M``: ``prune_mode="threshold"`` keeps pixels with ``a_fg >= threshold``
       (the default 0.5 is ``a_fg >= a_bg``; 0 keeps every pixel); ``prune_mode="keep_ratio"``
       keeps the ``ceil(keep_ratio * H * W)`` most salient pixels of each sample.
    4. ``y = x * M * (1 + a_fg)`` with ``reweight=True``, else ``y = x * M``.
    5. A sample whose saliency map is flat (``max - min <= eps``) carries no foreground /
       background information and passes unchanged (all pixels kept, ``a_fg = 0``). This
       keeps residual branches of timm's ResNets alive: their last BN starts at zero, so
       the attention input is all zeros on the first step.

    6. Where DSA may prune (changed in issue 11): only in a block with a shortcut. In a
       MobileNetV2 inverted residual the slot sits after the depthwise conv, before the 1x1
       projection; the first block of every stage has no shortcut, so a pixel zeroed there is
       lost to every later layer. Trained on the embedded digits with the space's recipe
       (mobilenetv2_100, DSA at threshold 0.5 in blocks.1-2), pruning everywhere reached
       0.396 accuracy against 0.808 without attention. The model builder tells each DSA
       whether its block has a shortcut (``block_has_shortcut``); without one DSA keeps every
       pixel and only reweights (``y = x * (1 + a_fg)``), and ``kept_fraction`` is 1 there.
       ``prune_without_shortcut=True`` restores pruning everywhere.

    Saliency statistics are computed in float32 whatever the input dtype, so half
    precision inputs never produce NaN or a division by zero.

    Args:
        channels: number of input channels C (unused: DSA has no parameters; kept for
            timm's ``attn_layer(channels, **kwargs)`` signature).
        threshold: foreground threshold in [0, 1), dimensionless (a_fg is min-max
            normalised).
        reduce: channel reduction giving the saliency map.
        prune_mode: ``"threshold"`` or ``"keep_ratio"``.
        keep_ratio: fraction of pixels kept per sample in ``keep_ratio`` mode, in (0, 1].
        reweight: multiply kept pixels by ``1 + a_fg``.
        eps: flatness tolerance and denominator guard, in the units of the activations, > 0.
        prune_without_shortcut: also prune in a block that has no shortcut (rule 6).
        **kwargs: timm pass-through keywords (device, dtype, act_layer, rd_ratio, ...) are
            accepted and ignored; anything else raises ``UnknownArgumentError``.

    Attributes:
        kept_fraction: fraction of pixels kept in the last forward, averaged over the batch
            (python float; None before the first forward). The cost model scales the
            computation downstream of DSA by it.
    """

    HYPERPARAMETERS = {
        "threshold": float_spec(0.5, 0.0, 1.0, high_inclusive=False,
                                doc="keep pixels with a_fg >= threshold (dimensionless)"),
        "reduce": choice_spec("mean", ("mean", "max", "mean_max"), doc="channel reduction"),
        "prune_mode": choice_spec("threshold", ("threshold", "keep_ratio"), doc="pruning rule"),
        "keep_ratio": float_spec(0.5, 0.0, 1.0, low_inclusive=False,
                                 doc="fraction of pixels kept per sample (keep_ratio mode)"),
        "reweight": bool_spec(True, doc="scale kept pixels by 1 + a_fg"),
        "eps": float_spec(1e-6, 0.0, None, low_inclusive=False,
                          doc="flatness tolerance, activation units"),
        "prune_without_shortcut": bool_spec(
            False, doc="also prune in a block without a shortcut (pruned pixels are then lost)"),
    }
    # Declared for TorchScript, which otherwise types the attribute by its first value (None);
    # a real annotation, not a string, so this file has no `from __future__ import annotations`.
    _kept_fraction: Optional[torch.Tensor]
    __jit_unused_properties__ = ["kept_fraction"]  # a host-side reading, not part of the graph

    def __init__(
            self,
            channels: int,
            threshold: float = 0.5,
            reduce: str = "mean",
            prune_mode: str = "threshold",
            keep_ratio: float = 0.5,
            reweight: bool = True,
            eps: float = 1e-6,
            prune_without_shortcut: bool = False,
            **kwargs,
    ):
        super().__init__()
        reject_unknown("DSA", kwargs, self.HYPERPARAMETERS)
        check_values("DSA", self.HYPERPARAMETERS, dict(
            threshold=threshold, reduce=reduce, prune_mode=prune_mode, keep_ratio=keep_ratio,
            reweight=reweight, eps=eps, prune_without_shortcut=prune_without_shortcut))
        self.channels = channels
        self.threshold = float(threshold)
        self.reduce = reduce
        self.prune_mode = prune_mode
        self.keep_ratio = float(keep_ratio)
        self.reweight = bool(reweight)
        self.eps = float(eps)
        self.prune_without_shortcut = bool(prune_without_shortcut)
        # Set by the model builder (nas_attn.arch) from the block DSA sits in; a DSA built on
        # its own assumes a shortcut, i.e. prunes as its rule says.
        self.block_has_shortcut = True
        self._kept_fraction: Optional[torch.Tensor] = None

    @property
    def kept_fraction(self) -> Optional[float]:
        # Stored as a tensor and converted on demand: no host sync inside forward.
        return None if self._kept_fraction is None else float(self._kept_fraction)

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-reduced saliency map, (B, 1, H, W), float32."""
        if self.reduce == "mean":
            return x.mean(dim=1, keepdim=True, dtype=torch.float32)
        peak = x.amax(dim=1, keepdim=True).float()
        if self.reduce == "max":
            return peak
        return 0.5 * (x.mean(dim=1, keepdim=True, dtype=torch.float32) + peak)

    def foreground(self, x: torch.Tensor):
        """Foreground coefficient a_fg (B, 1, H, W) float32 and the per-sample informative flag (B,)."""
        s = self.saliency(x)
        flat = s.flatten(1)
        s_min = flat.amin(dim=1).view(-1, 1, 1, 1)
        span = flat.amax(dim=1).view(-1, 1, 1, 1) - s_min
        informative = span > self.eps
        a_fg = (s - s_min) / (span + self.eps)
        a_fg = torch.where(informative, a_fg, torch.zeros_like(a_fg))
        return a_fg, informative.view(-1)

    def keep_mask(self, a_fg: torch.Tensor, informative: torch.Tensor) -> torch.Tensor:
        """Boolean keep mask (B, 1, H, W)."""
        if self.prune_mode == "threshold":
            mask = a_fg >= self.threshold
        else:
            flat = a_fg.flatten(1)
            n_pixels = flat.shape[1]
            n_keep = min(n_pixels, max(1, math.ceil(self.keep_ratio * n_pixels)))
            top = flat.topk(n_keep, dim=1, sorted=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True).view_as(a_fg)
        return mask | ~informative.view(-1, 1, 1, 1)

    @property
    def prunes(self) -> bool:
        """Whether this DSA zeroes pixels: not in a block without a shortcut, unless told to."""
        return self.block_has_shortcut or self.prune_without_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_fg, informative = self.foreground(x)
        if self.prunes:
            mask = self.keep_mask(a_fg, informative)
        else:
            mask = torch.ones_like(a_fg, dtype=torch.bool)
        # An exported graph has no module state to write to (torch.export warns, then drops it).
        if not exporting():
            self._kept_fraction = mask.detach().float().mean()
        scale = mask.to(a_fg.dtype)
        if self.reweight:
            scale = scale * (1.0 + a_fg)
        return x * scale.to(x.dtype)

    def extra_repr(self) -> str:
        rule = (f"threshold={self.threshold}" if self.prune_mode == "threshold"
                else f"keep_ratio={self.keep_ratio}")
        where = "" if self.prunes else ", no pruning (block has no shortcut)"
        return f"reduce={self.reduce}, {rule}, reweight={self.reweight}{where}"
