"""The CUDA paths: mixed precision in training, AW-conv's batch folding on a GPU, synchronised latency.

Each test runs when torch sees a GPU and is skipped, with the reason, when it does not (the
2-core development machine has none): CPU runs cannot reach these branches.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_attn import data as D
from nas_attn.latency import measure_latency
from nas_attn.modules import AWConv2d
from nas_attn.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_training_on_cuda_runs_float16_autocast_and_a_grad_scaler(monkeypatch):
    scalers, conv_dtypes = [], []

    class SpyScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            scalers.append(self)

    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    model = tiny_cnn()
    model[0].register_forward_hook(lambda m, args, out: conv_dtypes.append(out.dtype) if m.training else None)
    digits = D.load("digits", image_size=8, val_fraction=0.2, seed=0)
    result = train(model, digits, epochs=1, batch_size=64, lr=0.05, device="cuda")
    assert result.device == "cuda:0" and next(model.parameters()).is_cuda
    assert set(conv_dtypes) == {torch.float16}  # autocast ran the convolutions in half precision
    assert len(scalers) == 1 and scalers[0].is_enabled()
    assert scalers[0]._scale is not None  # the scaler scaled a loss (it creates its scale lazily)
    assert 0.0 <= result.accuracy <= 1.0


@pytest.mark.parametrize("groups", [1, 2])
def test_aw_conv_folds_the_batch_into_one_grouped_conv_on_the_gpu(groups, monkeypatch):
    torch.manual_seed(0)
    aw = AWConv2d(4, 6, 3, stride=2, padding=1, groups=groups).cuda()
    nn.init.normal_(aw.attention.fc2.weight)  # a fresh AW-conv is the plain conv: make A non-zero
    x = torch.randn(5, 4, 9, 9, device="cuda")
    assert aw._samples_per_chunk(x) == 5  # no CPU chunking on a GPU: one folded conv
    calls = []
    original = F.conv2d

    def spy(input, weight, *args, **kwargs):
        calls.append((tuple(input.shape), tuple(weight.shape)))
        return original(input, weight, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    out = aw(x)
    monkeypatch.undo()
    folded = [c for c in calls if c[0][0] == 1 and c[0][1] == 5 * 4]
    assert folded == [((1, 20, 9, 9), (5 * 6, 4 // groups, 3, 3))]
    attn = aw.attention_weights(x)
    reference = torch.cat([F.conv2d(x[i:i + 1], aw.weight * (1 + attn[i]), aw.bias, aw.stride, aw.padding,
                                    aw.dilation, groups) for i in range(5)])
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_latency_on_cuda_synchronises_around_every_timed_pass(monkeypatch):
    syncs = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: (syncs.append(1), real(*a))[1])
    model = tiny_cnn().cuda()
    ms = measure_latency(model, (1, 8, 8), warmup=2, repeats=3)
    assert ms > 0
    assert len(syncs) == 2 * (2 + 3)  # before the clock starts and before it stops, every pass
