"""What the command line imports: `--help` needs neither torch nor timm, `validate` not Ray.

Each check runs in a fresh interpreter, since this test process has imported everything.
Import counts, not seconds: the suite never asserts timings.
"""
import json
import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "ray", "optuna", "numpy")


def _loaded_after(code: str):
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_help_imports_no_torch_timm_or_ray():
    loaded = _loaded_after(
        "import contextlib, io\nfrom nas_attn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
        "    try:\n        main(['search', '--help'])\n    except SystemExit as e:\n        assert e.code == 0")
    assert "nas_attn" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_validate_imports_no_ray_and_user_errors_still_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: resnet18}\nblocks: 3\n")
    loaded = _loaded_after(
        "import contextlib, io\nfrom nas_attn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n    assert main(['validate', 'digits_resnet']) == 0\n"
        "assert 'OK' in out.getvalue()\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    assert main(['validate', {str(bad)!r}]) == 2\n"
        "assert 'bad.yaml' in err.getvalue(), err.getvalue()")
    assert {"torch", "timm"} <= loaded
    assert not loaded & {"ray", "optuna"}, loaded & {"ray", "optuna"}


def test_a_mistake_in_a_section_is_reported_before_torch_or_ray_load(tmp_path):
    # The first pass of the space check reads only the YAML; torch and timm take seconds to
    # import, so validate, space show and search report such mistakes without them.
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nmodel: {name: resnet18, args: {in_chans: 1}}\n"
                   "train: {epochs: 4, batchsize: 64}\nblocks: {}\n")
    loaded = _loaded_after(
        "import contextlib, io\nfrom nas_attn.cli import main\n"
        "for argv in (['validate'], ['space', 'show'], ['search', '--space']):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        assert main(argv + [{str(bad)!r}]) == 2, argv\n"
        "    assert 'typo.yaml:3: train.batchsize' in err.getvalue(), err.getvalue()")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_import_nas_attn_registers_the_timm_entrypoint():
    check = ("\nassert timm.is_model('nas_attn_cnn'), 'not registered'\n"
             "m = timm.create_model('nas_attn_cnn', arch={'model': 'resnet18', 'model_args': {'num_classes': 3}, "
             "'blocks': {}})\nassert m.num_classes == 3")
    # nas_attn first (registered when timm loads); the lazy attributes load on use
    _loaded_after("import nas_attn, timm\nassert nas_attn.Arch is not None and nas_attn.modules.DSA" + check)
    # timm imported by one of our own modules while nas_attn is still importing
    _loaded_after("from nas_attn.modules import DSA\nimport timm" + check)
