"""SCA: Spatial Channel Attention, cross-dimensional gating without channel reduction.

Paper: T. Liu et al., "Spatial Channel Attention for Deep Convolutional Neural Networks",
Mathematics 10(10):1750, 2022, doi:10.3390/math10101750.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
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
        maps = torch.stack((avg, peak), dim=1)
        if torch.jit.is_scripting():
            return torch.sigmoid(self.bn(self.conv(maps)))
        return torch.sigmoid(self.bn(self._conv_fast(maps)))

    @torch.jit.unused
    def _conv_fast(self, maps: torch.Tensor) -> torch.Tensor:
        """The same conv, laid out for oneDNN: the longer side last, lean input gradient.

        oneDNN runs a tall, narrow plane (the (C, W) plane at 2048 x 7) about 3x slower than
        its transpose (measured 27.5 ms against 8.9 ms at batch 8, one thread); the conv of
        the transposed plane with the transposed kernel is the transposed result.
        """
        weight = self.conv.weight
        flip = maps.shape[-2] > maps.shape[-1]
        if flip:
            maps, weight = maps.transpose(-1, -2), weight.transpose(-1, -2)
        if maps.requires_grad or weight.requires_grad:
            out = _PlaneConv.apply(maps, weight, self.conv.padding[0])
        else:
            out = F.conv2d(maps, weight, padding=self.conv.padding[0])
        return out.transpose(-1, -2) if flip else out


class _PlaneConv(torch.autograd.Function):
    """k x k conv 2 -> 1 (stride 1, "same" padding, no bias) with its input gradient as a forward conv.

    The input gradient of a 2 -> 1 conv is a 1 -> 2 transposed conv; oneDNN runs that
    about 13x slower than the equivalent forward conv with the kernel flipped and its in/out
    channels swapped (measured on this machine at (8, 2, 256, 56): 162 ms against 12 ms,
    one thread). Same values to float rounding.
    """

    @staticmethod
    def forward(ctx, maps: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(maps, weight)
        ctx.padding = padding
        return F.conv2d(maps, weight, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        maps, weight = ctx.saved_tensors
        p = ctx.padding
        grad_maps = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_maps = F.conv2d(grad, weight.flip(2, 3).transpose(0, 1), padding=p)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, maps, weight, None, (1, 1), (p, p), (1, 1), False, (0, 0), 1,
                (False, True, False))[1]
        return grad_maps, grad_weight, None


class _Pool3(torch.autograd.Function):
    """Average and max of x over H, over W and over C, in one node with a lean backward.

    Forward: six reductions of x (the unavoidable reads). Backward: one full-size gradient
    buffer in x's memory format; the three mean gradients are broadcast-added into it and the
    three max gradients are scatter-added at the argmax positions (B*C*W, B*C*H and B*H*W
    elements, not full-size). Autograd's own amax backward builds, per reduction, a full-size
    tie mask, counts the ties and divides, and its mean backward materialises a full-size
    expand; six such full-size gradients were then summed.

    Ties: the max gradient goes to one arg-max position (as max_pool2d does) instead of being
    split evenly among tied positions (as amax does). Both are valid subgradients; they differ
    only where several positions hold exactly the maximum, which after ReLU/ReLU6 are clipped
    values (0 or 6) whose upstream activation gradient is zero anyway.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        mean_h, mean_w, mean_c = x.mean(dim=2), x.mean(dim=3), x.mean(dim=1)
        max_h, idx_h = x.max(dim=2)
        max_w, idx_w = x.max(dim=3)
        max_c, idx_c = x.max(dim=1)
        ctx.save_for_backward(idx_h, idx_w, idx_c)
        ctx.x_meta = (x.shape, x.dtype, x.device,
                      torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                      and not x.is_contiguous() else torch.contiguous_format)
        ctx.mark_non_differentiable(idx_h, idx_w, idx_c)
        return mean_h, max_h, mean_w, max_w, mean_c, max_c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean_h, g_max_h, g_mean_w, g_max_w, g_mean_c, g_max_c):
        idx_h, idx_w, idx_c = ctx.saved_tensors
        shape, dtype, device, memory_format = ctx.x_meta
        b, c, h, w = shape
        # Mean gradients: g / n broadcast over the pooled dimension. The first full-size buffer
        # is the broadcast sum itself (no zero fill); None marks an unused output.
        part = torch.zeros((b, c, 1, w), dtype=dtype, device=device) if g_mean_h is None \
            else (g_mean_h / h).unsqueeze(2)
        if g_mean_w is not None:
            part = part + (g_mean_w / w).unsqueeze(3)  # (B, C, H or 1, W)
        grad = torch.empty(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
        if g_mean_c is not None:
            torch.add(part, (g_mean_c / c).unsqueeze(1), out=grad)
        else:
            grad.copy_(part.expand(shape))
        if g_max_h is not None:
            grad.scatter_add_(2, idx_h.unsqueeze(2), g_max_h.unsqueeze(2))
        if g_max_w is not None:
            grad.scatter_add_(3, idx_w.unsqueeze(3), g_max_w.unsqueeze(3))
        if g_max_c is not None:
            grad.scatter_add_(1, idx_c.unsqueeze(1), g_max_c.unsqueeze(1))
        return grad


class _GateProduct(torch.autograd.Function):
    """``y = x * (g_cw + g_ch + g_hw) / 3`` with one full-size gate sum kept for the backward.

    Forward: the broadcast gate sum G (one full-size buffer, in x's memory format) and the
    product. Backward: ``dx = dy * G``; the gate gradients are reductions of ``dy * x``
    (one full-size product, three reductions). Autograd's graph for the same expression kept
    two full-size intermediate sums and ran a full-size backward for each of them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_cw: torch.Tensor, g_ch: torch.Tensor, g_hw: torch.Tensor):
        # The 1/3 goes on the small gates, not on a full-size tensor.
        total = torch.empty_like(x)
        torch.add(g_ch * (1.0 / 3.0), g_hw * (1.0 / 3.0), out=total)
        total.add_(g_cw * (1.0 / 3.0))
        ctx.save_for_backward(x, total)
        return x * total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, total = ctx.saved_tensors
        grad_x = grad * total if ctx.needs_input_grad[0] else None
        grad_cw = grad_ch = grad_hw = None
        if any(ctx.needs_input_grad[1:]):
            gx = grad * x
            grad_cw = gx.sum(dim=2, keepdim=True).mul_(1.0 / 3.0)
            grad_ch = gx.sum(dim=3, keepdim=True).mul_(1.0 / 3.0)
            grad_hw = gx.sum(dim=1, keepdim=True).mul_(1.0 / 3.0)
        return grad_x, grad_cw, grad_ch, grad_hw


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

    Implementation (same function as the plain autograd expression, cheaper): the six
    poolings run in one autograd node (:class:`_Pool3`) and the gating in another
    (:class:`_GateProduct`), each with a hand-written backward that touches full-size
    memory as few times as possible; full-size buffers follow x's memory format
    (channels-last stays channels-last). Outputs equal the plain expression's to float
    rounding (tested against it); input gradients too, except that a max shared by several
    tied positions sends its gradient to one of them instead of splitting it (see
    :class:`_Pool3`). Measured forward + backward on this machine: see the README's module
    section. Under ``torch.jit.script`` the plain expression runs (autograd Functions cannot
    be scripted).

    Args:
        channels: number of input channels C (the parameter count does not depend on it).
        kernel_size: side of each branch's square conv, odd int >= 1, in pixels (channels
            for the two branches whose plane contains C).
        device, dtype: where and in what dtype the parameters and buffers are made (timm's
            factory keywords, passed to every submodule).
        **kwargs: timm pass-through keywords (act_layer, rd_ratio, ...) are accepted and
            ignored; anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "kernel_size": int_spec(7, 1, None, odd=True, doc="branch conv size (pixels/channels)"),
    }

    def __init__(self, channels: int, kernel_size: int = 7, device=None, dtype=None, **kwargs):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        reject_unknown("SCA", kwargs, self.HYPERPARAMETERS)
        check_values("SCA", self.HYPERPARAMETERS, dict(kernel_size=kernel_size))
        self.channels = channels
        self.kernel_size = int(kernel_size)
        self.gate_cw = PlaneGate(self.kernel_size, **dd)
        self.gate_ch = PlaneGate(self.kernel_size, **dd)
        self.gate_hw = PlaneGate(self.kernel_size, **dd)

    def _gates(self, pooled: List[torch.Tensor], b: int, c: int, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # (B, 1, C, W) and (B, 1, C, H) share memory layout with (B, C, 1, W) / (B, C, H, 1).
        g_cw = self.gate_cw(pooled[0], pooled[1]).view(b, c, 1, w)
        g_ch = self.gate_ch(pooled[2], pooled[3]).view(b, c, h, 1)
        g_hw = self.gate_hw(pooled[4], pooled[5])
        return g_cw, g_ch, g_hw

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain autograd expression of the same function (used under TorchScript)."""
        b, c, h, w = x.shape
        pooled = [x.mean(dim=2), x.amax(dim=2), x.mean(dim=3), x.amax(dim=3), x.mean(dim=1), x.amax(dim=1)]
        g_cw, g_ch, g_hw = self._gates(pooled, b, c, h, w)
        return x * ((g_cw + g_ch + g_hw) * (1.0 / 3.0))

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g_cw, g_ch, g_hw = self._gates(list(_Pool3.apply(x)), b, c, h, w)
        return _GateProduct.apply(x, g_cw, g_ch, g_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.forward_reference(x)
        return self._forward_fused(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
