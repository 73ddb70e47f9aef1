"""Every attention module scripts (TorchScript) with the eager outputs, and exports to ONNX.

Module-level companions of tests/test_timm_contract.py: each registry module and AW-conv
variant through torch.jit.script, the BatchNorm our modules use against torch's, and the
sliced adaptive pooling that lets ONNX take pooling to sizes that do not divide the input.
"""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from timm.layers import set_scriptable
from torch import nn

from nas_attn.modules import AWConv2d, available, create_attn
from nas_attn.modules._common import BatchNorm2dAnySize
from nas_attn.modules._pool import adaptive_avg_pool2d, adaptive_bins, adaptive_max_pool2d, sliced_adaptive_pool2d

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def enliven(module, seed=0):
    """Off the zero initialisations (AW-conv's last layer, CPSAM's CSA last layer and gamma), as training does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return module


def scripted_matches_eager(module, x):
    with set_scriptable(True):
        scripted = torch.jit.script(module)
    for train in (False, True):
        module.train(train), scripted.train(train)
        torch.testing.assert_close(scripted(x), module(x), rtol=1e-5, atol=1e-5)


ATTENTION = [name for name in available("attention") if name != "none"]


@pytest.mark.parametrize("name", ATTENTION)
def test_every_attention_module_scripts_with_the_eager_outputs(name):
    module = enliven(create_attn(name, 16))
    scripted_matches_eager(module, randn(2, 16, 7, 5))


@pytest.mark.parametrize("kwargs", [
    {"prune_mode": "keep_ratio", "keep_ratio": 0.3, "reduce": "max"},
    {"threshold": 0.0, "reweight": False, "reduce": "mean_max"},
])
def test_dsa_variants_script(kwargs):
    scripted_matches_eager(create_attn("dsa", 8, **kwargs), randn(3, 8, 6, 6))


@pytest.mark.parametrize("conv", [
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1, groups=8, mixing="channel"),
    dict(in_channels=8, out_channels=4, kernel_size=(3, 1), padding="same", bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect", dilation=1, mid=2),
])
def test_aw_conv_variants_script(conv):
    module = enliven(AWConv2d(**conv))
    scripted_matches_eager(module, randn(3, conv["in_channels"], 9, 7))
    with set_scriptable(True):
        scripted = torch.jit.script(module)
    unbatched = randn(conv["in_channels"], 5, 5)
    torch.testing.assert_close(scripted(unbatched), module(unbatched), rtol=1e-5, atol=1e-5)


def test_aw_conv_chunked_batch_scripts():
    module = enliven(AWConv2d(8, 8, 3, padding=1))
    module.cpu_chunk_bytes = 1  # one sample a chunk: the split-and-concatenate path
    scripted_matches_eager(module, randn(3, 8, 6, 6))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_any_size_batchnorm_is_torch_batchnorm_on_ordinary_inputs(momentum):
    ours, torchs = BatchNorm2dAnySize(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum)
    with set_scriptable(True):
        scripted = torch.jit.script(BatchNorm2dAnySize(4, momentum=momentum))
    for step in range(3):
        x = randn(2, 4, 3, 3, seed=step) * (step + 1)
        expected = torchs(x)
        torch.testing.assert_close(ours(x), expected)
        torch.testing.assert_close(scripted(x), expected)
    for bn in (ours, scripted):
        torch.testing.assert_close(bn.running_mean, torchs.running_mean)
        torch.testing.assert_close(bn.running_var, torchs.running_var)
        assert int(bn.num_batches_tracked) == int(torchs.num_batches_tracked) == 3
        bn.eval()
    torchs.eval()
    x = randn(2, 4, 3, 3, seed=9)
    torch.testing.assert_close(ours(x), torchs(x))
    torch.testing.assert_close(scripted(x), torchs(x))
    ours.train()
    single = randn(1, 4, 1, 1)  # one value a channel: running statistics, left untouched
    before = ours.running_mean.clone()
    torch.testing.assert_close(ours(single), F.batch_norm(single, before, ours.running_var, ours.weight, ours.bias,
                                                          False, 0.0, ours.eps))
    torch.testing.assert_close(ours.running_mean, before)


def test_adaptive_bins_are_torchs():
    # torch's rule, written out: cell i pools [floor(i*n/s), ceil((i+1)*n/s))
    assert adaptive_bins(7, 4) == [(0, 2), (1, 4), (3, 6), (5, 7)]
    assert adaptive_bins(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert adaptive_bins(9, 3) == [(0, 3), (3, 6), (6, 9)]


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 5), (7, 7), (9, 6), (14, 13), (28, 28)])
@pytest.mark.parametrize("out", [(1, 1), (3, 3), (4, 4), (4, 2)])
def test_sliced_pooling_gives_torchs_adaptive_pooling(size, out):
    x = randn(2, 3, *size) * 5
    torch.testing.assert_close(sliced_adaptive_pool2d(x, out, "avg"), F.adaptive_avg_pool2d(x, out),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(sliced_adaptive_pool2d(x, out, "max"), F.adaptive_max_pool2d(x, out))


class Pools(nn.Module):
    def forward(self, x):
        return adaptive_avg_pool2d(x, (4, 4)) + adaptive_max_pool2d(x, (4, 4))


def test_pooling_is_sliced_under_torch_export_and_native_in_eager():
    x = randn(1, 2, 7, 7)
    program = torch.export.export(Pools(), (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("adaptive" in t for t in targets), targets
    torch.testing.assert_close(program.module()(x), Pools()(x), rtol=1e-6, atol=1e-6)
    # eager keeps the single native op (what the cost model counts as pooling)
    with torch.profiler.profile() as prof:
        Pools()(x)
    names = {e.name for e in prof.events()}
    assert "aten::adaptive_max_pool2d" in names and "aten::adaptive_avg_pool2d" in names


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (pip install 'nas_attn[onnx]' onnxruntime)")
def test_our_modules_export_to_onnx_at_sizes_pooling_does_not_divide(tmp_path):
    import onnxruntime
    from nas_attn.export import write_onnx
    # 7x7: AW-conv pools to 3x3, CPSAM to 4x4 (avg and max), neither divides 7
    model = nn.Sequential(enliven(AWConv2d(8, 8, 3, padding=1)), enliven(create_attn("cpsam", 8)),
                          create_attn("dsa", 8), enliven(create_attn("sca", 8))).eval()
    x = randn(2, 8, 7, 7)
    path = write_onnx(model, tmp_path / "m.onnx", (8, 7, 7), batch_size=2)
    (got,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)
