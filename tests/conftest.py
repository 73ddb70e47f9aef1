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
