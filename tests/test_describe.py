"""validate/describe count on the meta device: the figures must equal real-tensor counts."""
import pytest
import torch
from torch import nn

from nas_attn import describe
from nas_attn.arch import build_model
from nas_attn.cost import measure
from nas_attn.modules import AWConv2d, available, create_attn
from nas_attn.modules.registry import GATES
from nas_attn.space import load


def _figures(cost):
    return (cost.params, cost.macs, cost.elementwise_ops, cost.effective_macs, cost.by_module)


@pytest.mark.parametrize("name", [n for n in available() if n != "none" and n not in GATES])
def test_every_module_counts_the_same_on_meta_and_cpu(name):
    shape = (16, 7, 5)

    def build():
        if name == "aw_conv":
            return nn.Sequential(AWConv2d.from_conv(nn.Conv2d(16, 16, 3, padding=1, bias=False)))
        return nn.Sequential(create_attn(name, 16))

    real = measure(build(), shape)
    model, meta = describe._counted(build, shape)
    assert next(model.parameters(), torch.empty(0, device="meta")).device.type == "meta"
    assert _figures(meta) == _figures(real)


@pytest.mark.parametrize("space_name", ["cluttered_resnet", "digits_mobilenetv2"])
def test_sampled_models_count_the_same_on_meta_and_cpu(space_name):
    space = load(space_name)
    import optuna
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = [space.extreme_arch(False), space.extreme_arch(True)]
    for _ in range(2):
        trial = study.ask()
        archs.append(space.sample(trial))
    for arch in archs:
        real = measure(build_model(arch), space.input_size)
        model, meta = describe._counted(lambda: build_model(arch), space.input_size)
        assert next(model.parameters()).device.type == "meta"
        assert _figures(meta) == _figures(real), arch


def test_module_costs_are_cached_per_shape():
    describe._attn_cost.cache_clear()
    first = describe._attn_cost("se", (("rd_ratio", 0.25),), (32, 8, 8))
    again = describe._attn_cost("se", (("rd_ratio", 0.25),), (32, 8, 8))
    other = describe._attn_cost("se", (("rd_ratio", 0.25),), (64, 8, 8))
    assert again is first and other.params > first.params
    assert describe._attn_cost.cache_info().hits == 1
    assert describe._attn_cost("none", (), (32, 8, 8)) is None


def test_mac_range_matches_real_tensor_counts():
    space = load("cluttered_resnet")
    base, low, high = describe.mac_range(space)
    assert base == measure(build_model(space.baseline()), space.input_size).macs
    assert low < base < high


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_a_gated_model_counts_the_same_whatever_route_its_mask_takes(threshold):
    # Threshold 0 keeps every pixel, which in inference takes the gate's unmasked route; the count
    # must still be the dense masked block's, as on the meta device, where no mask can be read.
    space = load("cluttered_resnet")
    arch = space.extreme_arch(False)
    for choice in arch["blocks"].values():
        choice["gate"] = {"threshold": threshold}
    torch.manual_seed(0)
    real = measure(build_model(arch), space.input_size)
    model, meta = describe._counted(lambda: build_model(arch), space.input_size)
    assert next(model.parameters()).device.type == "meta"
    assert _figures(meta) == _figures(real)
