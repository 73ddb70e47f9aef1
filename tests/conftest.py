"""Suite-wide set-up that must happen before any test module imports Ray.

Ray runs with token authentication in every test, as in every real search: one token for the
whole session in a temporary file (RAY_AUTH_TOKEN_PATH), so the tests never write to the
user's ~/.ray, and RAY_AUTH_MODE=token for clusters the tests start themselves
(ray.cluster_utils.Cluster inherits this environment). Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
once, at import: 0 keeps every node the tests start on 127.0.0.1.
"""
import os
import secrets
import tempfile

_TOKEN_DIR = tempfile.mkdtemp(prefix="nas_attn_ray_token_")
_TOKEN_FILE = os.path.join(_TOKEN_DIR, "auth_token")
with open(os.open(_TOKEN_FILE, os.O_WRONLY | os.O_CREAT, 0o600), "w") as _handle:
    _handle.write(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = _TOKEN_FILE
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


import pytest  # noqa: E402  (after the environment above, which must come before any Ray import)


def make_tiny_space(name="tiny_digits", epochs=1, trials=5, seed=1, concurrent=2,
                    attention="{choices: [none, se, dsa], dsa: {threshold: {float: [0.0, 0.8]}}}",
                    aw_conv=None, constraints="{max_params: 11176000}", plugins=()):
    """YAML of the tiny space the search, export, trial and plugin tests run: resnet18 at 16x16
    on digits, blocks layer1.* searched, random sampler. Arguments are the values they vary."""
    lines = [f"name: {name}",
             *([f"plugins: [{', '.join(plugins)}]"] if plugins else []),
             "model: {name: resnet18, args: {num_classes: 10, in_chans: 1}}",
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
