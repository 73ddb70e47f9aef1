"""How a search starts or joins Ray: token authentication always on, loopback for local runs.

Ray 2.60 protects a cluster with a shared token (``RAY_AUTH_MODE=token``): every gRPC call to
the GCS, raylets and workers must carry it, and a client without it is refused. nas_attn never
turns that off:

* A local search (no ``--address``) starts a private Ray instance in token mode; Ray creates
  the token in ``~/.ray/auth_token`` (or reads ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) if
  none exists. Its node address is 127.0.0.1, so the GCS, raylet, workers and the runtime-env
  agent listen on loopback only (Ray binds its gRPC servers to the node address when that is
  127.0.0.1; with any other node address they listen on all interfaces, token-protected). No
  dashboard is started.
* ``--address`` joins an existing cluster with this machine's token. Without a token, or when
  the cluster's nodes run without authentication, the search refuses to start unless the user
  passes ``allow_unauthenticated=True`` (``--allow-unauthenticated-cluster``): anyone who can
  reach such a cluster can run code on it.

Only Ray's documented environment variables and public API are used here.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

LOOPBACK = "127.0.0.1"
AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
# Ray reads this once, when `ray` is first imported: set to 0, a node started by this process
# takes 127.0.0.1 as its address instead of the machine's network address.
LOOPBACK_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray config read from the environment when a node starts: start idle workers with the first driver.
PRESTART_WORKERS_VAR = "RAY_prestart_worker_first_driver"
SETUP_GUIDE = "see the README section 'Running on a Ray cluster' for setting up token authentication"


class ClusterError(ValueError):
    """Ray cannot be started or joined securely; the message says what to change."""


def default_token_path() -> Path:
    """Where Ray keeps its token when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set."""
    return Path.home() / ".ray" / "auth_token"


def token_source() -> Optional[str]:
    """Where this process's Ray token comes from (a description), or None if it has none."""
    if os.environ.get(TOKEN_VAR, "").strip():
        return f"${TOKEN_VAR}"
    path = os.environ.get(TOKEN_PATH_VAR)
    if path:
        return f"${TOKEN_PATH_VAR} ({path})" if _non_empty_file(Path(path)) else None
    return str(default_token_path()) if _non_empty_file(default_token_path()) else None


def _non_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _auth_mode() -> Optional[str]:
    mode = os.environ.get(AUTH_MODE_VAR)
    return mode.strip().lower() if mode is not None else None


def prepare_local_environment() -> None:
    """Environment for a private local Ray instance; call before ``ray`` is first imported.

    Refuses ``RAY_AUTH_MODE`` set to anything but ``token``: a local search never runs without
    authentication.
    """
    mode = _auth_mode()
    if mode not in (None, "token"):
        raise ClusterError(
            f"{AUTH_MODE_VAR}={os.environ[AUTH_MODE_VAR]} is set in the environment, but nas-attn never "
            f"starts Ray without token authentication (with it off, anyone who can reach this "
            f"machine could run code in the search). Unset {AUTH_MODE_VAR} and run again.")
    # RAY_AUTH_MODE unset is left to Ray: for a new local cluster it turns token mode on
    # itself, and also refreshes the settings it cached when `ray` was imported, which
    # setting the variable here would not do.
    os.environ.setdefault(LOOPBACK_NODE_VAR, "0")
    # No idle Python workers started ahead: Tune's trial actors never run on them (README,
    # "Install, run, test"), so at start-up they only compete with the driver and the trial
    # workers for the cores. Measured (start_local, 2 CPUs, load 4.7): Ray's processes spent
    # 3.2 CPU-s in their first 8 s with the two prestarted workers, 2.3 without. A task still
    # gets a worker started on demand. A value the user set wins.
    os.environ.setdefault(PRESTART_WORKERS_VAR, "0")


def start_local(num_cpus: Optional[int], verbose: bool) -> Optional[str]:
    """Start a private Ray instance on this machine, token-authenticated, on loopback.

    Returns its session folder (``/tmp/ray/session_...``), which names the instance's processes
    for :func:`stop_orphans`.
    """
    prepare_local_environment()
    ray_imported_before = "ray" in sys.modules
    import ray
    from ray.exceptions import AuthenticationError

    try:
        # address="local": without it ray.init joins whatever cluster this machine last
        # started (ray start, another test's Cluster) instead of a private instance.
        context = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose,
                 _node_ip_address=LOOPBACK)
    except (OSError, AuthenticationError) as exc:
        raise ClusterError(
            f"could not set up Ray's authentication token ({exc}). Ray keeps it in "
            f"{default_token_path()}; make that folder writable, or point {TOKEN_PATH_VAR} at a "
            f"readable file holding a token (`ray get-auth-token --generate` writes one).") from None
    addresses = node_addresses()
    if any(address != LOOPBACK for address in addresses):
        # Ray was imported before nas_attn could ask for a loopback node (see LOOPBACK_NODE_VAR):
        # the servers then listen on all interfaces, still behind the token.
        logging.getLogger(__name__).warning(
            "the local Ray node runs at %s, not %s (%s); its ports accept connections from the "
            "network but refuse any without this machine's Ray token. Set %s=0 before importing "
            "ray to keep them on loopback.", ", ".join(addresses), LOOPBACK,
            "ray was imported before nas_attn" if ray_imported_before else "Ray chose it",
            LOOPBACK_NODE_VAR)
    return context.address_info.get("session_dir")


def _processes_using(session_dir: str) -> List[tuple]:
    """(pid, parent pid, name) of processes with a file open under ``session_dir`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone, or not ours to read
        if any(link.startswith(session_dir + os.sep) for link in links):
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            found.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1]), name))
    return found


def stop_orphans(session_dir: str, wait_s: float = 3.0) -> List[int]:
    """End the processes a dead local Ray instance left behind; returns their PIDs.

    When the driver of a local search is killed with SIGKILL, Ray's GCS and raylet die with it
    (they watch the driver), but the dashboard and runtime-env agents, children of the raylet,
    were seen re-parented to PID 1 and running on (Ray 2.60). Only processes that hold files in
    that instance's own session folder, have PID 1 as parent, and whose GCS and raylet are gone
    are ended: a live instance (a raylet or GCS still using the folder) is left alone.
    """
    import signal
    import time
    if not session_dir or not os.path.isdir("/proc") or not os.path.isdir(session_dir):
        return []
    users = _processes_using(session_dir)
    if any(name in ("raylet", "gcs_server") for _, _, name in users):
        return []
    orphans = [pid for pid, parent, _ in users if parent == 1 and pid != os.getpid()]
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in orphans):
        time.sleep(0.1)
    for pid in orphans:  # seen ignoring SIGTERM
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return orphans


def connect(address: str, verbose: bool, allow_unauthenticated: bool = False) -> None:
    """Join the Ray cluster at ``address`` with this machine's token.

    Ray reads ``RAY_AUTH_MODE`` when it is first imported: a program that imports ``ray``
    itself before calling this should set ``RAY_AUTH_MODE=token`` first. Raises ClusterError when no token is available or the cluster refuses ours, and when a
    node of the cluster runs without token authentication, unless ``allow_unauthenticated``.
    """
    mode = _auth_mode()
    if mode not in (None, "token") and not allow_unauthenticated:
        raise ClusterError(
            f"{AUTH_MODE_VAR}={os.environ[AUTH_MODE_VAR]} is set: nas-attn would join the cluster at "
            f"{address} without authentication. Unset it and provide the cluster's token, or pass "
            f"--allow-unauthenticated-cluster if you accept that anyone who can reach the cluster "
            f"can run code on it ({SETUP_GUIDE}).")
    if mode is None:
        if token_source() is not None:
            # Ray turns token mode on by itself only for address=None/"auto"; an explicit
            # address would otherwise connect without sending the token.
            os.environ[AUTH_MODE_VAR] = "token"
        elif not allow_unauthenticated:
            raise ClusterError(
                f"no Ray authentication token found (${TOKEN_VAR}, ${TOKEN_PATH_VAR} or "
                f"{default_token_path()}) to join the cluster at {address}. Copy the cluster's token "
                f"(`ray get-auth-token` on its head node) to {default_token_path()}, or pass "
                f"--allow-unauthenticated-cluster for a cluster that runs without authentication "
                f"(anyone who can reach it can run code on it; {SETUP_GUIDE}).")
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, logging_level=logging.INFO if verbose else logging.WARNING,
                 log_to_driver=verbose)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as exc:
        cause = exc if isinstance(exc, AuthenticationError) else exc.__cause__
        if isinstance(cause, AuthenticationError) or "auth" in str(exc).lower():
            raise ClusterError(
                f"the Ray cluster at --address {address} refused our authentication token "
                f"({token_source() or 'none found'}): copy the cluster's token (`ray get-auth-token` on "
                f"its head node) to {default_token_path()} or set ${TOKEN_VAR}; {SETUP_GUIDE}.") from None
        raise ClusterError(f"could not connect to the Ray cluster at --address {address!r}: {exc}. "
                           f"Start one with `ray start --head` and pass its address (or 'auto').") from None
    if allow_unauthenticated:
        return
    open_nodes = unauthenticated_nodes()
    if open_nodes:
        ray.shutdown()
        raise ClusterError(
            f"the Ray cluster at {address} runs without token authentication on node(s) "
            f"{', '.join(open_nodes)}: anyone who can reach it can run code on it. Restart it with "
            f"{AUTH_MODE_VAR}=token ({SETUP_GUIDE}), or pass --allow-unauthenticated-cluster to use it anyway.")


def node_addresses() -> List[str]:
    """The addresses of the alive nodes of the connected cluster."""
    import ray
    return sorted({node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")})


def _auth_mode_of_this_worker() -> str:
    return os.environ.get(AUTH_MODE_VAR, "")


def unauthenticated_nodes(timeout_s: float = 60.0) -> List[str]:
    """Addresses of alive nodes whose Ray processes run without ``RAY_AUTH_MODE=token``.

    Workers inherit their raylet's environment, so a zero-CPU task pinned to each node reads
    the mode that node was started with (Ray has no public API that reports it).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_auth_mode_of_this_worker)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    modes = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                     .remote() for node in nodes], timeout=timeout_s)
    return sorted(node["NodeManagerAddress"] for node, mode in zip(nodes, modes)
                  if mode.strip().lower() != "token")
