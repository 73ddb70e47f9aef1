"""SCA and CPSAM take timm's factory keywords (device, dtype) as declared arguments, as timm's own
layers do, and make every parameter and buffer of every submodule with them."""
import inspect

import pytest
import torch
from timm.layers.cbam import CbamModule

from nas_attn.modules import CPSAM, SCA

OURS = [SCA, CPSAM]


def tensors(module):
    return list(module.parameters()) + list(module.buffers())


@pytest.mark.parametrize("cls", OURS)
def test_device_and_dtype_are_declared_keywords_like_timms(cls):
    ours, timms = inspect.signature(cls).parameters, inspect.signature(CbamModule).parameters
    for name in ("device", "dtype"):
        assert ours[name].default is None and ours[name].kind == timms[name].kind
        assert ours[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


@pytest.mark.parametrize("cls", OURS)
def test_meta_device_reaches_every_parameter_and_buffer(cls):
    module = cls(16, device="meta")
    assert len(list(module.parameters())) >= 3
    assert all(t.device.type == "meta" for t in tensors(module))
    out = module(torch.empty(2, 16, 6, 5, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 16, 6, 5)


@pytest.mark.parametrize("cls", OURS)
def test_float64_reaches_every_parameter_and_buffer_and_computes_the_float32_function(cls):
    module = cls(16, dtype=torch.float64)
    floats = [t for t in tensors(module) if t.is_floating_point()]
    assert len(floats) >= 3 and all(t.dtype == torch.float64 for t in floats)
    with torch.no_grad():  # off the zero initialisations (CPSAM's CSA last layer and gamma)
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1)))
    single = cls(16)
    single.load_state_dict(module.state_dict())
    assert all(t.dtype == torch.float32 for t in tensors(single) if t.is_floating_point())
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    module.eval(), single.eval()
    out = module(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, single(x.float()).double(), rtol=1e-4, atol=1e-5)
