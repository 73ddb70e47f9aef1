"""The small CLI commands: modules, cost (with --attn, --json, --latency), latency itself."""
import json
import math

import pytest
import torch

from conftest import run_cli_in_process as run_cli
from nas_attn.latency import measure_latency


def test_cost_json_has_the_documented_keys_and_the_overhead_adds_up():
    result = run_cli("cost", "--model", "resnet18", "--attn", "se", "--input", "3x64x64", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("params", "macs", "elementwise_ops"):
        assert key in report and key in report["baseline"]
    assert report["baseline"]["macs"] < report["macs"]
    blocks = report["blocks"]
    assert set(blocks) == {f"layer{i}.{j}" for i in range(1, 5) for j in range(2)}
    # the per-block module costs are exactly what attention adds to the model
    assert sum(b["params"] for b in blocks.values()) == report["params"] - report["baseline"]["params"]
    assert sum(b["macs"] for b in blocks.values()) == report["macs"] - report["baseline"]["macs"]
    assert blocks["layer1.0"]["feature_map"] == [64, 16, 16]


def test_cost_text_says_units_and_reproduces_resnet18():
    result = run_cli("cost", "--model", "resnet18")
    assert result.returncode == 0, result.stderr
    assert "1.81 G MACs" in result.stdout and "element-wise" in result.stdout and "FLOPs" not in result.stdout


def test_cost_latency_is_measured_in_ms():
    result = run_cli("cost", "--model", "resnet18", "--input", "3x32x32", "--attn", "dsa", "--latency", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latency_ms"] > 0 and report["baseline"]["latency_ms"] > 0 and report["latency_batch_size"] == 1


def test_cost_rejects_bad_input():
    assert run_cli("cost", "--model", "resnet18", "--input", "3x224").returncode == 2
    result = run_cli("cost", "--model", "resnet1800")
    assert result.returncode == 2 and "unknown timm model" in result.stderr and "Traceback" not in result.stderr


def test_modules_lists_every_module_with_cost_on_the_reference_map():
    result = run_cli("modules", "--json", "--no-time")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("dsa", "sca", "cpsam", "aw_conv", "se", "eca", "cbam", "gc"):
        assert name in rows and "error" not in rows[name], name
    assert rows["dsa"]["params"] == 0 and rows["dsa"]["macs"] == 0 and rows["dsa"]["elementwise_ops"] > 0
    # SE at 256 channels (rd 16): two 1x1 convs with bias, 256*16 + 16*256 MACs
    assert rows["se"]["macs"] == 2 * 256 * 16
    text = run_cli("modules", "--no-time").stdout
    assert "256x14x14" in text and "element-wise ops" in text and "time added" not in text


def test_modules_time_overhead_column_is_a_number_in_ms_and_percent():
    from nas_attn.describe import format_module_table, module_table
    rows = module_table((16, 6, 6), timing=True, repeats=1)
    timed = [r for r in rows if "error" not in r]
    assert {r["name"] for r in timed} >= {"dsa", "sca", "cpsam", "aw_conv", "se"}
    for r in timed:
        assert r["block_ms"] > 0 and math.isfinite(r["overhead_ms"]) and math.isfinite(r["overhead_pct"])
        assert r["overhead_pct"] == pytest.approx(100 * r["overhead_ms"] / r["block_ms"])
    text = format_module_table(rows, (16, 6, 6), repeats=1)
    sca = next(line for line in text.splitlines() if line.split()[:1] == ["sca"])
    number, unit, percent = sca.split()[4:7]
    float(number), float(percent.rstrip("%"))
    assert unit == "ms" and percent.endswith("%")
    assert "fwd+bwd time added" in text and "BasicBlock 16->16 at 6x6, batch 1" in text


def test_measure_latency_restores_mode_and_validates():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    model.train()
    ms = measure_latency(model, (3, 16, 16), batch_size=2, warmup=1, repeats=3)
    assert ms > 0 and model.training
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(model, (3, 16, 16), batch_size=0)
