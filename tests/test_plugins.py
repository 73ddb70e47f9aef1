"""User plugins: a module from a temporary package is registered, searched, costed, exported and reloaded.

The end-to-end test runs the search in a fresh process, as a user would (Ray workers must
import the plugin themselves; the driver starts its own Ray, as a user's would), exports in this
process after forgetting the plugin (export must import it from the results folder), and
rebuilds the exported model with plain timm in a third, fresh process.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import run_cli_in_process
from nas_attn import modules
from nas_attn.modules import registry
from nas_attn.plugins import PluginError, import_plugins

PLUGIN = textwrap.dedent('''\
    """A per-pixel gate: x * sigmoid(gain * conv1x1(x)), one output channel."""
    import torch
    from torch import nn

    from nas_attn.modules import float_spec, register


    class GainAttention(nn.Module):
        def __init__(self, channels, gain=1.0):
            super().__init__()
            self.gain = gain
            self.proj = nn.Conv2d(channels, 1, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.gain * self.proj(x))


    register("gain_attn", GainAttention, {"gain": float_spec(1.0, 0.1, 4.0, doc="gate sharpness")})
    ''')

SPACE = textwrap.dedent("""\
    name: plugin_digits
    {plugins}model: {{name: resnet18, args: {{num_classes: 10, in_chans: 1, channels: [16, 32, 64, 128]}}}}
    data: {{dataset: digits, image_size: 16, val_fraction: 0.2}}
    train: {{epochs: 1, batch_size: 64, lr: 0.05}}
    objectives:
      - {{metric: accuracy, direction: maximize, ref: 0.0}}
      - {{metric: effective_macs, direction: minimize, ref: 2.0e7}}
    blocks:
      "layer1.*":
        attention:
          choices: [gain_attn]
          gain_attn: {{gain: {{float: [0.5, 2.0]}}}}
    search: {{trials: 2, concurrent: 1, sampler: random, seed: 0, resources: {{cpu: 1, gpu: 0}}}}
    """)


@pytest.fixture
def plugin_dir(tmp_path):
    package = tmp_path / "plugpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_attention.py").write_text(PLUGIN)
    return tmp_path


@pytest.fixture
def imported_plugin(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    import_plugins(["plugpkg.my_attention"])
    yield sys.modules["plugpkg.my_attention"]
    _forget_plugin()


def _forget_plugin():
    """Leave the registry and sys.modules as the other tests expect them (no gain_attn)."""
    registry.PLUGIN_ATTENTION.pop("gain_attn", None)
    registry.HYPERPARAMETERS.pop("gain_attn", None)
    for name in ("plugpkg.my_attention", "plugpkg"):
        sys.modules.pop(name, None)


def test_a_registered_module_builds_is_checked_and_listed(imported_plugin):
    assert "gain_attn" in modules.available("attention")
    layer = modules.create_attn("gain_attn", 16, gain=2.0, device=None, rd_ratio=0.25)  # timm's extras dropped
    assert isinstance(layer, imported_plugin.GainAttention) and layer.gain == 2.0
    assert sum(p.numel() for p in layer.parameters()) == 16 + 1
    x = torch.randn(2, 16, 5, 7)
    assert layer(x).shape == x.shape
    with pytest.raises(ValueError, match=r"gain_attn: gain must be .*0\.1.*4.*got 10"):
        modules.create_attn("gain_attn", 16, gain=10)
    with pytest.raises(modules.UnknownArgumentError, match="gian"):
        modules.create_attn("gain_attn", 16, gian=2.0)
    with pytest.raises(ValueError, match="gain must be"):
        modules.check_kwargs("gain_attn", {"gain": 0.0})


def test_register_refuses_bad_names_specs_and_a_second_factory(imported_plugin):
    with pytest.raises(ValueError, match="built-in"):
        modules.register("se", imported_plugin.GainAttention)
    with pytest.raises(ValueError, match="needs a spec with 'type'"):
        modules.register("other_attn", imported_plugin.GainAttention, {"gain": {"low": 0}})
    with pytest.raises(ValueError, match="outside its own spec"):
        modules.register("other_attn", imported_plugin.GainAttention, {"gain": modules.float_spec(9.0, 0.0, 1.0)})
    with pytest.raises(ValueError, match="already registered"):
        modules.register("gain_attn", torch.nn.Identity)
    assert "other_attn" not in modules.available()


def test_unimportable_plugin_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="no_such_plugin_mod.*could not be imported"):
        import_plugins(["no_such_plugin_mod"])
    with pytest.raises(PluginError, match="module name"):
        import_plugins(["not a module"])
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(plugins="plugins: [no_such_plugin_mod]\n"))
    result = run_cli_in_process("validate", space)
    assert result.returncode == 2
    assert f"{space}:2: plugins.0" in result.stderr or f"{space}:2: plugins[0]" in result.stderr, result.stderr


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "nas_attn.cli", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def test_plugin_is_searched_costed_exported_and_reloaded_in_fresh_processes(plugin_dir, tmp_path, monkeypatch):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(plugins=""))  # the flag, not the space, names the plugin here

    # validate in this process (a fresh interpreter per call only adds imports); the search,
    # export and reload below run in fresh processes, where the plugin must find its own way in.
    monkeypatch.syspath_prepend(str(plugin_dir))
    shown = run_cli_in_process("validate", space)
    assert shown.returncode == 2 and "gain_attn" in shown.stderr  # unknown without the plugin
    try:
        shown = run_cli_in_process("validate", space, "--plugin", "plugpkg.my_attention")
        assert shown.returncode == 0, shown.stderr
    finally:
        _forget_plugin()

    out = tmp_path / "run"
    searched = run_cli("search", "--space", str(space), "--plugin", "plugpkg.my_attention", "--out", str(out),
                       env=env)
    assert searched.returncode == 0, searched.stdout + searched.stderr
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"], records
    for r in records:  # both blocks of layer1 carry the plugin, costed like any module
        assert {b["attention"] for b in r["arch"]["blocks"].values()} == {"gain_attn"}
        assert 0.5 <= r["arch"]["blocks"]["layer1.0"]["attention_kwargs"]["gain"] <= 2.0
        assert r["metrics"]["params"] == 712234 + 2 * (16 + 1)  # a gain and a bias per channel of the 16-channel layer1
    assert "plugpkg.my_attention" in (out / "space.yaml").read_text()  # --resume and export find it

    # Export in this process (the fresh interpreter it had cost ~5-8 s of imports), with the
    # plugin forgotten first: export must import it again from the space.yaml it reads.
    assert "gain_attn" not in registry.PLUGIN_ATTENTION and "plugpkg.my_attention" not in sys.modules
    try:
        exported = run_cli_in_process("export", out, "--out", tmp_path / "models", "--trial", "0")
        assert exported.returncode == 0, exported.stderr
        assert "plugpkg.my_attention" in sys.modules
    finally:
        _forget_plugin()
    folder = tmp_path / "models" / "trial-0000"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["plugins"] == ["plugpkg.my_attention"]
    reload = textwrap.dedent("""\
        import sys, timm, torch, nas_attn
        model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
        names = {type(m).__name__ for m in model.modules()}
        print(sum(p.numel() for p in model.parameters()), "GainAttention" in names,
              tuple(model(torch.zeros(1, 1, 16, 16)).shape))
        """)
    loaded = subprocess.run([sys.executable, "-c", reload, str(folder)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [str(records[0]["metrics"]["params"]), "True", "(1,", "10)"]
