"""DSA gate on residual branches: semantics, sparse == dense masked, gateability, Arch building."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas_attn.arch import ArchError, build_model, gateable_blocks
from nas_attn.modules.dsa_gate import _DENSE_ALL, _DENSE_MASKED, _DENSE_MASKED_NO_GRAD, _SPARSE
from nas_attn.modules import (
    DSA, DSAGate, HYPERPARAMETERS, available, branch_fractions, check_kwargs, create_attn,
    gate_block, is_gated, set_sparse, why_not_gateable,
)

# (model, block, kwargs for timm.create_model): every gated block class, with and without a
# change of resolution/width, with and without attention in the slot
BLOCKS = [
    ("resnet18", "layer1.0", {}),                    # BasicBlock, identity shortcut
    ("resnet18", "layer2.0", {}),                    # BasicBlock, stride 2 + downsample
    ("resnet50", "layer1.0", {}),                    # Bottleneck, width change (downsample, stride 1)
    ("resnet50", "layer2.0", {}),                    # Bottleneck, stride 2 on conv2
    ("resnet50", "layer2.1", {}),                    # Bottleneck, identity shortcut
    ("mobilenetv2_100", "blocks.2.1", {}),           # InvertedResidual with skip
    ("efficientnet_b0", "blocks.2.1", {}),           # InvertedResidual with SE in the slot, SiLU
    ("efficientnet_b0", "blocks.1.1", {}),           # 3x3 depthwise, SE
    ("efficientnet_b0", "blocks.4.1", {}),           # 5x5 depthwise
]


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a wrong normalisation in the sparse path shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


_MODELS = {}


def _block_and_input(model_name, block_name, batch=2):
    """A copy of one block of a timm model (built once per test session) and a random input
    of the block's shape for a 64x64 image."""
    if model_name not in _MODELS:
        torch.manual_seed(0)
        model = timm.create_model(model_name)
        _randomise_norms(model)
        _MODELS[model_name] = model.eval()
    model = _MODELS[model_name]
    block = model.get_submodule(block_name)
    seen = {}
    handle = block.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].shape))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    handle.remove()
    x = torch.randn(batch, *seen["x"][1:], generator=torch.Generator().manual_seed(2))
    return copy.deepcopy(block).eval(), x


def _sparse_and_dense(block, x):
    """(sparse, dense masked) eval outputs of a gated block on ``x``: the sparse path forced
    whatever the speed rule says, and checked to have run."""
    block.gate.sparse_max_kept = 1.0
    with torch.no_grad():
        sparse = block(x)
        assert block.gate.last_route == _SPARSE
        set_sparse(block, False)
        dense = block(x)
    return sparse, dense


def _assert_equal_to_dense(sparse, dense):
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5 * float(dense.abs().max()))


def _dsa_mask(x, out_hw, **kw):
    """The keep mask by DSA's own rule (the reference the gate must reproduce)."""
    dsa = DSA(x.shape[1], reweight=False, **kw)
    a_fg, informative = dsa.foreground(x)
    if tuple(a_fg.shape[-2:]) != tuple(out_hw):
        a_fg = F.adaptive_avg_pool2d(a_fg, out_hw)
    return dsa.keep_mask(a_fg, informative)


def test_gate_has_no_parameters_and_keeps_state_dict_and_class():
    model = timm.create_model("resnet18")
    keys = list(model.state_dict())
    block = model.layer1[0]
    gate_block(block, threshold=0.3)
    assert isinstance(block, timm.models.resnet.BasicBlock) and is_gated(block)
    assert isinstance(block.gate, DSAGate) and isinstance(block.gate, DSA)
    assert sum(p.numel() for p in block.gate.parameters()) == 0
    assert list(model.state_dict()) == keys  # weights of a plain model load into a gated one
    with pytest.raises(ValueError, match="already has a gate"):
        gate_block(block)


@pytest.mark.parametrize("model_name,block_name,kw", BLOCKS[:2] + BLOCKS[3:4] + BLOCKS[5:6])
def test_gated_block_is_shortcut_plus_masked_branch(model_name, block_name, kw):
    block, x = _block_and_input(model_name, block_name)
    plain = copy.deepcopy(block)
    gate_block(block, threshold=0.4)
    set_sparse(block, False)
    with torch.no_grad():
        y = block(x)
        if hasattr(plain, "downsample"):  # ResNet: act(shortcut + M * branch)
            shortcut = x if plain.downsample is None else plain.downsample(x)
            m = _dsa_mask(x, shortcut.shape[-2:], threshold=0.4).float()
            if hasattr(plain, "conv3"):
                branch = plain.bn3(plain.conv3(plain.act2(plain.bn2(plain.conv2(plain.act1(plain.bn1(plain.conv1(x))))))))
            else:
                branch = plain.bn2(plain.conv2(plain.act1(plain.bn1(plain.conv1(x)))))
            expected = F.relu(shortcut + m * branch)
        else:  # InvertedResidual: x + M * branch
            m = _dsa_mask(x, x.shape[-2:], threshold=0.4).float()
            expected = x + m * (plain(x) - x)
    assert 0.0 < m.mean() < 1.0
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert block.gate.kept_fraction == pytest.approx(float(m.mean()))


def test_pruned_pixels_pass_the_shortcut_unchanged():
    block, x = _block_and_input("mobilenetv2_100", "blocks.2.1")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.25)
    for sparse in (False, True):
        set_sparse(block, sparse)
        with torch.no_grad():
            y = block(x)
        pruned = ~block.gate.last_mask.expand_as(x)
        assert pruned.float().mean() == pytest.approx(0.75, abs=0.02)
        assert torch.equal(y[pruned], x[pruned])
        assert not torch.allclose(y[~pruned], x[~pruned])


@pytest.mark.parametrize("model_name,block_name,kw", [BLOCKS[1], BLOCKS[3], BLOCKS[6]])
def test_threshold_zero_is_the_plain_block(model_name, block_name, kw):
    block, x = _block_and_input(model_name, block_name)
    plain = copy.deepcopy(block)
    gate_block(block, threshold=0.0)
    with torch.no_grad():
        expected = plain(x)
        for sparse in (False, True):
            set_sparse(block, sparse)
            torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
            assert block.gate.kept_fraction == 1.0


def test_flat_input_keeps_every_pixel():
    block, x = _block_and_input("resnet18", "layer1.0")
    gate_block(block, threshold=0.9)
    with torch.no_grad():
        block(torch.full_like(x, 0.7))
    assert block.gate.kept_fraction == 1.0


# batch 1 too: the sparse path indexes one image's cached neighbour table directly there, and
# offsets it per image at larger batches
@pytest.mark.parametrize("channels_last,batch", [(False, 2), (True, 2), (True, 1)])
@pytest.mark.parametrize("model_name,block_name,kw", BLOCKS)
def test_sparse_equals_dense_masked(model_name, block_name, kw, channels_last, batch):
    block, x = _block_and_input(model_name, block_name, batch)
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    block.gate.sparse_max_kept = 1.0  # the sparse path whatever the speed rule says of this small map
    assert block._sparse_supported()
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        set_sparse(block, False)
        dense = block(x)
        set_sparse(block, True)
        sparse = block(x)
        assert block.gate.last_route == _SPARSE
    assert block.gate.kept_fraction == pytest.approx(0.3, abs=0.05)
    scale = dense.abs().max()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5 * float(scale))
    assert sparse.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("attention", ["cbam", "dsa", "sca"])
def test_sparse_equals_dense_with_attention_in_the_slot(attention):
    block, x = _block_and_input("resnet18", "layer1.0")
    block.se = create_attn(attention, block.bn2.num_features).eval()
    gate_block(block, threshold=0.5)
    _assert_equal_to_dense(*_sparse_and_dense(block, x))


def test_sparse_path_skips_the_branch_convs_and_computes_only_needed_pixels():
    """In eval the branch convs never run densely; the matrix products cover exactly the pixels
    branch_fractions charges for (the effective MACs the cost model counts)."""
    block, x = _block_and_input("resnet50", "layer2.0")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    block.gate.sparse_max_kept = 1.0
    called = []
    for name in ("conv1", "conv2", "conv3"):
        getattr(block, name).register_forward_pre_hook(lambda m, a, name=name: called.append(name))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = block(x)
    assert called == [] and y.shape == (2, 512, x.shape[-2] // 2, x.shape[-1] // 2)
    fractions = branch_fractions(block)
    b, _, h, w = x.shape
    expected = 0
    for name, hw in (("conv1", h * w), ("conv2", y.shape[-2] * y.shape[-1]), ("conv3", y.shape[-2] * y.shape[-1])):
        conv = getattr(block, name)
        per_pixel = conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected += round(fractions[name] * b * hw) * per_pixel
    downsample = block.downsample[0]
    expected += b * y.shape[-2] * y.shape[-1] * downsample.in_channels * downsample.out_channels  # dense shortcut
    assert counter.get_total_flops() == 2 * expected
    assert fractions["conv2"] == pytest.approx(0.3, abs=0.05) and fractions["conv1"] > fractions["conv2"]
    # the same block with the gate off runs its convs densely
    block.train()
    called.clear()
    block(x)
    assert called == ["conv1", "conv2", "conv3"]


def test_training_runs_dense_masked_and_gradients_flow():
    block, x = _block_and_input("resnet18", "layer1.0")
    gate_block(block, threshold=0.5)
    block.train()
    y = block(x.requires_grad_())
    y.sum().backward()
    assert block.conv1.weight.grad is not None and block.conv1.weight.grad.abs().sum() > 0
    # eval with gradients enabled also stays dense and masked (the sparse path is inference only)
    block.eval()
    mask = block.gate(x, [x.shape[-2], x.shape[-1]])
    assert block._route(mask) == block.DENSE_MASKED


def test_branch_fractions_follow_receptive_fields_by_hand():
    """One kept pixel in the middle of 6x6: conv2 computes 1 pixel, conv1 the 3x3 around it."""
    block, _ = _block_and_input("resnet18", "layer1.0")
    gate_block(block)
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 2, 3] = True
    assert branch_fractions(block, mask) == {"conv1": 9 / 36, "conv2": 1 / 36}
    mask[0, 0, 0, 0] = True  # a corner pixel reads only 2x2 inside the image
    assert branch_fractions(block, mask) == {"conv1": 13 / 36, "conv2": 2 / 36}
    # Bottleneck with stride 2 on conv2: output (1, 1) reads input rows/cols 1..3 of 8x8
    block, x = _block_and_input("resnet50", "layer2.0")
    gate_block(block)
    with torch.no_grad():
        block(x[:1, :, :8, :8])
    assert block.gate.last_in_size == (8, 8)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    assert branch_fractions(block, mask) == {"conv1": 9 / 64, "conv2": 1 / 16, "conv3": 1 / 16}


def test_blocks_without_skip_are_not_gateable():
    model = timm.create_model("mobilenetv2_100")
    reasons = gateable_blocks(model)
    assert "skip connection" in reasons["blocks.1.0"]            # 16 -> 24, stride 2
    assert reasons["blocks.1.1"] is None
    assert "not gateable" in reasons["blocks.0.0"]               # DepthwiseSeparableConv
    assert why_not_gateable(nn.Conv2d(3, 3, 1)) is not None
    with pytest.raises(ValueError, match="skip connection"):
        gate_block(model.blocks[1][0])
    assert all(r is None for r in gateable_blocks(timm.create_model("resnet18")).values())


def _arch(model, blocks, **model_args):
    return {"model": model, "model_args": {"num_classes": 10, **model_args}, "stem": "default",
            "blocks": blocks}


def test_arch_builds_gates_beside_attention_and_aw_conv():
    gate = {"threshold": 0.3}
    arch = _arch("resnet18", {"layer1.0": {"attention": "se", "attention_kwargs": {}, "aw_conv": None, "gate": gate},
                              "layer2.0": {"attention": "dsa", "attention_kwargs": {}, "aw_conv": {}, "gate": gate},
                              "layer3.0": {"attention": "none", "attention_kwargs": {}, "aw_conv": None, "gate": None}})
    model = build_model(arch)
    assert is_gated(model.layer1[0]) and is_gated(model.layer2[0]) and not is_gated(model.layer3[0])
    assert model.layer1[0].gate.threshold == 0.3 and model.layer1[0].se is not None
    plain = build_model(_arch("resnet18", {"layer2.0": {"attention": "dsa", "aw_conv": {}}, "layer1.0": {"attention": "se"}}))
    assert list(model.state_dict()) == list(plain.state_dict())
    # AW-conv has per-sample weights: the block falls back to the dense masked path
    assert not model.layer2[0]._sparse_supported() and model.layer1[0]._sparse_supported()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    same = timm.create_model("nas_attn_cnn", arch=arch)
    assert is_gated(same.layer1[0])


def test_arch_rejects_a_gate_on_a_block_without_skip_and_bad_values():
    with pytest.raises(ArchError, match=r"blocks\.1\.0 cannot take a DSA gate.*skip"):
        build_model(_arch("mobilenetv2_100", {"blocks.1.0": {"attention": "none", "gate": {}}}))
    with pytest.raises(ArchError, match="threshold must be a float in"):
        build_model(_arch("resnet18", {"layer1.0": {"gate": {"threshold": 1.0}}}))
    with pytest.raises(ArchError, match="keep_ratio"):
        build_model(_arch("resnet18", {"layer1.0": {"gate": {"prune_mode": "keep_ratio", "keep_ratio": 0.0}}}))
    with pytest.raises(ArchError, match="reweight"):
        build_model(_arch("resnet18", {"layer1.0": {"gate": {"reweight": True}}}))
    with pytest.raises(ArchError, match="must be a dict"):
        build_model(_arch("resnet18", {"layer1.0": {"gate": True}}))


def test_registry_lists_the_gate_with_its_hyperparameters():
    assert available("gate") == ["dsa_gate"] and "dsa_gate" in available()
    assert "dsa_gate" not in available("attention")
    assert set(HYPERPARAMETERS["dsa_gate"]) == {"threshold", "reduce", "prune_mode", "keep_ratio", "eps", "sparse"}
    check_kwargs("dsa_gate", {"threshold": 0.0, "keep_ratio": 1.0})
    for bad in ({"threshold": 1.0}, {"threshold": -0.1}, {"keep_ratio": 0.0}, {"keep_ratio": 1.5}):
        with pytest.raises(ValueError):
            check_kwargs("dsa_gate", bad)
    with pytest.raises(ValueError, match="'gate' key"):
        create_attn("dsa_gate", 64)


def test_set_sparse_counts_gates():
    model = build_model(_arch("resnet18", {f"layer{i}.{j}": {"gate": {}} for i in range(1, 5) for j in range(2)}))
    assert set_sparse(model, False) == 8
    assert all(not m.sparse for m in model.modules() if isinstance(m, DSAGate))
    assert math.isclose(sum(p.numel() for p in model.parameters()),
                        sum(p.numel() for p in timm.create_model("resnet18", num_classes=10).parameters()))


# ----------------------------------------------------------------------------- effective MACs

def _conv_macs(conv, pixels):
    return pixels * conv.in_channels // conv.groups * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]


def test_effective_macs_follow_the_gate_by_hand():
    """One salient pixel of 6x6 kept: conv2 is charged 1 pixel, conv1 the 3x3 around it."""
    from nas_attn.cost import measure
    block, _ = _block_and_input("resnet18", "layer1.0")
    gate_block(block, threshold=0.5)
    x = torch.zeros(2, 64, 6, 6)
    x[:, :, 2, 3] = 1.0  # the only pixel with a_fg >= 0.5
    cost = measure(block, data=x)
    dense = 2 * _conv_macs(block.conv1, 36)
    assert cost.macs == dense
    assert cost.dsa_kept == {"gate": pytest.approx(1 / 36)}
    assert cost.gated == {"conv1": 9 / 36, "conv2": 1 / 36}
    assert cost.effective_macs == pytest.approx(_conv_macs(block.conv1, 9) + _conv_macs(block.conv2, 1))
    assert block.gate.sparse  # measuring does not leave the gate switched to dense


def test_effective_macs_of_a_strided_bottleneck_keep_the_shortcut_dense():
    from nas_attn.cost import measure
    block, _ = _block_and_input("resnet50", "layer2.0")
    gate_block(block, threshold=0.5)
    x = torch.zeros(1, 256, 8, 8)
    x[:, :, 2:4, 2:4] = 1.0  # pooled to the 4x4 output grid: output pixel (1, 1) only
    cost = measure(block, data=x)
    assert cost.gated == {"conv1": 9 / 64, "conv2": 1 / 16, "conv3": 1 / 16}
    expected = (_conv_macs(block.conv1, 9) + _conv_macs(block.conv2, 1) + _conv_macs(block.conv3, 1)
                + _conv_macs(block.downsample[0], 16))
    assert cost.effective_macs == pytest.approx(expected)


@pytest.mark.parametrize("model_name,block_name", [("resnet50", "layer2.1"), ("mobilenetv2_100", "blocks.2.1")])
def test_threshold_zero_costs_exactly_the_dense_block(model_name, block_name):
    from nas_attn.cost import measure
    block, x = _block_and_input(model_name, block_name)
    plain = measure(copy.deepcopy(block), data=x)
    gate_block(block, threshold=0.0)
    cost = measure(block, data=x)
    assert cost.macs == plain.macs and cost.effective_macs == plain.macs
    assert set(cost.gated.values()) == {1.0}


def test_effective_macs_match_the_sparse_path_in_a_whole_model():
    """Over a whole gated resnet18 the effective MACs equal the MACs the sparse path runs
    (FlopCounterMode / 2), stem, shortcuts and classifier included."""
    from nas_attn.cost import measure
    blocks = {f"layer{i}.{j}": {"gate": {"prune_mode": "keep_ratio", "keep_ratio": 0.4}}
              for i in range(1, 5) for j in range(2)}
    model = build_model(_arch("resnet18", blocks)).eval()
    for gate in (m for m in model.modules() if isinstance(m, DSAGate)):
        gate.sparse_max_kept = 1.0  # every block sparse (the speed rule would keep 0.4 dense)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cost = measure(model, data=x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() == pytest.approx(2 * cost.effective_macs, rel=1e-9)
    assert cost.effective_macs < 0.8 * cost.macs


# ----------------------------------------------------------------------------- search spaces

GATE_SPACE = """\
name: gated
model: {name: resnet18, args: {num_classes: 10, in_chans: 1}}
data: {dataset: digits, image_size: 32}
blocks:
  "layer[12].*":
    attention: {choices: [none, se]}
    gate:
      choices: [false, true]
      threshold: {float: [0.0, 0.8]}
      reduce: {choices: [mean, max]}
search: {trials: 4, concurrent: 1, sampler: random, seed: 3}
"""


def test_space_gate_is_conditional_and_reaches_the_arch():
    import optuna
    from nas_attn.space import loads
    space = loads(GATE_SPACE)
    assert space.structure_count() == (2 * 2) ** 4
    assert space.baseline_params()["layer1.0.gate"] is False
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    gated = plain = 0
    for _ in range(12):
        trial = study.ask()
        arch = space.sample(trial)
        for block, choice in arch["blocks"].items():
            if choice["gate"] is None:
                plain += 1
                assert f"{block}.gate.threshold" not in trial.params
            else:
                gated += 1
                assert 0.0 <= choice["gate"]["threshold"] <= 0.8 and choice["gate"]["reduce"] in ("mean", "max")
                assert trial.params[f"{block}.gate.threshold"] == choice["gate"]["threshold"]
        study.tell(trial, 0.0)
    assert gated and plain
    build_model(arch)
    assert all(c.get("gate") is None for c in space.baseline()["blocks"].values())


GATE_ERRORS = {
    "threshold_one": (GATE_SPACE.replace("float: [0.0, 0.8]", "float: [0.0, 1.0]"), 9,
                      'blocks."layer[12].*".gate.threshold', "threshold must be a float in [0, 1)"),
    "keep_ratio_zero": (GATE_SPACE.replace("threshold: {float: [0.0, 0.8]}", "keep_ratio: {float: [0.0, 0.5]}"), 9,
                        'blocks."layer[12].*".gate.keep_ratio', "keep_ratio must be a float in (0, 1]"),
    "keep_ratio_above_one": (GATE_SPACE.replace("threshold: {float: [0.0, 0.8]}", "keep_ratio: 1.2"), 9,
                             'blocks."layer[12].*".gate.keep_ratio', "keep_ratio must be a float in (0, 1]"),
    "unknown_hyperparameter": (GATE_SPACE.replace("threshold: {float", "treshold: {float"), 9,
                               'blocks."layer[12].*".gate.treshold', "did you mean 'threshold'"),
    "not_a_switch": (GATE_SPACE.split("    gate:")[0] + "    gate: 3\n", 7,
                     'blocks."layer[12].*".gate', "expected true, false"),
    "ungateable_block": (GATE_SPACE.replace("resnet18", "mobilenetv2_100").replace('"layer[12].*"', '"blocks.[12].*"'), 7,
                         'blocks."blocks.[12].*".gate', "blocks.1.0 cannot take a DSA gate"),
}


@pytest.mark.parametrize("case", sorted(GATE_ERRORS))
def test_bad_gate_in_a_space_names_file_line_key_and_exits_2(tmp_path, case, capsys):
    from nas_attn.cli import main
    from nas_attn.space import SpaceError, load
    text, line, key_path, words = GATE_ERRORS[case]
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load(path)
    assert (info.value.file, info.value.line, info.value.key_path) == (str(path), line, key_path), str(info.value)
    assert words in str(info.value)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}" in err and "Traceback" not in err


def test_digits_space_with_gates_finds_trials_cheaper_than_the_baseline():
    """Target of issue 9: on digits_resnet a space with gates yields trials whose effective MACs
    (measured on validation images, as trials measure them) are below the baseline's."""
    import optuna
    from nas_attn.cost import measure
    from nas_attn.data import load as load_data
    from nas_attn.space import load, loads
    import yaml
    doc = yaml.safe_load(load("digits_resnet").to_yaml())
    doc["blocks"]["layer[12].*"]["gate"] = {"choices": [False, True], "threshold": {"float": [0.3, 0.8]}}
    space = loads(yaml.safe_dump(doc))
    data = load_data("digits", image_size=space.data["image_size"], val_fraction=space.data["val_fraction"], seed=0)
    probe = data.sample_batch(32, split="val")
    size = space.input_size
    baseline = measure(build_model(space.baseline()), size, data=probe).effective_macs
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    cheaper = 0
    for _ in range(4):
        trial = study.ask()
        arch = space.sample(trial)
        arch["blocks"] = {b: {**c, "attention": "none", "attention_kwargs": {}, "aw_conv": None}
                          for b, c in arch["blocks"].items()}  # isolate the gates' effect
        if all(c.get("gate") is None for c in arch["blocks"].values()):
            continue
        torch.manual_seed(0)
        cost = measure(build_model(arch), size, data=probe)
        assert cost.macs == pytest.approx(baseline, rel=1e-6)  # gates add no MACs
        cheaper += cost.effective_macs < baseline
        study.tell(trial, 0.0)
    assert cheaper >= 1


def test_nearly_full_masks_run_dense():
    block, x = _block_and_input("resnet18", "layer1.0")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.95)
    called = []
    block.conv1.register_forward_pre_hook(lambda m, a: called.append(1))
    with torch.no_grad():
        block(x)
    assert called == [1]  # above sparse_max_kept (0.9): the dense masked path
    block.gate.sparse_max_kept = 1.0
    with torch.no_grad():
        block(x)
    assert called == [1]


# ----------------------------------------------------------------------------- export

def test_gated_model_exports_and_loads_in_plain_timm(tmp_path):
    """The folder export() writes (save_for_hf with the Arch) rebuilds with gates through plain
    timm.create_model('local-dir:...'); the model card states the measured kept fraction."""
    from timm.models import save_for_hf
    from nas_attn.arch import carried_pretrained_cfg
    from nas_attn.export import gate_figures, model_card
    from nas_attn.space import loads
    space = loads(GATE_SPACE)
    blocks = {b: {"attention": "none", "attention_kwargs": {}, "aw_conv": None, "gate": {"threshold": 0.5}}
              for b in ("layer1.0", "layer1.1", "layer2.1")}
    arch = _arch("resnet18", blocks, in_chans=1)
    model = build_model(arch).eval()
    model.pretrained_cfg = carried_pretrained_cfg(model.pretrained_cfg)
    save_for_hf(model, str(tmp_path / "m"), model_args={"arch": arch}, safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    assert is_gated(loaded.layer1[0]) and is_gated(loaded.layer2[1]) and not is_gated(loaded.layer2[0])
    assert loaded.layer1[0].gate.threshold == 0.5 and loaded.layer1[0].gate.sparse
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    gates = gate_figures(loaded, space, images=8, repeats=1)
    assert set(gates["kept"]) == {"layer1.0.gate", "layer1.1.gate", "layer2.1.gate"}
    assert 0.0 < gates["mean_kept"] <= 1.0 and gates["sparse_ms"] > 0 and gates["dense_ms"] > 0
    record = {"number": 3, "arch": arch, "metrics": {"accuracy": 0.9, "macs": 1, "effective_macs": 1,
                                                      "params": 1, "elementwise_ops": 1, "latency_ms": 1.0, "epoch": 1}}
    card = model_card(record, tmp_path, "gated", gates)
    assert f"mean kept fraction {gates['mean_kept']:.3f}" in card and "set_sparse(model, False)" in card
    assert '| layer1.0 | none {} | no | yes {"threshold": 0.5} |' in card
    assert gate_figures(build_model(_arch("resnet18", {}, in_chans=1)), space) is None


# ----------------------------------------------------------------------------- inference routes
# In eval under no_grad a gated block picks one of three routes from its mask's kept count:
# sparse (at most sparse_max_kept kept), dense masked in place (more), or the plain block with
# no mask at all (every pixel kept). All must give the dense masked output.


ROUTE_BLOCKS = [BLOCKS[0], BLOCKS[3], BLOCKS[5], BLOCKS[6]]  # identity shortcut, downsample, IR, IR with SE


def _masked_reference(block, x):
    """The block's output through the autograd-safe dense masked route (eval, grad enabled)."""
    with torch.enable_grad():
        assert block._route(block.gate(x, block.gate.last_mask.shape[-2:])) == _DENSE_MASKED
        return block(x).detach()


@pytest.mark.parametrize("model_name,block_name,kw", ROUTE_BLOCKS)
@pytest.mark.parametrize("rule", [{"threshold": 0.0}, {"prune_mode": "keep_ratio", "keep_ratio": 1.0}])
def test_full_mask_runs_the_plain_block(model_name, block_name, kw, rule):
    """A mask keeping every pixel runs the plain timm block: bit for bit its output, without
    multiplying by the mask; the masked and the forced sparse routes agree with it."""
    block, x = _block_and_input(model_name, block_name)
    plain = copy.deepcopy(block)
    gate_block(block, **rule)
    x_before = x.clone()
    with torch.no_grad():
        expected = plain(x)
        y = block(x)
        assert block._route(block.gate.last_mask) == _DENSE_ALL
        assert block.gate.kept_fraction == 1.0
        assert torch.equal(y, expected)
        block.gate.sparse_max_kept = 1.0  # forced sparse: gathers every pixel
        assert block._route(block.gate(x, list(y.shape[-2:]))) == _SPARSE
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.testing.assert_close(_masked_reference(block, x), expected, rtol=0, atol=0)
    assert torch.equal(x, x_before)  # the in-place residual add never writes into the input


@pytest.mark.parametrize("model_name,block_name,kw", ROUTE_BLOCKS)
def test_dense_fallback_in_place_equals_dense_masked_and_sparse(model_name, block_name, kw):
    """A mask above sparse_max_kept runs dense, masked in place: the same output as the
    autograd-safe masked route (exactly) and as the sparse path (1e-5), input untouched."""
    block, x = _block_and_input(model_name, block_name)
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.95)
    x_before = x.clone()
    with torch.no_grad():
        y = block(x)
        assert block._route(block.gate.last_mask) == _DENSE_MASKED_NO_GRAD
        assert 0.9 < block.gate.kept_fraction < 1.0
        block.gate.sparse_max_kept = 1.0
        sparse = block(x)
    assert torch.equal(y, _masked_reference(block, x))
    torch.testing.assert_close(sparse, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    assert torch.equal(x, x_before)
    # pruned pixels still pass the shortcut unchanged (InvertedResidual: y = x there)
    if block_name.startswith("blocks"):
        pruned = ~block.gate.last_mask.expand_as(x)
        assert pruned.any() and torch.equal(y[pruned], x[pruned])


def test_route_follows_the_kept_count_and_the_mode():
    block, x = _block_and_input("resnet18", "layer1.0")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.5)
    with torch.no_grad():
        mask = block.gate(x, list(x.shape[-2:]))
        kept = block.gate.kept_pixels()
        assert kept == int(mask.sum()) and block.gate.kept_fraction == pytest.approx(kept / mask.numel())
        for max_kept, route in ((0.9, _SPARSE), (kept / mask.numel(), _SPARSE), (0.4, _DENSE_MASKED_NO_GRAD)):
            block.gate.sparse_max_kept = max_kept
            assert block._route(mask) == route, max_kept
        block.gate.sparse_max_kept = 0.9
        set_sparse(block, False)
        assert block._route(mask) == _DENSE_MASKED_NO_GRAD
        set_sparse(block, True)
        block.train()
        assert block._route(mask) == _DENSE_MASKED  # training: no host sync, autograd-safe ops
    block.eval()
    assert block._route(mask) == _DENSE_MASKED  # grad enabled


@pytest.mark.parametrize("rule", [{"threshold": 0.0}, {"threshold": 0.45}, {"reduce": "max", "threshold": 0.3},
                                  {"reduce": "mean_max", "prune_mode": "keep_ratio", "keep_ratio": 0.3}])
def test_gate_mask_is_dsas_rule_exactly(rule):
    """The gate's lean no-grad foreground gives DSA's mask bit for bit: informative and flat
    samples, a pooled output grid, an infinite saliency value; with and without autograd."""
    x = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=torch.channels_last)
    x[1] = 0.25  # flat sample: every pixel kept
    x[2, :, 3, 3] = float("inf")
    x[3] *= 1e-8  # span below eps: flat too
    gate = DSAGate(16, **rule)
    for out_hw in ([8, 8], [4, 4], [3, 3]):
        expected = _dsa_mask(x, out_hw, **rule)
        with torch.no_grad():
            assert torch.equal(gate(x, out_hw), expected), out_hw
        assert torch.equal(gate(x, out_hw), expected), out_hw  # grad enabled: DSA's own foreground
        assert gate.kept_fraction == pytest.approx(float(expected.float().mean()))
        assert expected[1].all() and expected[3].all()
        # batch 1 takes its own path (flatness read on the host, the count from the rule)
        for i in range(x.shape[0]):
            with torch.no_grad():
                assert torch.equal(gate(x[i:i + 1], out_hw), expected[i:i + 1]), (out_hw, i)
            assert gate.kept_pixels() == int(expected[i].sum()), (out_hw, i)


# ----------------------------------------------------------------------------- sparse speed rule

def test_speed_rule_follows_each_block_kinds_crossover_and_size_floor():
    """Left to the gate (sparse_max_kept None), a block runs sparse at most at its kind's
    measured crossover, and an inverted residual only on maps large enough to repay the sparse
    path's fixed cost; a float sparse_max_kept overrides both."""
    for model_name, block_name in (("resnet18", "layer1.0"), ("resnet50", "layer2.1"), ("mobilenetv2_100", "blocks.2.1")):
        block, x = _block_and_input(model_name, block_name)
        gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
        assert block.gate.sparse_max_kept is None
        crossover, floor = block.SPARSE_CROSSOVER, block.SPARSE_MIN_ELEMENTS
        assert 0.3 <= crossover < 0.9
        big = max(10_000, floor // block._branch_width() + 1)  # output pixels, batch included
        assert block.sparse_pays(int(crossover * big), big)
        assert not block.sparse_pays(int(crossover * big) + 1, big)
        if floor:  # a small map stays dense even when it keeps few pixels
            small = floor // block._branch_width() - 1
            assert not block.sparse_pays(1, small)
        block.gate.sparse_max_kept = 1.0
        assert block.sparse_pays(big, big)
        block.gate.sparse_max_kept = 0.0
        assert not block.sparse_pays(1, big)
    # and through a forward: keep 0.7 runs dense (it would be slower sparse), keep 0.2 sparse
    block, x = _block_and_input("resnet50", "layer2.1")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.7)
    with torch.no_grad():
        block(x)
        assert block.gate.last_route == _DENSE_MASKED_NO_GRAD
        block.gate.keep_ratio = 0.2
        block(x)
        assert block.gate.last_route == _SPARSE


def test_folded_weights_follow_in_place_changes():
    """The sparse path folds BatchNorm into the conv weights once and caches the fold; any change
    of a weight or running statistic (in place, load_state_dict) must be seen by the next forward."""
    block, x = _block_and_input("resnet50", "layer2.1")
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    block.gate.sparse_max_kept = 1.0
    with torch.no_grad():
        first = block(x)
        block.bn2.running_var.mul_(3.0)
        block.conv3.weight.mul_(-0.5)
        second = block(x)
        set_sparse(block, False)
        dense = block(x)
        state = copy.deepcopy(block.state_dict())
        state["bn1.running_mean"] += 1.0
        block.load_state_dict(state)
        dense_loaded = block(x)
        set_sparse(block, True)
        sparse_loaded = block(x)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, dense, rtol=1e-5, atol=1e-5 * float(dense.abs().max()))
    torch.testing.assert_close(sparse_loaded, dense_loaded, rtol=1e-5, atol=1e-5 * float(dense_loaded.abs().max()))


@pytest.mark.parametrize("act_layer", ["silu", "gelu"])
def test_sparse_equals_dense_with_a_non_idempotent_last_activation(act_layer):
    """ReLU after the residual add is applied to the whole map after the kept rows had it (safe:
    relu(relu(v)) = relu(v)); other activations take the path that applies it once."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50", act_layer=act_layer)
    _randomise_norms(model)
    block = model.layer2[1].eval()
    x = torch.randn(2, 512, 8, 8, generator=torch.Generator().manual_seed(2))
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    _assert_equal_to_dense(*_sparse_and_dense(block, x))


@pytest.mark.parametrize("model_name,block_name,kw", BLOCKS)
def test_sparse_path_in_many_chunks_equals_dense_masked(model_name, block_name, kw, monkeypatch):
    """The sparse path works through its pixels in chunks; the small maps of the other tests fit
    in one, so here chunks of 7 rows make every chunk loop (first conv, last conv with the
    shortcut, depthwise) run many times, mostly with a short last chunk."""
    import nas_attn.modules.dsa_gate as dsa_gate
    monkeypatch.setattr(dsa_gate, "_MIN_CHUNK_ROWS", 7)
    monkeypatch.setattr(dsa_gate, "_CHUNK_BYTES", 1)
    assert dsa_gate._chunk_rows(64) == 7
    block, x = _block_and_input(model_name, block_name)
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    sparse, dense = _sparse_and_dense(block, x)
    assert block.gate.kept_pixels() > 7  # two chunks at least (the same mask in both forwards)
    _assert_equal_to_dense(sparse, dense)


@pytest.mark.parametrize("model_name,block_name,kw", [b for b in BLOCKS if b[1].startswith("blocks.")])
@pytest.mark.parametrize("gather_all", [True, False])
def test_depthwise_gathers_all_taps_or_one_at_a_time_alike(model_name, block_name, kw, gather_all, monkeypatch):
    """The sparse depthwise conv gathers a small chunk's taps all at once and a large chunk's one
    tap at a time (_DEPTHWISE_GATHER_ALL_FLOATS); both must equal the dense masked block. Chunks
    of 7 rows, so a short last chunk follows its full ones."""
    import nas_attn.modules.dsa_gate as dsa_gate
    monkeypatch.setattr(dsa_gate, "_MIN_CHUNK_ROWS", 7)
    monkeypatch.setattr(dsa_gate, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(dsa_gate, "_DEPTHWISE_GATHER_ALL_FLOATS", 1 << 30 if gather_all else 0)
    taps_seen = []
    real = dsa_gate._depthwise
    monkeypatch.setattr(dsa_gate, "_depthwise", lambda table, index, taps, bias, buffer, out: (
        taps_seen.append(buffer.shape[0] >= index.numel()), real(table, index, taps, bias, buffer, out))[1])
    block, x = _block_and_input(model_name, block_name)
    gate_block(block, prune_mode="keep_ratio", keep_ratio=0.3)
    sparse, dense = _sparse_and_dense(block, x)
    assert len(taps_seen) >= 2 and set(taps_seen) == {gather_all}
    _assert_equal_to_dense(sparse, dense)


def test_gated_model_runs_on_the_meta_device_at_batch_1():
    """Shape-only forwards (the meta device, as nas_attn.describe uses) must not read values on
    the host: the batch-1 mask path reads its flatness test there, so it must step aside."""
    model = timm.create_model("resnet18").eval()
    gate_block(model.layer1[0], prune_mode="keep_ratio", keep_ratio=0.3)
    gate_block(model.layer1[1], threshold=0.3)
    model = model.to("meta")
    with torch.no_grad():
        for batch in (1, 2):
            assert model(torch.empty(batch, 3, 64, 64, device="meta")).shape == (batch, 1000)
