"""Suite-wide set-up that must happen before any test module imports Ray.

Ray runs with token authentication in every test, as in every real search: one token for the
whole session in a temporary file (RAY_AUTH_TOKEN_PATH), so the tests never write to the
user's ~/.ray, and RAY_AUTH_MODE=token for clusters the tests start themselves
(ray.cluster_utils.Cluster inherits this environment). Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
once, at import: 0 keeps every node the tests start on 127.0.0.1.

Each test session (each pytest-xdist worker) keeps Ray's files in a folder of its own
(RAY_TMPDIR): ``ray.init()`` without an address joins the cluster recorded in
``$RAY_TMPDIR/ray/ray_current_cluster``, so with the default /tmp a search in one session could
join a cluster that a test of the other session started.
"""
import atexit
import os
import secrets
import shutil
import tempfile

_TOKEN_DIR = tempfile.mkdtemp(prefix="nas_attn_ray_token_")
_TOKEN_FILE = os.path.join(_TOKEN_DIR, "auth_token")
with open(os.open(_TOKEN_FILE, os.O_WRONLY | os.O_CREAT, 0o600), "w") as _handle:
    _handle.write(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = _TOKEN_FILE
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# No idle Python workers started ahead with every Ray the tests start (in this process, in the
# drivers they start, in Cluster nodes): Tune's trial actors never run on them (README,
# "Install, run, test"), and a task that wants a worker gets one started on demand. Measured
# (start_local, 2 CPUs, load 4.7): the Ray processes spent 3.2 CPU-s in their first 8 s with the
# two prestarted workers, 2.3 without. A value the user set wins.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
# Short (Ray's unix sockets live under it and their paths are limited to 107 bytes).
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nasattn-ray-", dir="/tmp")


def _remove_the_session_folders(folders=(_TOKEN_DIR, os.environ["RAY_TMPDIR"])):
    """Remove the token and Ray folders at exit (a whole suite's run left three of each in /tmp,
    up to 3 MB of Ray logs and sockets). Registered before Ray is imported, so it runs after Ray's own exit
    handler has stopped the Ray this process started (atexit runs last-registered first)."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_the_session_folders)


def _share_the_cores_among_xdist_workers():
    """Under pytest-xdist, give each worker its share of the cores as torch (OpenMP) threads.

    Torch starts one thread per core in every process; with ``-n 2`` on 2 cores that is 4
    threads on 2 cores, and OpenMP threads spin while they wait for each other, so a
    descheduled one costs the others CPU for nothing. Measured (load 14, test_arch.py and
    test_modules.py, whole process tree): 144 CPU-s and 5 min 38 s with torch's default, 26
    CPU-s and 1 min 3 s with one thread per worker. Set in the environment, before torch is
    imported, so the fresh interpreters the tests start inherit it too (Ray sets 1 in its
    workers anyway). A value the user set wins; ``pytest -n 0`` keeps torch's default.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores_among_xdist_workers()


import pytest  # noqa: E402  (after the environment above, which must come before any Ray import)


def pytest_unconfigure(config):
    """The session is over: spare this process Python's last garbage collection at exit
    (1-1.5 s in a process that imported torch, timm and Ray), as nas_attn.cli.console_main
    does for the program (README, "Cost model: how each number is measured")."""
    import gc
    gc.freeze()


def make_tiny_space(name="tiny_digits", epochs=1, trials=5, seed=1, concurrent=2,
                    attention="{choices: [none, se, dsa], dsa: {threshold: {float: [0.0, 0.8]}}}",
                    aw_conv=None, constraints="{max_params: 712300}", plugins=()):
    """YAML of the tiny space the search, export, trial and plugin tests run: resnet18 at a
    quarter of its width (channels 16-128, 712,234 parameters, 1.26 M MACs at 16x16; one
    epoch on digits takes ~2 s on one core, against ~14 s at full width) on digits at 16x16,
    blocks layer1.* searched, random sampler. Arguments are the values they vary. The default
    ``max_params`` (baseline + 66) makes any SE trial infeasible: an SE in a 16-channel block
    adds 280 parameters, DSA none."""
    lines = [f"name: {name}",
             *([f"plugins: [{', '.join(plugins)}]"] if plugins else []),
             "model: {name: resnet18, args: {num_classes: 10, in_chans: 1, channels: [16, 32, 64, 128]}}",
             "data: {dataset: digits, image_size: 16, val_fraction: 0.2}",
             f"train: {{epochs: {epochs}, batch_size: 64, lr: 0.05}}",
             "objectives:",
             "  - {metric: accuracy, direction: maximize, ref: 0.0}",
             "  - {metric: effective_macs, direction: minimize, ref: 2.0e7}",
             *([f"constraints: {constraints}"] if constraints else []),
             "blocks:",
             '  "layer1.*":',
             f"    attention: {attention}",
             *([f"    aw_conv: {aw_conv}"] if aw_conv else []),
             f"search: {{trials: {trials}, concurrent: {concurrent}, sampler: random, seed: {seed}, "
             f"resources: {{cpu: 1, gpu: 0}}}}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_space():
    """:func:`make_tiny_space`: call it with the values a test varies."""
    return make_tiny_space


def start_shared_ray():
    """Start this session's local Ray (2 CPUs, token authentication, loopback, no dashboard:
    the product's own :func:`nas_attn.cluster.start_local`) unless one is running.

    ``search.run`` uses a Ray it finds initialized and leaves it running, so the tests that run
    local searches in this process pay Ray's start-up and shut-down (~5-8 s) once, not once per
    search; each search still starts its own trial actors, as a real one does.
    """
    import ray
    if not ray.is_initialized():
        from nas_attn.cluster import start_local
        start_local(num_cpus=2, verbose=False)


@pytest.fixture(scope="session")
def _ray_for_the_session():
    yield
    import sys
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture
def shared_ray(_ray_for_the_session):
    """The session's local Ray (:func:`start_shared_ray`), started again if a test ended it."""
    start_shared_ray()


@pytest.fixture
def no_shared_ray(_ray_for_the_session):
    """No Ray in this process: for tests that connect to a cluster of their own (a driver can be
    connected to one Ray at a time); the next ``shared_ray`` test starts the local one again."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


def run_cli_in_process(*args):
    """``nas-attn ARGS`` through :func:`nas_attn.cli.main` in this process, returned as the
    ``subprocess.CompletedProcess`` a ``subprocess.run`` of the same command would give.

    A fresh interpreter per command costs the ~5 s of importing torch and timm; tests that check
    what a command prints and returns need none of that. An exception that escapes ``main``
    (what a user would see as a traceback) fails the calling test with it. Tests about imports,
    installs or fresh processes keep running ``python -m nas_attn.cli`` in a subprocess.
    """
    import contextlib
    import io
    import subprocess
    from nas_attn.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help (0) and bad flags (2)
            code = exc.code
    return subprocess.CompletedProcess(["nas-attn", *map(str, args)], code, out.getvalue(), err.getvalue())
