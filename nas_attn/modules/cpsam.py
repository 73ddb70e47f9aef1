"""CPSAM: Channel and Position Squeeze Attention Module.

Paper: Y. Gong, Z. Gu, Z. Zhang, L. Ma, "CPSAM: Channel and Position Squeeze Attention
Module", ICONIP 2021, LNCS 13108, pp. 190-202, doi:10.1007/978-3-030-92185-9_16.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._common import check_values, choice_spec, float_spec, int_spec, plain_path, reject_unknown
from ._pool import adaptive_avg_pool2d, adaptive_max_pool2d

PSA_FORMS = ("gate", "mix")


def attend_vector(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(Q K^T) v`` per image: Q (B, C, E), K (B, G, E), v (B, G) -> (B, C), plain autograd."""
    affinity = torch.softmax(torch.bmm(queries, keys.transpose(1, 2)), dim=-1)
    return torch.bmm(affinity, values.unsqueeze(2)).squeeze(2)


class _AttendVector(torch.autograd.Function):
    """:func:`attend_vector` with a backward that never forms a (C, G) gradient.

    With S = softmax(Q K^T), o = S v and g the gradient of o, the logits' gradient is
    ``dL_ij = S_ij g_i (v_j - o_i)``. Autograd forms S's gradient ``g v^T`` (an outer product
    run as a batched matrix product of inner size 1) and then dL, two more (C, G) tensors,
    and reads each again. Here dL stays implicit: ``dQ = g * (S (v * K) - o * (S K))``,
    ``dK = v * (S^T (g * Q)) - S^T (g * o * Q)`` and ``dv = S^T g``, two matrix products of S
    with thin (G, 2E) and (C, 2E + 1) matrices. Same values as autograd to float rounding
    (tested). Runs only where autograd.Functions may (not in TorchScript or export).
    """

    @staticmethod
    def forward(ctx, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        affinity = torch.softmax(torch.bmm(queries, keys.transpose(1, 2)), dim=-1)
        out = torch.bmm(affinity, values.unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(queries, keys, values, affinity, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        queries, keys, values, affinity, out = ctx.saved_tensors
        e = queries.shape[2]
        grad = grad_out.unsqueeze(2)
        by_row = torch.bmm(affinity, torch.cat([keys * values.unsqueeze(2), keys], dim=2))  # (B, C, 2E)
        weighted = queries * grad
        by_column = torch.bmm(affinity.transpose(1, 2),
                              torch.cat([weighted, weighted * out.unsqueeze(2), grad], dim=2))  # (B, G, 2E + 1)
        grad_queries = grad * (by_row[..., :e] - out.unsqueeze(2) * by_row[..., e:])
        grad_keys = values.unsqueeze(2) * by_column[..., :e] - by_column[..., e:2 * e]
        return grad_queries, grad_keys, by_column[..., 2 * e]


def _centred_unit(maps: torch.Tensor) -> torch.Tensor:
    """(B, N, E) rows centred and scaled to unit length: their dot products are correlation coefficients."""
    return F.normalize(maps - maps.mean(dim=2, keepdim=True), dim=2, eps=1e-6)


class ChannelSqueezeAttention(nn.Module):
    """CSA branch: one query-independent position map joins all positions (global-context style).

    ``a = softmax_HW(conv1x1_{C->1}(x))``; ``c = sum_j a_j x_j`` (length C);
    ``out = x + W2 ReLU(LN(W1 c))`` with W1: C -> rd, W2: rd -> C. W2 (weight and bias)
    starts at zero, so the fresh branch is the identity (as timm's GlobalContext starts).
    """

    def __init__(self, channels: int, rd_channels: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=True, **dd)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, **dd)
        self.norm = nn.LayerNorm(rd_channels, **dd)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, **dd)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``W2 ReLU(LN(W1 c))``, (B, C, 1, 1): what the branch adds to every position."""
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        # The three 1x1 convs run as matrix products (same weights, same MACs): torch's CPU
        # conv path for a 1x1 conv to one channel, or on a 1x1 map, is its slow generic one.
        logits = torch.matmul(self.conv_attn.weight.view(1, c), flat)
        bias = self.conv_attn.bias
        if bias is not None:  # no effect on the softmax (a shift); kept so every parameter has its gradient
            logits = logits + bias.view(1, 1, 1)
        # float32 softmax: half-precision logits over many positions lose the small weights.
        attn = F.softmax(logits.float(), dim=-1).to(x.dtype)
        context = torch.bmm(flat, attn.transpose(1, 2)).view(b, c)
        hidden = self.norm(F.linear(context, self.fc1.weight.flatten(1), self.fc1.bias))
        return F.linear(F.relu(hidden), self.fc2.weight.flatten(1), self.fc2.bias).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


class PositionSqueezeAttention(nn.Module):
    """PSA branch: squeeze positions with avg+max pooling, attend between all channel maps.

    ``P = AvgPool_s(x) + MaxPool_s(x)`` flattened to (C, s*s), the squeezed channel maps. Each
    channel map attends to G keys, the channel maps averaged over G contiguous channel groups
    (adaptive bins along C, G = min(C, ``key_groups``)): ``S = softmax(P K^T)`` (C x G). With
    C <= ``key_groups`` each group is one channel, K = P and S = softmax(P P^T) is the full
    C x C correlation between all channel maps (see CPSAM, "Changed (issue 11, cost at large
    C)"). Two ways to apply S (``form``):

    * ``"gate"`` (default): S acts on the group means ``v`` of the squeezed descriptor
      ``p`` (P averaged over its s*s cells, length C): ``g = sigmoid(S v)``,
      ``out = x * (1 + tanh(gamma) * g)``. C*G*(s*s + 1) MACs per image.
    * ``"mix"``: an affinity from the correlation coefficients of the pooled maps,
      ``S_mix = softmax(corr(P_i, K_g))`` (logits in [-1, 1]), mixes the group-mean maps,
      ``out = x + tanh(gamma) * (S_mix x_G)``: C*G*H*W more MACs, like a 1x1 conv. S_mix is
      computed from the input but not differentiated: the gradient reaches x only through
      the product with S_mix held constant (see CPSAM, "Changed (issue 11, gradient)" and
      "Changed (issue 11, mix)").

    gamma is a learned per-channel parameter (C values), 0 at init, so the fresh branch is the
    identity; it acts through tanh, so the gate form scales each channel by a factor in
    (0, 2) and the mix form adds at most one convex mixture of channel maps (see CPSAM,
    "Changed (issue 11, learning)"). P, K and the softmaxes run in float32 (in half precision
    P P^T overflows for activations above ~16 on 256 channels).
    """

    def __init__(self, channels: int, pool_size: int, form: str = "gate", key_groups: int = 256,
                 device=None, dtype=None):
        super().__init__()
        self.pool_size = pool_size
        self.form = form
        self.key_groups = min(channels, key_groups)
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device, dtype=dtype))

    def squeeze(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(P, K): P (B, C, s*s) float32 pooled channel maps, K (B, G, s*s) their group means."""
        b, c = x.shape[:2]
        s = self.pool_size
        pooled = (adaptive_avg_pool2d(x, (s, s)) + adaptive_max_pool2d(x, (s, s))).view(b, c, s * s).float()
        if self.key_groups == c:
            return pooled, pooled
        return pooled, adaptive_avg_pool2d(pooled.unsqueeze(1), (self.key_groups, s * s)).squeeze(1)

    def affinity(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(S, P): S (B, C, G) float32 softmax affinity of this form, P (B, C, s*s) float32 pooled maps.

        Gate form: logits P K^T. Mix form: logits corr(P_i, K_g), the correlation coefficient
        of the two pooled maps over their s*s cells (in [-1, 1]; see CPSAM, "Changed (issue 11,
        mix)").
        """
        pooled, keys = self.squeeze(x)
        if self.form == "gate":
            return F.softmax(torch.bmm(pooled, keys.transpose(1, 2)), dim=-1), pooled
        return F.softmax(torch.bmm(_centred_unit(pooled), _centred_unit(keys).transpose(1, 2)), dim=-1), pooled

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``tanh(gamma) * sigmoid(S v)``, (B, C, 1, 1) in x's dtype: the gate form's gain is 1 plus this."""
        b, c = x.shape[:2]
        pooled, keys = self.squeeze(x)
        values = keys.mean(dim=2)
        if torch.jit.is_scripting():
            attended = attend_vector(pooled, keys, values)
        else:
            attended = self._attend_eager(pooled, keys, values)
        return torch.tanh(self.gamma) * torch.sigmoid(attended).to(x.dtype).view(b, c, 1, 1)

    @torch.jit.unused
    def _attend_eager(self, pooled: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if not plain_path() and torch.is_grad_enabled() and (pooled.requires_grad or keys.requires_grad):
            return _AttendVector.apply(pooled, keys, values)
        return attend_vector(pooled, keys, values)

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        """``S x_G``, (B, C, H, W): the mix form's term before its tanh(gamma) scale."""
        b, c, h, w = x.shape
        # No gradient through S. S has no parameter of its own, and its backward (a softmax of
        # logits quadratic in x, a max pool, a sum over H*W of grad * x) is what stopped
        # MobileNetV2 from learning (CPSAM, "Changed (issue 11, gradient)").
        affinity, _ = self.affinity(x.detach())
        maps = x.reshape(b, c, h * w)
        if self.key_groups != c:
            maps = adaptive_avg_pool2d(maps.unsqueeze(1), (self.key_groups, h * w)).squeeze(1)
        return torch.bmm(affinity.to(x.dtype), maps).view(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "gate":
            return x * (1.0 + self.gate(x))
        return x + torch.tanh(self.gamma) * self.mixed(x)


class CPSAM(nn.Module):
    """Channel and Position Squeeze Attention Module: CSA and PSA in parallel, fused by a conv.

    Stated by the paper's abstract (the method section is not available to us): two
    branches in parallel on the same input; a Channel Squeeze Attention joining positions
    through one query-independent map; a Position Squeeze Attention compressing the spatial
    dimensions with both average and max pooling and modelling the correlation between all
    channel maps; the two outputs combined by a conv layer; fewer parameters than a
    Non-Local block on the same channels; motivated by Non-Local wasting computation on
    pixel-level pairwise relations.

    Reconstruction (ours): the two branch formulas in :class:`ChannelSqueezeAttention` and
    :class:`PositionSqueezeAttention`; the fuse ``y = conv1x1_{2C->C, groups=C}(interleave(
    out_csa, out_psa))`` mixes each channel's two branch outputs with 2 weights per channel,
    the pair softmax-normalised (``fuse.weight`` holds their logits, 0 at init: (1/2, 1/2)).
    Both branches start as the identity (CSA's last layer and PSA's gamma are zero), so a
    fresh CPSAM is the identity.

    Changed (issue 11), and why:

    * ``psa="gate"`` is the new default: applying S to the squeezed descriptor costs about
      C*C*(s*s + 1) MACs (C*G*(s*s + 1) since the key groups below) instead of C*C*H*W,
      so CPSAM is cheaper than timm's Non-Local at every resnet50 stage shape (the old
      full-map form, ``psa="mix"``, was dearer from 512x28x28 on: 211 M vs 181 M MACs there,
      274 M vs 104 M at 2048x7x7). How both forms
      trained on the embedded digits is in the README's CPSAM section.
    * The fuse lost its BatchNorm (zero-initialised weight): in a MobileNetV2 inverted
      residual the slot sees sparse ReLU6 activations, and a BN normalising a mostly-zero
      channel to unit variance turns its few non-zero pixels into spikes of about sqrt(B*H*W).
      With it every MobileNetV2 trial diverged (train loss 9.6 after one epoch on digits,
      slot output RMS 97 against an input RMS of 3). Identity at init now comes from the
      branches themselves.
    * gamma is per channel (C values) instead of one scalar: a scalar's gradient sums over
      every element of the map, and SGD at lr 0.05 threw it to -5 ... -20 in the first epoch.

    Changed (issue 11, learning), and why: in MobileNetV2 (digits_mobilenetv2's recipe, SGD
    lr 0.05, whose first epoch starts at a train loss near 8.7 with very large gradients)
    CPSAM in blocks.1-2 reached 0.708 validation accuracy against plain 0.799 (seed 0). It
    is the identity at init, so the damage came from training: after the first epoch the
    slot's output RMS was 13.5 against an input RMS of 1.7 in blocks.1.0 (17.1 vs 1.5 at the
    end), because both free multiplicative parameters had been thrown far from their start,
    the fuse weights (init 1/2) to -3.3 ... 5.0 and gamma to -1.6 ... 2.9. The slot feeds the
    1x1 projection directly, so such a per-channel gain multiplies the effective learning
    rate of that channel's projection weights by its square and the channels it blows up
    dominate the projection. In a ResNet block the slot output is added to the shortcut
    after the last BN, whose small weights hid it. Now both are bounded: the fuse pair is
    softmax-normalised (a convex per-channel mix of the two branches, as before at init) and
    gamma acts through tanh, so CPSAM's per-channel gain stays in (0, 2) in the gate form,
    like a sigmoid gate's range doubled. Accuracy 0.708 -> 0.827 (seed 0) and 0.362 -> 0.680
    (seed 1, plain 0.811): the second is still 13 points under plain although the slot's
    gain stayed within 1.1-1.3x, so this bound is necessary, not sufficient; README, "Does
    each module learn in each family?".

    Changed (issue 11, gradient), and why. The mix form still failed to learn in MobileNetV2:
    the module-learning test (tests/test_module_learning.py) ended at 2.15x the plain loss,
    and with the product's recipe (scripts/module_accuracy.py, digits_mobilenetv2) it
    reached 0.496 / 0.287 at seeds 0 / 1 against plain 0.788 / 0.760 (today's environment). Cause, measured: the
    backward through S. Its logits P P^T are quadratic in x, P comes through a max pool, and
    its gradient sums grad * x over the whole map; S has no parameter of its own, so that
    gradient only reshapes the features to move S. PSA alone (mix, no CSA) in the test's tiny
    MobileNetV2 ended at 10-15x the plain loss over 4 seeds, the same with S held constant at
    1.0-1.5x. So the mix form computes S from ``x.detach()`` (the forward is unchanged bit for
    bit). Full recipe, seeds 0-3: 0.496 / 0.287 / 0.515 / 0.331 -> 0.540 / 0.660 / 0.677 /
    0.747, still 10-25 points under plain (open; README, "Re-measured"); resnet18 0.972 /
    0.983 against plain 0.975 / 0.978 (seeds 0 / 1). This also drops
    the backward of the (B, C, C) softmax and of P P^T: at 2048x7x7 (batch 8, one thread,
    forward+backward CPU time, one process) the mix form went from 5.1x timm's Non-Local to
    2.9x. Not changed in the gate form, by measurement: there the product's recipe gave
    0.830 / 0.833 / 0.825 / 0.808 at seeds 0-3 against plain 0.788 / 0.760 / 0.852 / 0.841, while holding S and
    p constant gave 0.794 / 0.749 / 0.866 / 0.694 (seeds 0-3) and also halving gamma's range
    (gain in (1/2, 3/2), which stops the 9 of 96 channels in blocks.1.0 whose tanh(gamma)
    went below -0.9 in the first epoch) gave 0.596 / 0.816 / 0.585. (The 0.680 at seed 1
    quoted above was measured before the environment was reinstalled; the same code and seed
    now give 0.833, and single runs of this recipe differ by 5-20 points with any change of
    arithmetic.) Wrapping CPSAM in the identity blend used for CBAM
    (nas_attn/modules/identity_blend.py) cannot help: CPSAM is the identity at init, so
    ``cpsam(x) - x`` is 0, the blend weight gets no gradient and CPSAM's parameters get
    gradients times tanh(0) = 0; measured, after 30 steps every blend weight, gamma and CSA
    last layer was still exactly 0. These are our choices; the abstract fixes none of them.

    Changed (issue 11, mix), and why. With S from ``P P^T`` and S not differentiated the mix
    form still trained 10-25 points under plain in MobileNetV2 (digits_mobilenetv2's recipe,
    seeds 0-3: 0.540 / 0.660 / 0.677 / 0.747 against plain 0.788 / 0.760 / 0.852 / 0.841).
    Measured in blocks.1.0 after the first epoch (seed 0, 128 validation images): 68% of S's
    rows put more than 0.9 on one channel, and only 15 distinct channels were anyone's
    argmax; the mixed map ``(S x)_i`` had a median 5.7x the RMS of channel i (5e7x at the 90th
    percentile: nearly silent channels), tanh(gamma) averaged 0.61 in magnitude, and the mix term's RMS
    was 1.7x the slot input's. An inner product of unnormalised maps is largest for the
    channels with the most energy, so S copied a few loud channel maps into every channel,
    a different few for each image, in front of the projection. Now the mix form's logits
    are correlation coefficients of the pooled maps (centred over the s*s cells, unit
    length): each channel attends to the channels whose maps have its shape, whatever their
    scale, and no two weights of a row differ by more than a factor e^2. Seeds 0-3: 0.780 / 0.897 / 0.738
    / 0.797 (mean 0.803, plain 0.810). Tried, not kept: also normalising each mixed map to
    unit RMS and rescaling the mixture to the receiving channel's RMS (so the term is at most
    the channel's own size): 0.844 / 0.777 / 0.669 / 0.655; that alone, on the old logits:
    0.571 / 0.797 (seeds 0-1). The gate form keeps P K^T: it trained as well as plain, and its
    sigmoid bounds what S passes on. The abstract says "correlation between all channel
    maps"; which measure of it is ours.

    Changed (issue 11, cost at large C), and why. With the full C x C affinity the gate form
    had fewer MACs than timm's Non-Local at every resnet50 stage but not less time at
    2048x7x7: 0.70x its MACs, 3.82x its time (2 threads, idle), 5.8-7.0x in one-thread CPU
    time here. There S and its softmax hold C*C = 4.2 M entries per image, 16 MiB that every
    forward and backward pass streams through, while Non-Local's 104 M MACs are large dense
    matrix products. Now:

    * The keys are the channel maps averaged over G = min(C, ``key_groups``) contiguous
      channel groups (default 256; adaptive bins along C, so any C works): S = softmax(P K^T)
      is C x G; the gate form applies it to the group means of p, the mix form to the
      group-mean maps. Each channel map is still compared with every channel map, through
      its group's mean. If the members of a group had equal logits, a softmax over all C
      channels would give exactly this (the log of the group size is a shift), so the groups
      cost accuracy only where a group's channel maps differ. With C <= 256 each group is one
      channel and the module computes what it computed before, to float rounding: every slot
      of the digits and cluttered spaces, resnet18 up to layer3, mobilenetv2_100 up to
      blocks.3.0. The groups are averages: no parameter. Cost C*G*(s*s + 1) MACs (gate), at
      2048x7x7 10 M per image against Non-Local's 104 M. Learning with the grouping active
      (the digits MobileNetV2 slots have C = 96 to 192, under 256, so we forced
      ``key_groups=16``, groups of 6 to 12 channels, coarser than resnet50's 8 at C = 2048):
      see the README's CPSAM section.
    * The gate form's softmax(P K^T) v runs in :class:`_AttendVector`, whose backward never
      forms a (C, G) gradient (two products of S with thin matrices instead of an outer
      product, a softmax backward and two products). Same values as autograd (tested).
    * The fuse is computed as ``x * (1 + w1 t) + w0 d`` (both branches are x plus or times a
      per-channel term, and w0 + w1 = 1): one full-size pass instead of five, the same
      function. CSA's three 1x1 convs run as matrix products with the same weights.
    Per stage, one-thread CPU time of forward + backward at batch 8 relative to Non-Local,
    before -> after: 256x56x56 0.07x -> 0.05x, 512x28x28 0.35x -> 0.27x, 1024x14x14
    0.94x -> 0.38x, 2048x7x7 7.0x -> 0.53x (one process, interleaved rounds, load 11-15).

    Parameters: 2C + 2 + C*rd + rd + 2*rd + rd*C + C (CSA) + C (gamma) + 2C (fuse), fewer than
    a Non-Local block on the same channels (tested); ``key_groups`` adds none.

    Time: scripts/bench_modules.py times CPSAM against Non-Local per resnet50 stage.

    Args:
        channels: number of input channels C.
        rd_ratio: CSA bottleneck width as a fraction of C, in (0, 1]; rd = max(1, round(C * rd_ratio)).
            timm's EfficientNet builder passes its se ratio here.
        pool_size: side s of PSA's pooled map, int >= 1, in pooled cells (s*s per channel).
        psa: ``"gate"`` (channel gate from the squeezed descriptor, ~C*G MACs) or ``"mix"``
            (S applied to the full map, C*G*H*W MACs).
        key_groups: int >= 1, the most keys PSA's affinity compares each channel map with:
            the channel maps averaged in G = min(C, key_groups) contiguous groups. C or more
            gives the full C x C affinity.
        device, dtype: where and in what dtype the parameters and buffers are made (timm's
            factory keywords, passed to every submodule).
        **kwargs: timm pass-through keywords (act_layer, ...) are accepted and ignored;
            anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "rd_ratio": float_spec(1 / 8, 0.0, 1.0, low_inclusive=False, doc="CSA bottleneck width / C"),
        "pool_size": int_spec(4, 1, None, doc="PSA pooled map side (cells)"),
        "psa": choice_spec("gate", PSA_FORMS,
                           doc="PSA form: gate (channel gate, ~C*G MACs) or mix (full map, C*G*H*W MACs)"),
        "key_groups": int_spec(256, 1, None,
                               doc="PSA affinity keys: the channel maps averaged in at most this many groups"),
    }

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, pool_size: int = 4, psa: str = "gate",
                 key_groups: int = 256, device=None, dtype=None, **kwargs):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        reject_unknown("CPSAM", kwargs, self.HYPERPARAMETERS)
        check_values("CPSAM", self.HYPERPARAMETERS,
                     dict(rd_ratio=rd_ratio, pool_size=pool_size, psa=psa, key_groups=key_groups))
        self.channels = channels
        self.rd_ratio = float(rd_ratio)
        self.pool_size = int(pool_size)
        self.psa_form = psa
        self.key_groups = int(key_groups)
        rd_channels = max(1, int(round(channels * self.rd_ratio)))
        self.csa = ChannelSqueezeAttention(channels, rd_channels, **dd)
        self.psa = PositionSqueezeAttention(channels, self.pool_size, psa, self.key_groups, **dd)
        # fuse.weight holds the logits of each channel's pair of branch weights (softmax over
        # the pair, so the fuse is a convex mix); zeros: (1/2, 1/2).
        self.fuse = nn.Conv2d(2 * channels, channels, 1, groups=channels, bias=False, **dd)
        nn.init.zeros_(self.fuse.weight)

    def fuse_weights(self) -> torch.Tensor:
        """(C, 2) weights of (CSA, PSA) per output channel, each row non-negative summing to 1."""
        return F.softmax(self.fuse.weight.view(-1, 2).float(), dim=1).to(self.fuse.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The grouped 1x1 fuse conv (2 weights per channel w0, w1) is two per-channel scales and
        # a sum; not run as a conv: torch's CPU path for a conv with groups=C loops over the
        # groups (2,051 slow-conv calls for one CPSAM at C=2048, most of its time). Both branches
        # are x plus or times a per-channel term, so with w0 + w1 = 1 the gate form is
        # w0 (x + d) + w1 x (1 + t) = x (1 + w1 t) + w0 d: one pass over x instead of five.
        weight = self.fuse_weights().view(1, -1, 2, 1, 1)
        shift = weight[:, :, 0] * self.csa.delta(x)
        if self.psa_form == "gate":
            return torch.addcmul(shift, x, 1.0 + weight[:, :, 1] * self.psa.gate(x))
        return torch.addcmul(x + shift, weight[:, :, 1] * torch.tanh(self.psa.gamma), self.psa.mixed(x))

    def extra_repr(self) -> str:
        return (f"rd_ratio={self.rd_ratio:g}, pool_size={self.pool_size}, psa={self.psa_form}, "
                f"key_groups={self.key_groups}")
