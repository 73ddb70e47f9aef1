"""AW-conv: attention on the convolution weights, a drop-in replacement of nn.Conv2d.

Paper: B. Zhu, P. Hofstee, J. Lee, Z. Al-Ars, "An Attention Module for Convolutional Neural
Networks", ICANN 2021, LNCS 12891, pp. 167-178, arXiv:2108.08205.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_values, choice_spec, int_spec, reject_unknown
from ._pool import adaptive_avg_pool2d


class _ModulateKernel(torch.autograd.Function):
    """``K + A (.) K`` for per-sample attention A (n, *K.shape), with a lean backward.

    Autograd's own addcmul backward reduces over the broadcast batch dimension twice
    (K appears twice) through zero-filled buffers; on a 512->512 3x3 conv that was more
    than half of the whole AW-conv step. Here: dA = g (.) K and dK = sum_b g_b (.) (1 + A_b),
    accumulated in place.
    """

    @staticmethod
    def forward(ctx, kernel: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(kernel, attn)
        return torch.addcmul(kernel, attn, kernel)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        kernel, attn = ctx.saved_tensors
        grad_kernel = grad_attn = None
        if ctx.needs_input_grad[0]:
            grad_kernel = torch.addcmul(grad[0], grad[0], attn[0])
            for b in range(1, grad.shape[0]):
                grad_kernel.add_(grad[b]).addcmul_(grad[b], attn[b])
        if ctx.needs_input_grad[1]:
            grad_attn = grad * kernel
        return grad_kernel, grad_attn


class ElementWeightAttention(nn.Module):
    """Point-wise MLP applied to every element of the pooled input, one output per output channel.

    ``h = ReLU(w1 * A0 + b1)`` per element of A0 (hidden width ``mid``), then
    ``A[o, c, i, j] = sum_m W2[o, m] h[m, c_o, i, j] + b2[o]`` where ``c_o`` runs over the
    input channels of output channel o's group. Parameters: 2*mid + (mid + 1)*C_out.
    The attention of weight (o, c, i, j) depends on input channel c's mean activity in the
    image region matching kernel tap (i, j), through a response curve learned per output
    channel.
    """

    def __init__(self, in_channels, out_channels, groups, mid, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.groups = groups
        self.fc1 = nn.Conv2d(1, mid, 1, bias=True, **dd)
        self.fc2 = nn.Linear(mid, out_channels, bias=True, **dd)

    def forward(self, a0: torch.Tensor) -> torch.Tensor:
        """a0: (B, C_in, kh, kw) -> A: (B, C_out, C_in/groups, kh, kw)."""
        b, c_in, kh, kw = a0.shape
        g = self.groups
        mid = self.fc1.out_channels
        c_out = self.fc2.out_features
        hidden = F.relu(F.conv2d(a0.reshape(b, 1, c_in, kh * kw), self.fc1.weight, self.fc1.bias))
        hidden = hidden.view(b, mid, g, (c_in // g) * kh * kw)
        w2 = self.fc2.weight.view(g, c_out // g, mid)
        attn = torch.einsum("gom,bmgq->bgoq", w2, hidden) + self.fc2.bias.view(1, g, c_out // g, 1)
        return attn.reshape(b, c_out, c_in // g, kh, kw)


class ChannelWeightAttention(nn.Module):
    """Point-wise (1x1) convs across channels at each of the k x k pooled positions.

    ``A = fc2(ReLU(fc1(A0)))`` with fc1: C_in -> mid, fc2: mid -> C_out * C_in/groups,
    reshaped to the weight's shape. Mixes all input channels; parameters
    (C_in + 1) * mid + (mid + 1) * C_out * C_in/groups, about (mid + 1)/(k*k) times the conv's own.
    """

    def __init__(self, in_channels, out_channels, groups, mid, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.weight_shape = (out_channels, in_channels // groups)
        self.fc1 = nn.Conv2d(in_channels, mid, 1, bias=True, **dd)
        self.fc2 = nn.Conv2d(mid, out_channels * (in_channels // groups), 1, bias=True, **dd)

    def forward(self, a0: torch.Tensor) -> torch.Tensor:
        b, _, kh, kw = a0.shape
        return self.fc2(F.relu(self.fc1(a0))).view(b, self.weight_shape[0], self.weight_shape[1], kh, kw)


class AWConv2d(nn.Module):
    """Convolution whose kernel is modulated per sample by an attention map of the kernel's shape.

    Stated by the paper's abstract (the method section is not available to us): the
    attention map has the shape of the convolution weights, not of the activations,
    ``O = (A (.) K) * I`` instead of ``O = K * (A (.) I)``; it is complementary to
    activation attention (SE, CBAM) and can be stacked with it.

    Reconstruction (ours): ``A0 = AdaptiveAvgPool2d(k)(I)`` per sample; a small point-wise
    MLP (hidden width ``mid``, ReLU) maps A0 to ``A`` of the weight's shape
    (C_out, C_in/groups, kh, kw) per sample; the sample's kernel is ``K + A (.) K``
    (residual form, A = 0 is the plain conv). The MLP's last layer starts at zero, so a
    freshly built AWConv2d computes exactly the conv it replaced. ``mixing`` picks the MLP:

    * ``"element"`` (default, :class:`ElementWeightAttention`): the MLP runs on each
      element of A0 and gives one value per output channel; a few thousand parameters.
    * ``"channel"`` (:class:`ChannelWeightAttention`): 1x1 convs across input channels
      at each pooled position; mixes channels but adds about (mid+1)/(k*k) of the conv's
      parameters (2.4 M for a 512->512 3x3 conv at mid = 8).

    Per-sample kernels run as a grouped conv with the batch folded into the groups. On CPU
    the batch is cut into chunks whose modulated kernels plus activations stay under
    ``cpu_chunk_bytes`` (4 MiB); other devices fold the whole batch. The modulation
    ``K + A (.) K`` has its own backward (:class:`_ModulateKernel`). Measured forward +
    backward, batch 8, fp32, 3x3, stride 1, element mixing, torch 2.14 CPU, 1 thread, ms
    (best of 3-4 rounds on a shared 2-core machine; repeated runs vary by up to 15 %;
    2 threads ranked the candidates the same way):

    =============  =========  ===========  ==========  ==========  ==============  ==========
    C, H x W       nn.Conv2d  whole batch  per sample  **chosen**  chosen, but     unfold +
                   (no attn)  folded       folded      (4 MiB)     autograd mod.   bmm
    =============  =========  ===========  ==========  ==========  ==============  ==========
    64, 56x56      33         38           40          40 (2/ch.)  39              114
    128, 28x28     29         39           40          40 (3/ch.)  40              86
    256, 14x14     29         66           58          58 (1/ch.)  65              93
    512, 7x7       34         389          188         188-211     294             190
    dw 64, 56x56   6.3        9.7          10.7        10.4 (all)  9.9             69
    dw 256, 14x14  0.8        3.7          7.2         3.9 (all)   3.7             21
    dw 960, 7x7    0.8        6.8          10.8        6.7 (all)   6.7             46
    =============  =========  ===========  ==========  ==========  ==============  ==========

    At 512 channels the whole batch's kernels are 75 MB (and their gradients as much
    again); buffers that large are fresh page-faulted allocations on every step, which
    the chunking avoids. The first version (autograd ``K * (1 + A)``, whole batch folded)
    took 448 ms there; channels-last layouts of the folded conv were 8-49 % slower than
    contiguous ones. No exact reformulation avoids per-sample kernels: pushing A into the
    input (``sum_m W2[:, m] * conv(h_m (.) unfold(I), K)``) costs ``mid`` full convolutions.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as nn.Conv2d (kernel_size etc. in pixels).
        mid: hidden width of the attention MLP, int >= 1.
        mixing: ``"element"`` or ``"channel"``, see above.
        device, dtype: factory keywords.

    Attributes:
        weight: the static kernel K, (C_out, C_in/groups, kh, kw).
        bias: (C_out,) or None.
        attention: the MLP producing A.
    """

    HYPERPARAMETERS = {
        "mid": int_spec(8, 1, None, doc="hidden width of the attention MLP"),
        "mixing": choice_spec("element", ("element", "channel"), doc="attention MLP form"),
    }
    cpu_chunk_bytes = 4 << 20
    __constants__ = ["cpu_chunk_bytes"]  # TorchScript sees instance attributes only, or constants

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Tuple[int, int]],
            stride: Union[int, Tuple[int, int]] = 1,
            padding: Union[int, Tuple[int, int], str] = 0,
            dilation: Union[int, Tuple[int, int]] = 1,
            groups: int = 1,
            bias: bool = True,
            padding_mode: str = "zeros",
            mid: int = 8,
            mixing: str = "element",
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__()
        if kwargs:
            reject_unknown("AWConv2d", kwargs, self.HYPERPARAMETERS)
        check_values("AWConv2d", self.HYPERPARAMETERS, dict(mid=mid, mixing=mixing))
        # nn.Conv2d validates the conv arguments (groups divisibility, padding strings,
        # padding_mode) with the messages users know; we borrow its checks and layout.
        try:
            reference = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                  groups, bias, padding_mode, device="meta")
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"AWConv2d: {err}") from err
        dd = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = reference.kernel_size
        self.stride = reference.stride
        self.padding = reference.padding
        self.dilation = reference.dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = reference._reversed_padding_repeated_twice
        self.mid = int(mid)
        self.mixing = mixing
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        attention_cls = ElementWeightAttention if mixing == "element" else ChannelWeightAttention
        self.attention = attention_cls(in_channels, out_channels, groups, self.mid, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Conv2d for K and bias.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self.attention.fc1.reset_parameters()
        nn.init.zeros_(self.attention.fc2.weight)
        nn.init.zeros_(self.attention.fc2.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "AWConv2d":
        """AWConv2d with ``conv``'s arguments, kernel and bias (copied), device and dtype.

        ``kwargs`` are AWConv2d's own (``mid``, ``mixing``). Only plain nn.Conv2d is
        accepted: subclasses (timm's Conv2dSame, CondConv2d, ...) change the forward.
        """
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"AWConv2d.from_conv: conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        with torch.no_grad():
            module.weight.copy_(conv.weight)
            if conv.bias is not None:
                module.bias.copy_(conv.bias)
        module.weight.requires_grad_(conv.weight.requires_grad)
        module.train(conv.training)
        return module

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention A for input x: (B, C_out, C_in/groups, kh, kw), dimensionless (W' = K (1 + A))."""
        return self.attention(adaptive_avg_pool2d(x, self.kernel_size))

    def _samples_per_chunk(self, x: torch.Tensor) -> int:
        if x.device.type != "cpu":
            return x.shape[0]
        # Output size only steers the chunking heuristic: ceil(H/stride) x ceil(W/stride) is close enough.
        out_pixels = math.ceil(x.shape[-2] / self.stride[0]) * math.ceil(x.shape[-1] / self.stride[1])
        per_sample = (self.weight.numel() + x[0].numel() + self.out_channels * out_pixels) * x.element_size()
        return max(1, self.cpu_chunk_bytes // per_sample)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int):
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, (0, 0), self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _modulate(self, attn: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript has no custom autograd Functions: autograd's backward
            return torch.addcmul(self.weight, attn, self.weight)
        return _ModulateKernel.apply(self.weight, attn)

    def _forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
        n, c_in, h, w = x.shape
        kernels = self._modulate(self.attention_weights(x))  # (n, C_out, C_in/g, kh, kw)
        bias = None if self.bias is None else self.bias.repeat(n)
        out = self._conv(x.reshape(1, n * c_in, h, w), kernels.flatten(0, 1), bias, self.groups * n)
        return out.view(n, self.out_channels, out.shape[-2], out.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self._forward_batch(x.unsqueeze(0)).squeeze(0)
        return self._forward_batch(x)

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:  # no samples, no attention: the static conv gives the right empty shape
            return self._conv(x, self.weight, self.bias, self.groups)
        chunks = x.split(self._samples_per_chunk(x))
        if len(chunks) == 1:
            return self._forward_chunk(x)
        return torch.cat([self._forward_chunk(chunk) for chunk in chunks])

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text + f", mid={self.mid}, mixing={self.mixing}"
