"""What the command line imports: `--help` needs neither torch nor timm, `validate` not Ray.

Each check runs in a fresh interpreter, since this test process has imported everything.
Import counts, not seconds: the suite never asserts timings.
"""
import json
import subprocess
import sys

import pytest

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


# One fresh interpreter serves two tests (importing torch and timm costs ~5 CPU-s per
# interpreter): first timm is imported by one of our own modules while nas_attn is importing
# (the registration test below), then `validate` runs (the validate test). Each part records its
# outcome instead of asserting, so a fault in one fails only the test about it.
_REGISTER_THEN_VALIDATE = """\
import contextlib, io, json, sys, traceback
outcome = {}
try:
    from nas_attn.modules import DSA
    import timm
    assert timm.is_model('nas_attn_cnn'), 'not registered'
    m = timm.create_model('nas_attn_cnn', arch={'model': 'resnet18', 'model_args': {'num_classes': 3}, 'blocks': {}})
    assert m.num_classes == 3
    outcome['registered'] = 'ok'
except BaseException:
    outcome['registered'] = traceback.format_exc()
try:
    from nas_attn.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(['validate', 'digits_resnet']) == 0
    assert 'OK' in out.getvalue()
    for path, words in ((sys.argv[1], 'bad.yaml'), (sys.argv[2], 'glob matches no block of the model')):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(['validate', path]) == 2, path
        assert words in err.getvalue(), err.getvalue()
    outcome['validated'] = 'ok'
except BaseException:
    outcome['validated'] = traceback.format_exc()
outcome['loaded'] = sorted(m for m in sys.modules if '.' not in m)
print(json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def register_then_validate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validate")
    bad = folder / "bad.yaml"
    bad.write_text("model: {name: resnet18}\nblocks: 3\n")
    # A mistake only the second pass finds (it builds the model with timm): a block glob that
    # matches no block of resnet18. Reported, it shows that validate ran that pass.
    no_block = folder / "no_block.yaml"
    no_block.write_text("name: no_block\nmodel: {name: resnet18, args: {num_classes: 10, in_chans: 1}}\n"
                        "data: {dataset: digits, image_size: 16, val_fraction: 0.2}\n"
                        'blocks:\n  "layer9.*":\n    attention: {choices: [none, se]}\n')
    proc = subprocess.run([sys.executable, "-c", _REGISTER_THEN_VALIDATE, str(bad), str(no_block)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_validate_imports_no_ray_and_user_errors_still_exit_2(register_then_validate):
    assert register_then_validate["validated"] == "ok", register_then_validate["validated"]
    loaded = set(register_then_validate["loaded"])
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


def test_import_nas_attn_registers_the_timm_entrypoint(register_then_validate):
    check = ("\nassert timm.is_model('nas_attn_cnn'), 'not registered'\n"
             "m = timm.create_model('nas_attn_cnn', arch={'model': 'resnet18', 'model_args': {'num_classes': 3}, "
             "'blocks': {}})\nassert m.num_classes == 3")
    # nas_attn first (registered when timm loads); the lazy attributes load on use
    _loaded_after("import nas_attn, timm\nassert nas_attn.Arch is not None and nas_attn.modules.DSA" + check)
    # timm imported by one of our own modules while nas_attn is still importing
    # (`from nas_attn.modules import DSA` then `import timm`, in the interpreter shared with validate)
    assert register_then_validate["registered"] == "ok", register_then_validate["registered"]


def test_the_program_freezes_the_collector_before_it_exits_and_main_leaves_it_alone(tmp_path):
    # console_main (the nas-attn program) ends with gc.freeze(), so Python's last collection
    # at exit skips what torch and timm made (~1 s); main, which tests and notebooks call in
    # a process that goes on, must not freeze anything.
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nmodel: {name: resnet18}\ntrain: {batchsize: 64}\nblocks: {}\n")
    _loaded_after(
        "import gc, sys\nfrom nas_attn.cli import console_main, main\n"
        f"sys.argv = ['nas-attn', 'validate', {str(bad)!r}]\n"
        "assert main(sys.argv[1:]) == 2 and gc.get_freeze_count() == 0\n"
        "assert console_main() == 2 and gc.get_freeze_count() > 0")
    from importlib.metadata import entry_points
    (program,) = [e for e in entry_points(group="console_scripts") if e.name == "nas-attn"]
    assert program.value == "nas_attn.cli:console_main"


def test_the_search_driver_imports_neither_torch_nor_timm_until_it_needs_them():
    # nas_attn.search.run imports torch and timm in the thread that checks the space while the
    # main thread starts Ray (README, "When `nas-attn search` checks what"); a module-level
    # import of either in the search package would put them back in front of Ray's start.
    loaded = _loaded_after("import nas_attn.search\nfrom nas_attn.search import run")
    assert not loaded & {"torch", "timm", "torchvision"}, loaded & {"torch", "timm", "torchvision"}
