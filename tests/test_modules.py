"""Tests of nas_attn.modules: the four modules' stated properties, timm integration, registry."""
import inspect
import math
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import NonLocalAttn
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nas_attn.modules import (
    CPSAM, DSA, EXCLUDED_TIMM, HYPERPARAMETERS, SCA, AWConv2d, UnknownArgumentError, available,
    check_kwargs, create_attn, get_attn_class,
)

OURS = [DSA, SCA, CPSAM]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class OpRecorder(TorchDispatchMode):
    """Records the aten op names run under it (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


NON_LINEAR_OR_CONV_OPS = (
    "conv", "_conv", "mkldnn_conv", "cudnn_conv", "sigmoid", "softmax", "_softmax", "log_softmax",
    "_log_softmax", "relu", "threshold_backward", "tanh", "gelu", "silu", "hardsigmoid", "hardswish",
    "elu", "leaky_relu", "softplus",
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- common to DSA, SCA, CPSAM

@pytest.mark.parametrize("cls", OURS)
def test_builds_as_timm_builds_it(cls):
    cls(8, rd_ratio=1.0)  # EfficientNet builder's probe
    cls(8, act_layer=nn.SiLU, device="cpu", dtype=torch.float32)
    cls(8, gate_layer="sigmoid", norm_layer=nn.BatchNorm2d, rd_divisor=8, rd_channels=4)
    assert timm.layers.create_attn(cls, 8) is not None


@pytest.mark.parametrize("cls", OURS)
def test_device_and_dtype_honoured(cls):
    module = cls(16, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in module.parameters())
    module = cls(16, device="meta")
    assert all(p.device.type == "meta" for p in module.parameters())


@pytest.mark.parametrize("cls", OURS)
def test_misspelt_hyperparameter_rejected(cls):
    with pytest.raises(UnknownArgumentError, match="tresh"):
        cls(8, tresh=0.3)
    assert issubclass(UnknownArgumentError, ValueError) and issubclass(UnknownArgumentError, TypeError)


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (1, 8, 1, 5), (3, 8, 7, 3), (2, 24, 16, 16)])
def test_same_shape_any_size(cls, training, shape):
    module = cls(shape[1]).train(training)
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_float32(cls, dtype):
    module = cls(16)
    if cls is not DSA:  # give the fresh-identity modules something to compute
        for p in module.parameters():
            nn.init.normal_(p, std=0.3)
    module.eval()
    x = torch.randn(2, 16, 9, 9)
    expected = module(x)
    got = module.to(dtype)(x.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    if cls is DSA:  # a pruning mask flips at the threshold under rounding: compare kept pixels only
        close = (got.float() - expected).abs() <= 0.05 * (1 + expected.abs())
        assert close.float().mean() > 0.97
    else:
        torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cls", OURS)
def test_inside_timm_resnet(cls):
    model = timm.create_model("resnet50" if cls is DSA else "resnet18", num_classes=5,
                              block_args=dict(attn_layer=cls))
    assert isinstance(model.layer1[0].se, cls)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5)
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def mobilenet():
    return timm.create_model("mobilenetv2_100", num_classes=4)


@pytest.mark.parametrize("cls", OURS)
def test_in_mobilenetv2_inverted_residual_se_slot(cls, mobilenet):
    model = mobilenet
    blocks = [model.blocks[1][0], model.blocks[3][1], model.blocks[6][0]]
    saved = [b.se for b in blocks]
    try:
        for block in blocks:
            block.se = cls(block.conv_pwl.in_channels, act_layer=nn.ReLU6)
        x = torch.randn(2, 3, 64, 64)
        captured = {}
        hook = blocks[1].conv_pwl.register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
        out = model(x)
        hook.remove()
        assert captured["x"].shape[1] == blocks[1].conv_pwl.in_channels
        out.sum().backward()
        assert out.shape == (2, 4)
    finally:
        for block, se in zip(blocks, saved):
            block.se = se
        model.zero_grad()


@pytest.mark.parametrize("cls", OURS)
def test_efficientnet_builder_accepts_module_as_se_layer(cls):
    # The builder probes se_layer(8, rd_ratio=1.0), then passes rd_ratio, act_layer, device, dtype.
    model = timm.create_model("efficientnet_b0", num_classes=3, se_layer=cls)
    assert isinstance(model.blocks[1][0].se, cls)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3)


# ---------------------------------------------------------------- DSA

def test_dsa_has_zero_parameters_and_no_state():
    module = DSA(512)
    assert n_params(module) == 0 and len(module.state_dict()) == 0


@pytest.mark.parametrize("prune_mode", ["threshold", "keep_ratio"])
def test_dsa_graph_has_no_conv_sigmoid_softmax_or_relu(prune_mode):
    def forbidden(op):
        return op.startswith(NON_LINEAR_OR_CONV_OPS) or op in ("exp", "exp_", "expm1")

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with OpRecorder() as recorder:
        DSA(8, prune_mode=prune_mode, reduce="mean_max")(x).sum().backward()
    assert {"mean", "amax", "amin", "mul"} <= recorder.ops
    assert not [op for op in recorder.ops if forbidden(op)]
    with OpRecorder() as control:  # the recorder does see such ops when they run
        CPSAM(8)(x).sum().backward()
    # (CPSAM runs its 1x1 convs as matrix products since issue 11; SCA shows a convolution.)
    assert {"sigmoid", "_softmax", "relu"} <= control.ops
    with OpRecorder() as control:
        SCA(8)(x).sum().backward()
    assert {"convolution", "sigmoid"} <= control.ops


def test_dsa_hand_computed_example():
    # Reweighting normalises the gain to mean 1 over the kept pixels (issue 11, DSA rule 6):
    # y = x * M * w / mean_M(w), w = 1 + a_fg.
    x = torch.tensor([[[[0.0, 2.0, 4.0]], [[0.0, 0.0, 2.0]]]])  # channel mean: 0, 1, 3
    a_fg = torch.tensor([0.0, 1.0, 3.0]) / (3.0 + 1e-6)
    w = 1 + a_fg
    y = DSA(2, threshold=0.5)(x)  # keeps the last pixel only: its gain is w / w = 1
    torch.testing.assert_close(y, x * torch.tensor([0.0, 0.0, 1.0]))
    module = DSA(2, threshold=0.3)  # keeps the last two: gains w / mean(w[1:])
    y = module(x)
    torch.testing.assert_close(y, x * torch.tensor([0.0, 1.0, 1.0]) * w / ((w[1] + w[2]) / 2))
    assert module.kept_fraction == pytest.approx(2 / 3)
    y = DSA(2, threshold=0.0)(x)  # keeps all: gains 3 * w / sum(w) (about 0.643, 0.857, 1.5)
    torch.testing.assert_close(y, x * 3 * w / w.sum())
    y = DSA(2, threshold=0.3, reduce="max", reweight=False)(x)  # channel max: 0, 2, 4
    torch.testing.assert_close(y, x * torch.tensor([0.0, 1.0, 1.0]))


def test_dsa_reweighting_keeps_the_average_gain_of_kept_pixels_at_one():
    """Rule 6: the reweighting never rescales a sample as a whole (that is what cost
    MobileNetV2 13 points of accuracy), and an empty mask gives zeros, not NaN."""
    x = torch.rand(3, 8, 6, 6) + 0.1
    for kwargs in ({"threshold": 0.0}, {"threshold": 0.4}, {"prune_mode": "keep_ratio", "keep_ratio": 0.3}):
        module = DSA(8, **kwargs)
        gain = module(x) / x
        kept = gain > 0
        per_sample = (gain * kept).sum((1, 2, 3)) / kept.sum((1, 2, 3))
        torch.testing.assert_close(per_sample, torch.ones(3))
        assert (gain.amax((1, 2, 3)) > 1.05).all()  # still a reweighting, not the identity
    ramp = torch.arange(4.0).view(1, 1, 2, 2).expand(1, 4, 2, 2)  # a_fg up to 3 / (3 + eps) < 1
    y = DSA(4, threshold=0.9999999)(ramp)
    assert torch.isfinite(y).all()


def test_dsa_kept_fraction_falls_monotonically_with_threshold():
    x = torch.randn(4, 16, 12, 12)
    kept = []
    for threshold in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]:
        module = DSA(16, threshold=threshold)
        assert module.kept_fraction is None
        module(x)
        kept.append(module.kept_fraction)
    assert isinstance(kept[0], float)
    assert kept[0] == 1.0
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[-1] < 0.05


def test_dsa_threshold_zero_without_reweight_is_identity():
    x = torch.randn(3, 8, 5, 7)
    assert torch.equal(DSA(8, threshold=0.0, reweight=False)(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fill", [0.0, 3.5, -1e4])
def test_dsa_flat_input_passes_unchanged(dtype, fill):
    x = torch.full((2, 8, 5, 5), fill, dtype=dtype)
    module = DSA(8, threshold=0.9)
    y = module(x)
    assert torch.equal(y, x)
    assert module.kept_fraction == 1.0


def test_dsa_flat_sample_passes_while_others_are_pruned():
    x = torch.randn(2, 8, 6, 6)
    x[1] = 0.0
    y = DSA(8, threshold=0.5)(x)
    assert torch.equal(y[1], x[1])
    assert (y[0] == 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dsa_never_nan(dtype):
    cases = [torch.randn(2, 8, 4, 4) * 3e3, torch.randn(2, 8, 4, 4) * 1e-7, torch.randn(1, 8, 1, 1)]
    tiny_ramp = 1 + 1e-3 * torch.arange(16.0).view(1, 1, 4, 4).expand(2, 8, 4, 4)
    cases.append(tiny_ramp)
    for x in cases:
        x = x.to(dtype).requires_grad_()
        for kwargs in ({}, {"prune_mode": "keep_ratio"}, {"reduce": "max"}):
            y = DSA(8, **kwargs)(x)
            y.float().sum().backward()
            assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # reweighting by up to 2 can overflow float16's range (65504): inf then, never NaN
    x = (torch.randn(2, 8, 4, 4) * 1e5).clamp(-6e4, 6e4).to(dtype)
    assert not DSA(8)(x).isnan().any()


@pytest.mark.parametrize("keep_ratio", [0.01, 0.3, 0.5, 1.0])
def test_dsa_keep_ratio_keeps_that_many_pixels_per_sample(keep_ratio):
    x = torch.randn(3, 4, 7, 9)
    module = DSA(4, prune_mode="keep_ratio", keep_ratio=keep_ratio, reweight=False)
    y = module(x)
    expected = max(1, math.ceil(keep_ratio * 63))
    kept_per_sample = (y != 0).any(dim=1).flatten(1).sum(dim=1)
    assert kept_per_sample.tolist() == [expected] * 3
    assert module.kept_fraction == pytest.approx(expected / 63)


def test_dsa_keeps_zero_initialised_resnet_branches_training():
    model = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=DSA))
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    out = model(torch.randn(4, 3, 64, 64))
    F.cross_entropy(out, torch.tensor([1, 2, 3, 4])).backward()
    assert all(b.bn2.weight.grad.abs().sum() > 0 for b in blocks)
    assert all(b.se.kept_fraction == 1.0 for b in blocks)  # all-zero inputs: nothing pruned


def test_dsa_bottleneck_last_bn_gets_gradient():
    model = timm.create_model("resnet50", num_classes=3, block_args=dict(attn_layer=DSA))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(b.bn3.weight.grad.abs().sum() > 0 for layer in (model.layer1, model.layer4) for b in layer)


@pytest.mark.parametrize("prune_everywhere", [False, True])
def test_dsa_prunes_only_where_the_block_allows_it(prune_everywhere):
    """DSA rule 7: in a MobileNetV2 inverted residual (with or without a shortcut) the slot feeds
    the projection and its BatchNorm, so DSA only reweights there unless told otherwise; in a
    ResNet block (slot after the last BN) it prunes."""
    from nas_attn.arch import build_model
    kwargs = {"threshold": 0.5, "prune_everywhere": prune_everywhere}
    arch = {"model": "mobilenetv2_100", "model_args": {"num_classes": 10}, "blocks": {
        b: {"attention": "dsa", "attention_kwargs": kwargs} for b in ("blocks.1.0", "blocks.1.1")}}
    model = build_model(arch).eval()
    first, second = model.blocks[1][0], model.blocks[1][1]
    assert not first.has_skip and second.has_skip
    assert not first.se.block_allows_pruning and not second.se.block_allows_pruning
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for dsa in (first.se, second.se):
        if prune_everywhere:
            assert dsa.kept_fraction < 1.0
        else:
            assert dsa.kept_fraction == 1.0
            x = torch.rand(2, 8, 5, 5) + 0.1
            a_fg, _ = dsa.foreground(x)
            w = 1 + a_fg
            torch.testing.assert_close(dsa(x), x * w / w.mean((2, 3), keepdim=True))  # nothing zeroed
    resnet = build_model({"model": "resnet18", "model_args": {"num_classes": 10}, "blocks": {
        b: {"attention": "dsa", "attention_kwargs": kwargs} for b in ("layer1.0", "layer2.0")}})
    assert all(b.se.block_allows_pruning for b in (resnet.layer1[0], resnet.layer2[0]))


# ---------------------------------------------------------------- SCA

@pytest.mark.parametrize("kernel_size", [3, 7])
def test_sca_parameter_count_independent_of_channels(kernel_size):
    counts = {c: n_params(SCA(c, kernel_size=kernel_size)) for c in (8, 64, 512)}
    assert set(counts.values()) == {3 * (2 * kernel_size ** 2 + 2)}
    shapes = {c: [tuple(p.shape) for p in SCA(c, kernel_size=kernel_size).parameters()] for c in (8, 512)}
    assert shapes[8] == shapes[512]


def test_sca_has_no_reduced_width_layer():
    module = SCA(256)
    widths = set()
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            widths |= {layer.in_channels, layer.out_channels}
        elif isinstance(layer, nn.BatchNorm2d):
            widths.add(layer.num_features)
        elif isinstance(layer, (nn.Linear, nn.Conv1d)):
            widths |= {-1}
    assert widths <= {1, 2}


def test_sca_hand_computed_gates():
    module = SCA(4, kernel_size=3).eval()
    for gate in (module.gate_cw, module.gate_ch, module.gate_hw):
        nn.init.zeros_(gate.conv.weight)
        gate.bn.eps = 0.0
    x = torch.randn(2, 4, 5, 6)
    # zero convs: every gate is sigmoid(BN bias 0) = 0.5
    torch.testing.assert_close(module(x), 0.5 * x)
    # (C, W) gate reading the H-average at its own (c, w): sigmoid(mean_H x), broadcast over H
    with torch.no_grad():
        module.gate_cw.conv.weight[0, 0, 1, 1] = 1.0
    expected = x * (torch.sigmoid(x.mean(dim=2, keepdim=True)) + 1.0) / 3
    torch.testing.assert_close(module(x), expected)
    # (H, W) gate reading the channel max: sigmoid(max_C x), broadcast over C
    with torch.no_grad():
        module.gate_cw.conv.weight.zero_()
        module.gate_hw.conv.weight[0, 1, 1, 1] = 1.0
    expected = x * (torch.sigmoid(x.amax(dim=1, keepdim=True)) + 1.0) / 3
    torch.testing.assert_close(module(x), expected)


def _sca_reference(module, x):
    """SCA as the plain autograd expression it was first written as (before the fused nodes)."""
    b, c, h, w = x.shape

    def gate(g, avg, peak):
        return torch.sigmoid(g.bn(g.conv(torch.stack((avg, peak), dim=1))))

    g_cw = gate(module.gate_cw, x.mean(dim=2), x.amax(dim=2)).view(b, c, 1, w)
    g_ch = gate(module.gate_ch, x.mean(dim=3), x.amax(dim=3)).view(b, c, h, 1)
    g_hw = gate(module.gate_hw, x.mean(dim=1), x.amax(dim=1))
    return x * ((g_cw + g_ch + g_hw) * (1.0 / 3.0))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# Plane sides cover: 1 x 1, kernel wider than the plane, planes taller than wide (transposed for
# the banded conv), short sides above the 28-row single band block (33: 3 blocks of 11 rows;
# 35: 3 blocks of 12 with a cropped last block), 20 and 17 in one block, and square planes.
SCA_SHAPES = [((2, 16, 7, 5), 7), ((3, 8, 1, 1), 3), ((2, 40, 3, 12), 5), ((1, 24, 9, 9), 7),
              ((2, 40, 35, 33), 7), ((1, 12, 20, 50), 5), ((2, 64, 17, 17), 1)]


def _sca_with_live_bn(channels, kernel_size):
    module = SCA(channels, kernel_size=kernel_size).train()
    with torch.no_grad():  # non-trivial BN affine, so every gate path carries a gradient
        for gate in (module.gate_cw, module.gate_ch, module.gate_hw):
            gate.bn.weight.uniform_(0.5, 1.5)
            gate.bn.bias.uniform_(-0.5, 0.5)
    return module


@pytest.mark.parametrize("shape,kernel_size", SCA_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_sca_fused_equals_reference_formula(shape, kernel_size, channels_last):
    """Same function as the plain expression: outputs and all gradients within 1e-5 relative.

    The reference runs each gate's conv as nn.Conv2d and the poolings through autograd, so a
    wrong band in the banded conv, a wrong pooling or gate-product backward, or a lost term in
    the single-buffer dx all show here. randn inputs have no tied maxima, so the arg-max
    gradient equals amax's tie-splitting one. In float64: a BN parameter's gradient is a sum
    that nearly cancels, and in float32 rounding alone puts it above 1e-5 relative on some
    draws and thread counts (against a float64 reference over 25 seeds: up to 3e-4 for the
    previous implementation, 1.4e-4 for this one), which would test rounding, not the formula.
    """
    torch.manual_seed(0)
    # float32 put a 1x1 kernel's BN gradient at 2.5e-5 in one idle run of the whole suite
    module = _sca_with_live_bn(shape[1], kernel_size).double()
    x0 = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(shape, dtype=torch.float64)
    results = []
    for fn in (module, lambda x: _sca_reference(module, x)):
        module.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        y = fn(x)
        y.backward(grad_out)
        results.append([y.detach(), x.grad] + [p.grad for p in module.parameters()])
    for got, ref in zip(*results):
        assert _rel(got, ref) < 1e-5
    if channels_last and shape[2] * shape[3] > 1:  # output and input gradient stay channels-last
        assert results[0][0].is_contiguous(memory_format=torch.channels_last)
        assert results[0][1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,kernel_size", SCA_SHAPES[3:5])
def test_sca_partial_gradients_no_grad_and_repeated_backward(shape, kernel_size):
    """The single-node backward when only the parameters or only the input need gradients, the
    no-grad forward, and a backward run twice through a retained graph: each equals the plain
    expression's (a skipped or misrouted gradient, or a gate graph freed after one use, fails)."""
    torch.manual_seed(1)  # seeded and in float64: see test_sca_fused_equals_reference_formula
    module = _sca_with_live_bn(shape[1], kernel_size).double()
    x = torch.randn(shape, dtype=torch.float64)
    grad_out = torch.randn(shape, dtype=torch.float64)

    def param_grads():
        return [p.grad.clone() for p in module.parameters()]

    # only the parameters need gradients
    module.zero_grad(set_to_none=True)
    module(x).backward(grad_out)
    got = param_grads()
    module.zero_grad(set_to_none=True)
    _sca_reference(module, x).backward(grad_out)
    for g, r in zip(got, param_grads()):
        assert _rel(g, r) < 1e-5
    # only the input needs gradients
    module.zero_grad(set_to_none=True)
    module.requires_grad_(False)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    module(xs[0]).backward(grad_out)
    _sca_reference(module, xs[1]).backward(grad_out)
    assert all(p.grad is None for p in module.parameters())
    assert _rel(xs[0].grad, xs[1].grad) < 1e-5
    module.requires_grad_(True)
    # no autograd at all: the lean forward
    with torch.no_grad():
        assert _rel(module(x), _sca_reference(module, x)) < 1e-5
    # two backwards through one retained graph accumulate twice the gradient
    module.zero_grad(set_to_none=True)
    x1 = x.clone().requires_grad_(True)
    y = module(x1)
    y.backward(grad_out, retain_graph=True)
    once = [x1.grad.clone()] + param_grads()
    y.backward(grad_out)
    for g, r in zip([x1.grad] + param_grads(), once):
        assert _rel(g, 2 * r) < 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 7, 16, 15), (2, 6, 20, 1), (1, 1, 1, 1)])
def test_sca_max_pooling_layouts_equal_torch_max(layout, shape):
    """SCA's arg-max poolings (max pooling laid out per memory format, a transposed copy for wide
    W) give torch.max's values and indices, ties included (first position), over C, H and W.
    A wrong view, a row/column index taken from the wrong flat index, or a transposed copy read
    the wrong way round gives other values or indices here; W = 15 takes the transposed-copy
    path, W = 3 and 1 do not, and a non-contiguous layout takes torch.max itself."""
    from nas_attn.modules.sca import _max_values, _max_with_index
    torch.manual_seed(0)
    for x in (torch.randn(shape), torch.randint(0, 3, shape).float()):  # the second has many ties
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)
        for dim in (1, 2, 3):
            values, index = _max_with_index(x, dim)
            ref_values, ref_index = x.max(dim=dim)
            assert torch.equal(values, ref_values) and torch.equal(index, ref_index)
            assert torch.equal(_max_values(x, dim), x.amax(dim=dim))


def test_sca_tied_maxima_gradient_sums_match():
    """With ties (ReLU6-clipped input) the max gradient goes to one position: per pooled line the
    gradient mass is the same as amax's even split, and the output is unchanged."""
    module = SCA(8, kernel_size=3).train()
    x = torch.randn(2, 8, 6, 6).mul(4).clamp(0, 6).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn(2, 8, 6, 6)
    y = module(x)
    y.backward(grad_out)
    y_ref = _sca_reference(module, x_ref)
    y_ref.backward(grad_out)
    assert _rel(y.detach(), y_ref.detach()) < 1e-5
    assert (x.detach() == 0).sum() > 10  # the test really has ties
    torch.testing.assert_close(x.grad.sum(), x_ref.grad.sum(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- CPSAM

@pytest.mark.parametrize("psa", ["gate", "mix"])
@pytest.mark.parametrize("channels,ours,non_local", [(64, 1369, 2264), (256, 17761, 33632), (512, 68289, 132800)])
def test_cpsam_fewer_parameters_than_non_local(channels, ours, non_local, psa):
    assert n_params(CPSAM(channels, psa=psa)) == ours
    assert n_params(NonLocalAttn(channels)) == non_local
    assert ours < non_local


# resnet50's attention-slot shapes, stage by stage (224x224 input)
RESNET50_STAGES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


@pytest.mark.parametrize("shape", RESNET50_STAGES)
def test_cpsam_fewer_macs_than_non_local_at_every_resnet50_stage(shape):
    """The paper's motivation: Non-Local wastes computation. Both forms cost less than timm's
    Non-Local everywhere since the affinity's keys are at most 256 channel groups (issue 11);
    the C x C affinity made the mix form dearer from 512x28x28 on and the gate form 0.70x
    Non-Local at 2048x7x7, this test fails if the key groups stop applying."""
    from nas_attn.cost import measure
    macs = {name: measure(nn.Sequential(module), shape).macs
            for name, module in [("gate", CPSAM(shape[0])), ("mix", CPSAM(shape[0], psa="mix")),
                                 ("nl", NonLocalAttn(shape[0]))]}
    c, h, w = shape
    groups = min(c, 256)
    assert macs["mix"] - macs["gate"] == c * groups * (h * w - 1)  # S x_G (C*G*H*W) instead of S v (C*G)
    assert macs["gate"] < macs["nl"] / 2 and macs["mix"] < macs["nl"]


@pytest.mark.parametrize("psa", ["gate", "mix"])
@pytest.mark.parametrize("training", [True, False])
def test_cpsam_fresh_module_is_identity(training, psa):
    x = torch.randn(2, 32, 7, 5)
    assert torch.equal(CPSAM(32, psa=psa).train(training)(x), x)


@pytest.mark.parametrize("psa", ["gate", "mix"])
def test_cpsam_branches_reduce_to_identity(psa):
    module = CPSAM(16, psa=psa)
    for p in module.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 16, 6, 6)
    assert not torch.allclose(module.csa(x), x) and not torch.allclose(module.psa(x), x)
    with torch.no_grad():
        module.psa.gamma.zero_()
        module.csa.fc2.weight.zero_()
        module.csa.fc2.bias.zero_()
    assert torch.equal(module.psa(x), x)
    assert torch.equal(module.csa(x), x)


def correlation(a, b):
    """Correlation coefficients between the rows of a (N, E) and of b (M, E)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a @ b.transpose(-1, -2)) / (a.norm(dim=-1)[..., :, None] * b.norm(dim=-1)[..., None, :])


def test_cpsam_position_squeeze_mix_hand_computed():
    module = CPSAM(3, pool_size=2, psa="mix")
    with torch.no_grad():
        module.psa.gamma.copy_(torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1))
    x = torch.randn(1, 3, 4, 4)
    cells = x.view(1, 3, 2, 2, 2, 2)
    pooled = (cells.mean(dim=(3, 5)) + cells.amax(dim=(3, 5))).reshape(3, 4)
    affinity = torch.softmax(correlation(pooled, pooled), dim=1)
    expected = x + torch.tanh(module.psa.gamma) * torch.einsum("ij,jhw->ihw", affinity, x[0])[None]
    torch.testing.assert_close(module.psa(x), expected)


def test_cpsam_mix_affinity_is_a_correlation():
    """Issue 11: with logits P P^T the mix form copied the few highest-energy channel maps into
    every channel (nearly one-hot rows) and trained 10-25 points under plain in MobileNetV2;
    its logits are now correlation coefficients, blind to each channel's scale."""
    module = CPSAM(8, psa="mix")
    x = torch.randn(2, 8, 6, 6)
    scaled = x.clone()
    scaled[:, 3] *= 50.0
    scaled[:, 5] *= 0.01
    affinity, _ = module.psa.affinity(x)
    torch.testing.assert_close(module.psa.affinity(scaled)[0], affinity)
    assert affinity.amax() <= math.e ** 2 / (math.e ** 2 + 7) + 1e-6  # logits in [-1, 1]: e / (e + 7 / e) at most
    gate_affinity, _ = CPSAM(8).psa.affinity(scaled)
    assert not torch.allclose(gate_affinity, CPSAM(8).psa.affinity(x)[0])  # the gate's P P^T is not


def test_cpsam_position_squeeze_gate_hand_computed():
    module = CPSAM(3, pool_size=2, psa="gate")
    with torch.no_grad():
        module.psa.gamma.copy_(torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1))
    x = torch.randn(1, 3, 4, 4)
    cells = x.view(1, 3, 2, 2, 2, 2)  # (b, c, cell row, row in cell, cell col, col in cell)
    pooled = (cells.mean(dim=(3, 5)) + cells.amax(dim=(3, 5))).reshape(3, 4)
    affinity = torch.softmax(pooled @ pooled.T, dim=1)
    gate = torch.sigmoid(affinity @ pooled.mean(dim=1))
    expected = x * (1 + torch.tanh(module.psa.gamma.view(3)) * gate).view(1, 3, 1, 1)
    torch.testing.assert_close(module.psa(x), expected)


def test_cpsam_position_squeeze_grouped_keys_hand_computed():
    """C > key_groups: each channel map attends to the maps averaged over contiguous channel groups."""
    module = CPSAM(6, pool_size=2, key_groups=3)
    with torch.no_grad():
        module.psa.gamma.copy_(torch.linspace(-1.0, 1.5, 6).view(1, 6, 1, 1))
    x = torch.randn(2, 6, 4, 4)
    cells = x.view(2, 6, 2, 2, 2, 2)
    pooled = (cells.mean(dim=(3, 5)) + cells.amax(dim=(3, 5))).reshape(2, 6, 4)
    keys = pooled.view(2, 3, 2, 4).mean(dim=2)  # channels (0, 1), (2, 3), (4, 5)
    affinity = torch.softmax(pooled @ keys.transpose(1, 2), dim=2)  # (2, 6, 3)
    gate = torch.sigmoid(affinity @ keys.mean(dim=2, keepdim=True))  # (2, 6, 1)
    expected = x * (1 + torch.tanh(module.psa.gamma) * gate.view(2, 6, 1, 1))
    torch.testing.assert_close(module.psa(x), expected)
    mix = CPSAM(6, pool_size=2, key_groups=3, psa="mix")
    with torch.no_grad():
        mix.psa.gamma.copy_(module.psa.gamma)
    group_maps = x.view(2, 3, 2, 16).mean(dim=2)  # (2, 3, H*W)
    mix_affinity = torch.softmax(correlation(pooled, keys), dim=2)
    expected = x + torch.tanh(mix.psa.gamma) * (mix_affinity @ group_maps).view(2, 6, 4, 4)
    torch.testing.assert_close(mix.psa(x), expected)


def test_cpsam_key_groups_at_least_channels_is_the_full_affinity():
    module = CPSAM(12, key_groups=12)
    wide = CPSAM(12, key_groups=500)
    narrow = CPSAM(12, key_groups=4)
    for other in (wide, narrow):
        other.load_state_dict(module.state_dict())
    with torch.no_grad():
        for m in (module, wide, narrow):
            m.psa.gamma.fill_(1.0)
    x = torch.randn(2, 12, 6, 6)
    assert torch.equal(module(x), wide(x))
    assert not torch.allclose(module(x), narrow(x))
    assert n_params(narrow) == n_params(module)  # the groups are averages: no parameters


def test_cpsam_attend_vector_backward_is_autograds(monkeypatch):
    """The gate form's softmax(Q K^T) v runs with its own backward (no (C, G) gradient formed):
    gradcheck in float64, and the module's gradients equal the plain-autograd path's."""
    from nas_attn.modules import cpsam as cpsam_module
    q = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cpsam_module._AttendVector.apply, (q, k, v))
    torch.testing.assert_close(cpsam_module._AttendVector.apply(q, k, v), cpsam_module.attend_vector(q, k, v))
    module = CPSAM(24, key_groups=8)
    for p in module.parameters():
        nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(3, 24, 5, 6)
    grad = torch.randn_like(x)
    calls = []
    own_apply = cpsam_module._AttendVector.apply
    monkeypatch.setattr(cpsam_module._AttendVector, "apply", lambda *a: calls.append(1) or own_apply(*a))

    def grads(plain):
        module.zero_grad()
        xr = x.clone().requires_grad_()
        with monkeypatch.context() as patch:
            patch.setattr(cpsam_module, "plain_path", lambda: plain)
            module(xr).backward(grad)
        return [xr.grad] + [p.grad.clone() for p in module.parameters()]

    own = grads(plain=False)
    assert len(calls) == 1  # the own-backward path really ran
    plain = grads(plain=True)
    assert len(calls) == 1
    for a, b in zip(own, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cpsam_psa_form_validated():
    with pytest.raises(ValueError, match=r"psa must be one of 'gate', 'mix', got 'full'"):
        CPSAM(8, psa="full")
    check_kwargs("cpsam", {"psa": "mix"})
    assert HYPERPARAMETERS["cpsam"]["psa"]["default"] == "gate"
    with pytest.raises(ValueError, match=r"key_groups"):
        CPSAM(8, key_groups=0)
    assert HYPERPARAMETERS["cpsam"]["key_groups"]["default"] == 256


def test_cpsam_channel_squeeze_hand_computed():
    module = CPSAM(4, rd_ratio=0.5)
    for p in module.csa.parameters():
        nn.init.normal_(p)
    x = torch.randn(1, 4, 3, 3)
    csa = module.csa
    logits = (csa.conv_attn.weight.view(1, 4) @ x[0].view(4, 9) + csa.conv_attn.bias).view(9)
    context = x[0].view(4, 9) @ torch.softmax(logits, dim=0)
    hidden = csa.fc1.weight.view(2, 4) @ context + csa.fc1.bias
    hidden = F.layer_norm(hidden, (2,), csa.norm.weight, csa.norm.bias)
    delta = csa.fc2.weight.view(4, 2) @ torch.relu(hidden) + csa.fc2.bias
    torch.testing.assert_close(csa(x), x + delta.view(1, 4, 1, 1))


@pytest.mark.parametrize("psa", ["gate", "mix"])
def test_cpsam_fuse_mixes_each_channel_own_two_branches(psa):
    module = CPSAM(8, psa=psa).eval()
    for p in module.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 8, 5, 5)
    logits = module.fuse.weight.view(8, 2)
    w = (logits.exp() / logits.exp().sum(dim=1, keepdim=True)).view(8, 2, 1, 1)  # softmax over each pair
    expected = w[:, 0] * module.csa(x) + w[:, 1] * module.psa(x)
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("psa", ["gate", "mix"])
def test_cpsam_gain_stays_bounded_whatever_its_parameters(psa):
    """Issue 11: unbounded fuse weights and gamma let SGD blow MobileNetV2's slot output up to
    10x its input. Now the fuse is a convex mix and gamma acts through tanh: the gate form's
    per-channel gain lies in (0, 2) however far training throws the parameters."""
    module = CPSAM(16, psa=psa)
    with torch.no_grad():
        module.fuse.weight.normal_(0, 20)
        module.psa.gamma.normal_(0, 20)
    w = module.fuse_weights()
    assert (w >= 0).all() and torch.allclose(w.sum(dim=1), torch.ones(16))
    x = torch.rand(3, 16, 6, 6) + 0.1
    if psa == "gate":
        gain = module.psa(x) / x
        assert (gain > 0).all() and (gain < 2).all()
    else:  # at most x plus one convex mixture of the channel maps
        assert (module.psa(x) - x).abs().amax() <= x.amax() + 1e-5


def test_cpsam_mix_no_gradient_through_position_affinity():
    """Issue 11: in the mix form the backward through S = softmax(P P^T) (logits quadratic in
    x, a max pool) stopped MobileNetV2 from learning; S is applied but not differentiated, so
    the gradient reaching x through PSA is exactly that of S held constant. (The gate form
    keeps its gradient through S: it trained as well as plain there; README, issue 11.)"""
    module = CPSAM(6, pool_size=2, psa="mix")
    with torch.no_grad():
        module.psa.gamma.normal_()
    x = torch.rand(2, 6, 4, 4, requires_grad=True)
    module.psa(x).square().sum().backward()
    with torch.no_grad():
        affinity, _ = module.psa.affinity(x)
    x_const = x.detach().clone().requires_grad_()
    expected = x_const + torch.tanh(module.psa.gamma.detach()) * (affinity @ x_const.view(2, 6, 16)).view(2, 6, 4, 4)
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_const.grad)
    assert module.psa.gamma.grad.abs().sum() > 0


# ---------------------------------------------------------------- AW-conv

CONV_CONFIGS = [
    dict(in_channels=16, out_channels=32, kernel_size=3, padding=1),
    dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, padding=1, groups=16, bias=False),
    dict(in_channels=16, out_channels=8, kernel_size=(3, 5), padding="same", padding_mode="reflect"),
    dict(in_channels=16, out_channels=32, kernel_size=3, dilation=2, padding=2, groups=4, bias=False),
    dict(in_channels=16, out_channels=24, kernel_size=1, stride=2),
    dict(in_channels=16, out_channels=16, kernel_size=5, padding=2, padding_mode="circular"),
]


@pytest.mark.parametrize("config", CONV_CONFIGS)
@pytest.mark.parametrize("mixing", ["element", "channel"])
def test_aw_conv_fresh_equals_replaced_conv(config, mixing):
    conv = nn.Conv2d(**config)
    aw = AWConv2d.from_conv(conv, mixing=mixing)
    x = torch.randn(3, 16, 11, 9)
    torch.testing.assert_close(aw(x), conv(x), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(aw.attention_weights(x)) == 0
    torch.testing.assert_close(aw(x[0]), conv(x[0]), rtol=1e-5, atol=1e-5)  # unbatched (C, H, W)
    assert aw(x[:0]).shape == conv(x[:0]).shape
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(aw, name) == getattr(conv, name)
    assert aw.weight.shape == conv.weight.shape and aw.weight.data_ptr() != conv.weight.data_ptr()
    assert (aw.bias is None) == (conv.bias is None)


@pytest.mark.parametrize("config", CONV_CONFIGS)
@pytest.mark.parametrize("mixing", ["element", "channel"])
def test_aw_conv_zeroed_attention_equals_conv_after_training_changes(config, mixing):
    # Zeroing the attention after its MLP has moved reduces the module to the conv again.
    conv = nn.Conv2d(**config)
    aw = AWConv2d.from_conv(conv, mixing=mixing)
    for p in aw.attention.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 16, 8, 8)
    assert not torch.allclose(aw(x), conv(x), atol=1e-3)
    with torch.no_grad():
        aw.attention.fc2.weight.zero_()
        aw.attention.fc2.bias.zero_()
    torch.testing.assert_close(aw(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONV_CONFIGS[:4])
@pytest.mark.parametrize("mixing", ["element", "channel"])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])
def test_aw_conv_equals_per_sample_reference(config, mixing, chunk_bytes):
    conv = nn.Conv2d(**config)
    aw = AWConv2d.from_conv(conv, mixing=mixing)
    aw.cpu_chunk_bytes = chunk_bytes  # 1: one sample per chunk; 2**40: the whole batch folded
    for p in aw.attention.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(4, 16, 10, 10)
    attn = aw.attention_weights(x)
    assert attn.shape == (4, conv.out_channels, 16 // conv.groups, *conv.kernel_size)
    expected = torch.cat([
        F.conv2d(F.pad(x[b:b + 1], conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
                 if conv.padding_mode != "zeros" else x[b:b + 1],
                 conv.weight * (1 + attn[b]), conv.bias, conv.stride,
                 0 if conv.padding_mode != "zeros" else conv.padding, conv.dilation, conv.groups)
        for b in range(4)])
    torch.testing.assert_close(aw(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels,side,groups,expected", [
    (64, 56, 1, 8), (128, 28, 1, 8), (256, 14, 1, 6), (512, 7, 1, 1), (960, 7, 960, 8)])
def test_aw_conv_cpu_chunks_at_resnet_shapes(channels, side, groups, expected):
    """Batch 8 on CPU: the whole batch folds up to 128 channels and for depthwise convs, one sample
    per chunk at 512 channels, where the whole batch's 75 MB of kernels page-fault every step
    (AWConv2d docstring). A cap or size rule that folds 512 channels whole again, or splits the
    small convs into per-sample chunks, fails here."""
    aw = AWConv2d(channels, channels, 3, padding=1, groups=groups)
    x = torch.empty(8, channels, side, side)
    assert min(aw._samples_per_chunk(x), 8) == expected
    assert len(x.split(aw._samples_per_chunk(x))) == -(-8 // expected)


@pytest.mark.parametrize("mixing", ["element", "channel"])
def test_aw_conv_attention_has_weight_shape_per_sample(mixing):
    aw = AWConv2d(12, 20, (3, 5), padding=(1, 2), groups=4, mixing=mixing)
    attn = aw.attention_weights(torch.randn(5, 12, 2, 3))  # map smaller than the kernel
    assert attn.shape == (5,) + tuple(aw.weight.shape) == (5, 20, 3, 3, 5)


@pytest.mark.parametrize("mixing", ["element", "channel"])
def test_aw_conv_gradients_reach_kernel_and_mlp(mixing):
    aw = AWConv2d(6, 8, 3, padding=1, groups=2, mixing=mixing)
    nn.init.normal_(aw.attention.fc2.weight, std=0.5)
    x = torch.randn(3, 6, 7, 7, requires_grad=True)
    aw(x).square().sum().backward()
    for name, p in aw.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("mixing", ["element", "channel"])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])
def test_aw_conv_gradcheck(mixing, chunk_bytes):
    aw = AWConv2d(4, 4, 3, padding=1, groups=2, mid=3, mixing=mixing, dtype=torch.float64)
    aw.cpu_chunk_bytes = chunk_bytes
    for p in aw.attention.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in aw.named_parameters()]

    def run(x, *params):
        return torch.func.functional_call(aw, dict(zip(names, params)), (x,))

    inputs = (x, *[p.detach().clone().requires_grad_() for p in aw.parameters()])
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_aw_conv_parameter_counts():
    element = AWConv2d(512, 512, 3, padding=1, bias=False, mid=8)
    assert n_params(element.attention) == 2 * 8 + (8 + 1) * 512
    channel = AWConv2d(512, 512, 3, padding=1, bias=False, mid=8, mixing="channel")
    assert n_params(channel.attention) == (512 + 1) * 8 + (8 + 1) * 512 * 512
    depthwise = AWConv2d(96, 96, 3, padding=1, groups=96, mid=4, mixing="channel")
    assert n_params(depthwise.attention) == (96 + 1) * 4 + (4 + 1) * 96


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_aw_conv_half_precision(dtype):
    conv = nn.Conv2d(8, 8, 3, padding=1).to(dtype)
    aw = AWConv2d.from_conv(conv)
    assert aw.weight.dtype == dtype and aw.attention.fc1.weight.dtype == dtype
    x = torch.randn(2, 8, 6, 6, dtype=dtype, requires_grad=True)
    y = aw(x)
    assert y.dtype == dtype and torch.equal(y, conv(x))
    y.float().sum().backward()
    assert torch.isfinite(aw.weight.grad).all()


def test_aw_conv_argument_errors():
    with pytest.raises(ValueError, match="mid"):
        AWConv2d(8, 8, 3, mid=0)
    with pytest.raises(ValueError, match="mixing"):
        AWConv2d(8, 8, 3, mixing="spatial")
    with pytest.raises(ValueError, match="groups"):
        AWConv2d(8, 6, 3, groups=4)
    with pytest.raises(UnknownArgumentError, match="hidden"):
        AWConv2d(8, 8, 3, hidden=4)
    with pytest.raises(ValueError, match="Conv2dSame"):
        AWConv2d.from_conv(timm.layers.Conv2dSame(8, 8, 3))


def test_aw_conv_drop_in_for_resnet_and_mobilenet_convs(mobilenet):
    # zero_init_last=False: with timm's zero last BN no gradient reaches conv2 on the first step
    model = timm.create_model("resnet18", num_classes=4, zero_init_last=False,
                              block_args=dict(attn_layer=SCA)).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    for block in (model.layer1[0], model.layer4[1]):
        block.conv2 = AWConv2d.from_conv(block.conv2)  # AW-conv and an activation attention in one block
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    model.train()
    model(x).sum().backward()
    assert model.layer4[1].conv2.attention.fc2.weight.grad.abs().sum() > 0

    block = mobilenet.blocks[2][0]
    original = block.conv_dw
    try:
        block.conv_dw = AWConv2d.from_conv(original)
        block.se = DSA(block.conv_pwl.in_channels)
        out = mobilenet(x)
        out.sum().backward()
        assert out.shape == (2, 4) and block.conv_dw.weight.grad is not None
    finally:
        block.conv_dw = original
        block.se = nn.Identity()
        mobilenet.zero_grad()


# ---------------------------------------------------------------- registry

def test_available_lists_ours_timm_and_none():
    names = available()
    assert names == sorted(names)
    assert {"dsa", "sca", "cpsam", "aw_conv", "none", "se", "eca", "cbam", "gc", "nl"} <= set(names)
    assert not set(EXCLUDED_TIMM) & set(names)
    timm_names = {"se", "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord", "scoord",
                  "ela", "strip", "sk", "splat", "lambda", "bottleneck", "halo", "nl", "bat"}
    assert timm_names <= set(names) | set(EXCLUDED_TIMM)  # every timm name is either offered or explained
    assert available("conv") == ["aw_conv"]
    assert "aw_conv" not in available("attention") and "none" in available("attention")
    with pytest.raises(ValueError, match="kind"):
        available("everything")


@pytest.mark.parametrize("name", [n for n in available("attention") if n != "none"])
def test_every_attention_name_is_a_drop_in_attention(name):
    for shape in [(2, 8, 1, 1), (2, 8, 7, 7), (2, 24, 5, 3)]:
        module = create_attn(name, shape[1])
        x = torch.randn(shape)
        assert module(x).shape == x.shape
    module_cls = get_attn_class(name)
    module_cls(8, device="cpu", dtype=torch.float32)
    for key, spec in HYPERPARAMETERS[name].items():  # each listed hyperparameter is accepted
        if spec["default"] is not None:
            create_attn(name, 16, **{key: spec["default"]})(torch.randn(1, 16, 4, 4))


def test_registry_factory_works_as_timm_attn_layer():
    model = timm.create_model("resnet18", num_classes=2, block_args=dict(attn_layer=get_attn_class("eca")))
    assert type(model.layer2[0].se).__name__ == "EcaModule"
    factory = pickle.loads(pickle.dumps(get_attn_class("ecam")))  # trial configs travel to workers
    assert factory(16).conv2 is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_none_aw_conv_unknown_and_excluded_names():
    assert create_attn("none", 64) is None and get_attn_class("none") is None
    assert isinstance(create_attn("DSA", 8), DSA)
    with pytest.raises(ValueError, match="from_conv"):
        create_attn("aw_conv", 64)
    with pytest.raises(ValueError, match=r"valid names: .*cbam.*dsa.*se"):
        create_attn("sea", 64)
    with pytest.raises(ValueError, match="feat_size"):
        create_attn("bottleneck", 64)
    with pytest.raises(ValueError, match="must be a str"):
        create_attn(None, 64)


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("dsa", dict(threshold=1.0), r"threshold must be a float in \[0, 1\), got 1.0"),
    ("dsa", dict(threshold=-0.1), r"threshold .*\[0, 1\)"),
    ("dsa", dict(keep_ratio=0.0), r"keep_ratio must be a float in \(0, 1\], got 0.0"),
    ("dsa", dict(keep_ratio=1.5), r"keep_ratio .*\(0, 1\]"),
    ("dsa", dict(reduce="median"), r"reduce must be one of 'mean', 'max', 'mean_max', got 'median'"),
    ("dsa", dict(prune_mode="random"), r"prune_mode must be one of"),
    ("dsa", dict(eps=0.0), r"eps must be a float in \(0, inf\)"),
    ("dsa", dict(reweight=1), r"reweight must be a bool"),
    ("sca", dict(kernel_size=4), r"kernel_size must be an odd int in \[1, inf\), got 4"),
    ("sca", dict(kernel_size=0), r"kernel_size must be an odd int"),
    ("sca", dict(kernel_size=3.0), r"kernel_size must be an odd int"),
    ("cpsam", dict(pool_size=0), r"pool_size must be an int in \[1, inf\), got 0"),
    ("cpsam", dict(rd_ratio=0.0), r"rd_ratio must be a float in \(0, 1\], got 0.0"),
    ("cpsam", dict(rd_ratio=-1), r"rd_ratio"),
    ("eca", dict(kernel_size=2), r"eca: kernel_size must be an odd int in \[1, inf\) or None, got 2"),
    ("ceca", dict(kernel_size=0), r"ceca: kernel_size"),
    ("ceca", dict(kernel_size=41), r"at most 2 \* channels \+ 1"),  # depends on channels: not in the spec
    ("cbam", dict(spatial_kernel_size=6), r"spatial_kernel_size must be an odd int"),
    ("se", dict(rd_ratio=0.0), r"se: rd_ratio must be a float in \(0, 1\]"),
])
def test_bad_hyperparameter_values_name_argument_and_range(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_attn(name, 16, **kwargs)
    if "at most" not in pattern:
        (key, value), = kwargs.items()
        with pytest.raises(ValueError, match=f"{name}: {key} must be .*, got {value!r}"):
            check_kwargs(name, kwargs)


def test_eca_explicit_kernel_size_is_honoured():
    assert create_attn("eca", 256, kernel_size=7).conv.kernel_size == (7,)
    assert create_attn("ceca", 256, kernel_size=1).conv.kernel_size == (1,)
    assert create_attn("eca", 256).conv.kernel_size == (5,)  # timm's adaptive size for C=256


def test_check_kwargs():
    check_kwargs("dsa", {"threshold": 0.0, "reduce": "max", "reweight": False, "keep_ratio": 1.0})
    check_kwargs("se", {"rd_ratio": 0.25})
    check_kwargs("aw_conv", {"mid": 4, "mixing": "channel"})
    check_kwargs("none", {})
    with pytest.raises(UnknownArgumentError, match=r"dsa: unknown hyperparameter 'treshold'; known: .*threshold"):
        check_kwargs("dsa", {"treshold": 0.3})
    with pytest.raises(ValueError, match="unknown hyperparameter 'kernel_size'"):
        check_kwargs("ecam", {"kernel_size": 5})
    with pytest.raises(ValueError, match="valid names"):
        check_kwargs("nope", {})
    with pytest.raises(ValueError, match="device"):
        check_kwargs("sca", {"device": "cpu"})  # not a hyperparameter


def test_hyperparameter_specs_are_well_formed_and_match_constructors():
    assert set(HYPERPARAMETERS) == set(available())
    for name, specs in HYPERPARAMETERS.items():
        for key, spec in specs.items():
            assert spec["type"] in {"float", "int", "choice", "bool"}, (name, key)
            if spec["type"] in ("float", "int"):
                assert {"low", "high", "low_inclusive", "high_inclusive"} <= set(spec)
            if spec["type"] == "choice":
                assert spec["default"] in spec["values"]
            if spec["default"] is not None:
                check_kwargs(name, {key: spec["default"]})
    for name, cls in [("dsa", DSA), ("sca", SCA), ("cpsam", CPSAM), ("aw_conv", AWConv2d)]:
        params = inspect.signature(cls).parameters
        for key, spec in HYPERPARAMETERS[name].items():
            assert params[key].default == spec["default"], (name, key)
    for name in ("se", "ecam", "gc", "cbam", "lcbam", "coord", "scoord", "ela", "strip", "nl"):
        factory = get_attn_class(name).module_cls
        fixed = getattr(factory, "keywords", {})
        params = inspect.signature(getattr(factory, "func", factory)).parameters
        for key, spec in HYPERPARAMETERS[name].items():
            assert key not in fixed and params[key].default == pytest.approx(spec["default"]), (name, key)


# ---------------------------------------------------------------- IdentityBlend (issue 11)

def test_identity_blend_fresh_is_identity_and_gain_stays_in_0_2():
    from nas_attn.modules import IdentityBlend
    blend = IdentityBlend(create_attn("cbam", 16), 16)
    x = torch.rand(2, 16, 5, 5) + 0.1
    assert torch.equal(blend(x), x)
    with torch.no_grad():
        blend.alpha.normal_(0, 20)
    gain = blend(x) / x  # CBAM is a gate x * g, g in (0, 1): the blend's gain is 1 + t (g - 1)
    assert (gain > 0).all() and (gain < 2).all()
    t = torch.tanh(blend.alpha)
    torch.testing.assert_close(blend(x), x + t * (blend.attn(x) - x))
    assert n_params(blend) == n_params(blend.attn) + 16


def test_builder_blends_cbam_in_inverted_residuals_only():
    from nas_attn.arch import build_model
    from nas_attn.modules import BLEND_IN_INVERTED_RESIDUAL, IdentityBlend
    from timm.layers.cbam import CbamModule
    assert "cbam" in BLEND_IN_INVERTED_RESIDUAL
    mobilenet = build_model({"model": "mobilenetv2_035", "model_args": {"num_classes": 3},
                             "blocks": {"blocks.1.0": {"attention": "cbam"}, "blocks.1.1": {"attention": "se"}}})
    assert isinstance(mobilenet.blocks[1][0].se, IdentityBlend)
    assert isinstance(mobilenet.blocks[1][0].se.attn, CbamModule)
    assert not isinstance(mobilenet.blocks[1][1].se, IdentityBlend)
    resnet = build_model({"model": "resnet18", "model_args": {"num_classes": 3},
                          "blocks": {"layer1.0": {"attention": "cbam"}}})
    assert isinstance(resnet.layer1[0].se, CbamModule)
