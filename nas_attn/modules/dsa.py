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
    4. ``y = x * M * w / mean_M(w)``, ``w = 1 + a_fg``, with ``reweight=True`` (rule 6), else
       ``y = x * M``.
    5. A sample whose saliency map is flat (``max - min <= eps``) carries no foreground /
       background information and passes unchanged (all pixels kept, ``a_fg = 0``). This
       keeps residual branches of timm's ResNets alive: their last BN starts at zero, so
       the attention input is all zeros on the first step.

    6. Reweighting keeps the signal level (changed in issue 11): ``y = x * M * w / mean_M(w)``
       with ``w = 1 + a_fg`` and ``mean_M`` its per-sample mean over the kept pixels
       (``reweight=True``; ``y = x * M`` otherwise). Kept pixels are reweighted *relative to
       each other* and their average gain is exactly 1. Why: the plain ``x * M * (1 + a_fg)``
       multiplies each sample by its own average gain (between 1 and 2, depending on how
       peaked its saliency map is), a per-sample change of scale that the batch statistics of
       the BatchNorm after the slot cannot undo. In mobilenetv2_100 on the embedded digits
       (``digits_mobilenetv2`` recipe, DSA in blocks.1-2, pruning off, i.e. threshold 0) it cost
       13 points: 0.708 / 0.713 / 0.688 accuracy over seeds 0-2 against 0.822 / 0.811 / 0.850
       without attention; with the normalised gain 0.864 (seed 0). Stopping the gradient
       through ``a_fg`` instead did not help (0.607, seed 0). The mean is clamped at 1 (it is
       >= 1 whenever a pixel is kept), so an empty mask gives zeros, never NaN.

    7. Where DSA prunes (changed in issue 11): only in a block whose attention slot feeds the
       block's output directly and that has a shortcut, i.e. timm's ResNet blocks (slot after
       the last BN, before the residual add: a pruned pixel leaves the shortcut's value). The
       model builder (``nas_attn.arch.build_model``) sets ``block_allows_pruning`` from the
       block; where it is False DSA keeps every pixel and only reweights (``kept_fraction`` is
       1). In a MobileNetV2/EfficientNet inverted residual the slot sits after the depthwise
       conv and before the 1x1 projection and its BatchNorm: (a) the first block of a stage has
       no shortcut, so a pixel zeroed there is lost to every later layer, and (b) with a
       shortcut, the BatchNorm after the projection normalises a batch in which most pixels
       are pruned zeros, and the pruned pixels leave the block as that BatchNorm's shift, not
       as the shortcut's value. Measured (``digits_mobilenetv2`` recipe, threshold 0.5, seed
       0): pruning in every block 0.396, pruning in the shortcut blocks only 0.476, the same
       with the normalised gain of rule 6 0.359 (train loss 2.06: it does not learn), against
       0.822 without attention. Masking the branch *after* its BatchNorm (the DSA gate,
       ``nas_attn.modules.DSAGate``, threshold 0.5, in the same three blocks) trained: 0.719.
       So in an inverted residual, pruning is the DSA gate's job; ``prune_everywhere=True``
       prunes in the slot anyway.

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
        prune_everywhere: also prune where the model builder found the block unfit for it
            (rule 7).
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
        "prune_everywhere": bool_spec(
            False, doc="also prune in blocks unfit for it (inverted residuals; see rule 7)"),
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
            prune_everywhere: bool = False,
            **kwargs,
    ):
        super().__init__()
        reject_unknown("DSA", kwargs, self.HYPERPARAMETERS)
        check_values("DSA", self.HYPERPARAMETERS, dict(
            threshold=threshold, reduce=reduce, prune_mode=prune_mode, keep_ratio=keep_ratio,
            reweight=reweight, eps=eps, prune_everywhere=prune_everywhere))
        self.channels = channels
        self.threshold = float(threshold)
        self.reduce = reduce
        self.prune_mode = prune_mode
        self.keep_ratio = float(keep_ratio)
        self.reweight = bool(reweight)
        self.eps = float(eps)
        self.prune_everywhere = bool(prune_everywhere)
        # Set by the model builder (nas_attn.arch) from the block DSA sits in (rule 7); a DSA
        # built on its own prunes as its rule says.
        self.block_allows_pruning = True
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
        """Whether this DSA zeroes pixels: only where its block allows it (rule 7), unless told to."""
        return self.block_allows_pruning or self.prune_everywhere

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
            # Average gain over the kept pixels is 1 (rule 6); >= 1 whenever one is kept, so the
            # clamp only guards an empty mask (whose scale is all zeros anyway).
            gain = scale.sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1)
            scale = scale / gain.clamp_min(1.0)
        return x * scale.to(x.dtype)

    def extra_repr(self) -> str:
        rule = (f"threshold={self.threshold}" if self.prune_mode == "threshold"
                else f"keep_ratio={self.keep_ratio}")
        where = "" if self.prunes else ", no pruning (block unfit for it)"
        return f"reduce={self.reduce}, {rule}, reweight={self.reweight}{where}"
