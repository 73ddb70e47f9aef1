#!/usr/bin/env python
"""SCA forward + backward, side by side: the previous implementation, the current one, CBAM.

Per resnet50 attention-slot shape (the output of each stage's blocks at 224 x 224: 256x56x56,
512x28x28, 1024x14x14, 2048x7x7), batch ``--batch-size``, train mode, input requiring grad, one
``module(x).backward(dy)``. Three modules per shape: ``old``, a frozen copy of SCA as it was
before the single-node version (two fused autograd nodes, plane convs through oneDNN; kept
here only, for this comparison), ``new``, ``nas_attn.modules.SCA``, with the same weights, and
``cbam``, ``timm.layers.create_attn("cbam", C)``. Before timing, old and new outputs and
gradients (input and every parameter) are compared.

All modules are built first; each round times every (shape, module) pair once, in a shuffled
order, so load from other jobs falls on all alike. Times are this process's CPU time
(``time.process_time``) with ``--threads`` torch threads (default 1): on a loaded machine it
counts the work, where wall time would also count the wait. The tables give medians and
minima over the rounds, and the ratios new/old, new/cbam and old/cbam of both; the "resnet50
blocks" row sums each stage's time times its number of blocks (3, 4, 6, 3), the module's
share of an all-blocks resnet50 step.

Usage::

    python scripts/bench_sca.py                      # 9 rounds after 2 warm-up rounds
    python scripts/bench_sca.py --channels-last --repeats 5
    python scripts/bench_sca.py --quick              # smoke run: tiny shapes, one round
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from nas_attn.modules import SCA
from nas_attn.modules._common import BatchNorm2dAnySize

# (C, H = W) of resnet50's attention slot per stage at 224 x 224, and the stage's block count
STAGES = ((256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 3))
QUICK_STAGES = ((16, 9, 1), (32, 5, 1))
VARIANTS = ("old", "new", "cbam")


# ---------------------------------------------------------------- the previous implementation
# A copy of nas_attn/modules/sca.py before the single-node version, renamed (Old*), for the
# side-by-side comparison only.

class OldPlaneGate(nn.Module):
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
            out = _OldPlaneConv.apply(maps, weight, self.conv.padding[0])
        else:
            out = F.conv2d(maps, weight, padding=self.conv.padding[0])
        return out.transpose(-1, -2) if flip else out


class _OldPlaneConv(torch.autograd.Function):
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


class _OldPool3(torch.autograd.Function):
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


class _OldGateProduct(torch.autograd.Function):
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


class OldSCA(nn.Module):
    """SCA before the single-node version: same function, same parameter names."""

    def __init__(self, channels: int, kernel_size: int = 7, device=None, dtype=None, **kwargs):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.channels = channels
        self.kernel_size = int(kernel_size)
        self.gate_cw = OldPlaneGate(self.kernel_size, **dd)
        self.gate_ch = OldPlaneGate(self.kernel_size, **dd)
        self.gate_hw = OldPlaneGate(self.kernel_size, **dd)

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
        g_cw, g_ch, g_hw = self._gates(list(_OldPool3.apply(x)), b, c, h, w)
        return _OldGateProduct.apply(x, g_cw, g_ch, g_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.forward_reference(x)
        return self._forward_fused(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# ---------------------------------------------------------------- measurement

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial BN affine, so every gate path carries a gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)


def compare(old: nn.Module, new: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> float:
    """Largest relative difference of output, input gradient and parameter gradients."""
    results = []
    for module in (old, new):
        module.zero_grad(set_to_none=True)
        xi = x.detach().clone().requires_grad_(True)
        y = module(xi)
        y.backward(dy)
        results.append([y.detach(), xi.grad] + [p.grad for p in module.parameters()])
    return max(_rel(n, o) for o, n in zip(*results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--channels-last", action="store_true", help="inputs in channels-last memory format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stages = QUICK_STAGES if args.quick else STAGES
    load_before = os.getloadavg()
    cases: Dict[Tuple[int, str], Tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    print(f"batch {args.batch_size}, {args.threads} thread(s), "
          f"{'channels-last' if args.channels_last else 'contiguous'}, train mode; "
          f"load average before: {', '.join(f'{v:.2f}' for v in load_before)}")
    for c, hw, _ in stages:
        new = SCA(c).train()
        _randomise(new, args.seed + c)
        old = OldSCA(c).train()
        old.load_state_dict(new.state_dict())
        cbam = timm.layers.create_attn("cbam", c).train()
        x = torch.randn(args.batch_size, c, hw, hw)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(x.shape)
        print(f"{c}x{hw}x{hw}: new vs old, largest relative difference of output and gradients: "
              f"{compare(old, new, x, dy):.1e}")
        for name, module in (("old", old), ("new", new), ("cbam", cbam)):
            cases[(c, name)] = (module, x.detach().clone().requires_grad_(True), dy)
    times: Dict[Tuple[int, str], List[float]] = {key: [] for key in cases}
    order = list(cases)
    rng = random.Random(args.seed)
    for round_index in range(args.warmup + args.repeats):
        rng.shuffle(order)
        for key in order:
            module, x, dy = cases[key]
            x.grad = None
            module.zero_grad(set_to_none=True)
            start = time.process_time()
            module(x).backward(dy)
            elapsed = time.process_time() - start
            if round_index >= args.warmup:
                times[key].append(elapsed * 1e3)
    load_after = os.getloadavg()

    def stat(key, fn):
        return fn(times[key])

    for label, fn in (("median", statistics.median), ("min", min)):
        print(f"\nCPU time per forward + backward, {label} of {args.repeats} rounds (ms):\n")
        print("| slot shape | old | new | cbam | new/old | new/cbam | old/cbam |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        total = {v: 0.0 for v in VARIANTS}
        for c, hw, blocks in stages:
            t = {v: stat((c, v), fn) for v in VARIANTS}
            for v in VARIANTS:
                total[v] += blocks * t[v]
            print(f"| {c}x{hw}x{hw} | {t['old']:.1f} | {t['new']:.1f} | {t['cbam']:.1f} | "
                  f"{t['new'] / t['old']:.2f} | {t['new'] / t['cbam']:.2f} | {t['old'] / t['cbam']:.2f} |")
        blocks_label = "resnet50 blocks (" + ", ".join(str(b) for _, _, b in stages) + ")"
        print(f"| {blocks_label} | {total['old']:.1f} | {total['new']:.1f} | {total['cbam']:.1f} | "
              f"{total['new'] / total['old']:.2f} | {total['new'] / total['cbam']:.2f} | "
              f"{total['old'] / total['cbam']:.2f} |")
    print(f"\nload average after: {', '.join(f'{v:.2f}' for v in load_after)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
