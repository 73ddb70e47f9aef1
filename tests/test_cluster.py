"""Ray is started or joined only with token authentication, and a local search stays on loopback.

The refusals that need no Ray run in milliseconds; one test starts a local Ray the way a search
does, reads the sockets its processes listen on from /proc, and shows that a client without the
token is refused while one with it connects.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray  # imported here, under conftest's token settings, which Ray reads once at import

from nas_attn import cli, cluster
from nas_attn.cluster import ClusterError


@pytest.fixture
def no_token(monkeypatch, tmp_path, no_shared_ray):
    """A user with no Ray token anywhere and RAY_AUTH_MODE unset, and no Ray running in this
    process (the session's shared one is stopped: a search would use it)."""
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_token_source_reads_the_variables_ray_documents(no_token, monkeypatch):
    assert cluster.token_source() is None
    home_token = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("")
    assert cluster.token_source() is None  # an empty file is no token
    home_token.write_text("abc")
    assert cluster.token_source() == str(home_token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token / "missing"))
    assert cluster.token_source() is None  # Ray reads only this path once it is set
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")
    assert cluster.token_source() == "$RAY_AUTH_TOKEN"


def test_joining_a_cluster_without_a_token_is_refused_before_any_connection(no_token):
    # Port 9 (discard) on loopback: nothing is contacted, the refusal comes first.
    with pytest.raises(ClusterError, match=r"no Ray authentication token found.*--allow-unauthenticated-cluster"):
        cluster.connect("127.0.0.1:9", verbose=False)
    assert "RAY_AUTH_MODE" not in os.environ


def test_a_token_found_on_disk_switches_the_connection_to_token_mode(no_token, monkeypatch):
    token = no_token / "token"
    token.write_text("abc")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append((os.environ.get("RAY_AUTH_MODE"), kwargs))
                        or (_ for _ in ()).throw(ConnectionError("stop here")))
    with pytest.raises(ClusterError, match="could not connect"):
        cluster.connect("127.0.0.1:9", verbose=False)
    assert calls[0][0] == "token" and calls[0][1]["address"] == "127.0.0.1:9"


@pytest.mark.parametrize("join", [False, True])
def test_auth_disabled_in_the_environment_is_refused(no_token, monkeypatch, join):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    if join:
        with pytest.raises(ClusterError, match="RAY_AUTH_MODE=disabled is set.*--allow-unauthenticated-cluster"):
            cluster.connect("127.0.0.1:9", verbose=False)
    else:
        with pytest.raises(ClusterError, match="never starts Ray without token authentication"):
            cluster.prepare_local_environment()


def test_the_cli_refuses_a_local_search_with_auth_disabled(no_token, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "run"
    assert cli.main(["search", "--out", str(out), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "RAY_AUTH_MODE=disabled" in err and "Traceback" not in err
    assert not out.exists()


def test_the_cli_without_a_token_for_a_cluster_says_how_to_get_one(no_token, tmp_path, capsys):
    server = __import__("socket").socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        port = server.getsockname()[1]
        code = cli.main(["search", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "run")])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2
    assert "ray get-auth-token" in err and "--allow-unauthenticated-cluster" in err


def _listening_sockets_of(pids):
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids`` (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue  # the process ended meanwhile
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                listening.append((_address(local), int(local.rsplit(":", 1)[1], 16)))
    return listening


def _address(hex_address: str) -> str:
    host = hex_address.rsplit(":", 1)[0]
    if len(host) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(host)))
    words = bytes.fromhex(host)
    raw = b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc prints IPv6 per 32-bit word
    import ipaddress
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)


def _descendants(root: int):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


_CLIENT = textwrap.dedent("""\
    import sys, ray
    ray.init(address=sys.argv[1], logging_level="ERROR")
    print("CONNECTED")
    """)


_INSECURE_HEAD = textwrap.dedent("""\
    import sys
    from ray.cluster_utils import Cluster
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    print(head.address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    head.shutdown()
    """)


def test_joining_a_cluster_that_runs_without_authentication_is_refused(no_shared_ray):
    # The one place the suite starts Ray without authentication, in a child process (Ray fixes
    # a process's auth mode when it is imported): a head node on loopback only (conftest's
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), to show that nas-attn will not use such a cluster.
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    head = subprocess.Popen([sys.executable, "-c", _INSECURE_HEAD], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = head.stdout.readline().strip()
        assert address.startswith(cluster.LOOPBACK), address
        with pytest.raises(ClusterError, match="runs without token authentication on node"):
            cluster.connect(address, verbose=False)
        assert not ray.is_initialized()
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_a_local_search_ray_listens_on_loopback_and_refuses_clients_without_the_token(tmp_path, _ray_for_the_session):
    # Started afresh, the way a search starts it, so that the sockets read below are this call's;
    # left running as the session's shared Ray (conftest's shared_ray) for the searches after it.
    if ray.is_initialized():
        ray.shutdown()
    cluster.start_local(num_cpus=2, verbose=False)
    gcs_address = ray.get_runtime_context().gcs_address
    assert gcs_address.rsplit(":", 1)[0] == cluster.LOOPBACK
    assert cluster.node_addresses() == [cluster.LOOPBACK]
    assert cluster.unauthenticated_nodes() == []
    sockets = _listening_sockets_of(_descendants(os.getpid()))
    assert len(sockets) >= 3, sockets  # at least the GCS, the raylet and this driver
    assert {host for host, _ in sockets} == {cluster.LOOPBACK}, sockets

    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Ray retries a refused connection for 20 s; the refusal itself is immediate.
    clean.update(HOME=str(tmp_path), RAY_py_gcs_connect_timeout_s="3", RAY_NUM_REDIS_GET_RETRIES="1")
    refused = subprocess.run([sys.executable, "-c", _CLIENT, gcs_address], env=clean,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "InvalidAuthToken" in refused.stderr or "AuthenticationError" in refused.stderr, refused.stderr[-2000:]

    with_token = subprocess.run([sys.executable, "-c", _CLIENT, gcs_address],
                                env=dict(os.environ),
                                capture_output=True, text=True, timeout=120)
    assert "CONNECTED" in with_token.stdout, with_token.stderr[-2000:]


def _orphan(binary, session_dir):
    """Start ``binary 300`` holding a file of ``session_dir`` open, re-parented away from us."""
    log = session_dir / "logs" / f"{Path(binary).name}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sh", "-c", f'"{binary}" 300 >>"{log}" 2>&1 &'], check=True)
    for _ in range(100):
        found = [pid for pid, _, name in cluster._processes_using(str(session_dir)) if name == Path(binary).name]
        if found:
            return found[0]
        __import__("time").sleep(0.05)
    raise AssertionError("the stand-in process did not start")


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="finds processes through Linux /proc")
def test_stop_orphans_ends_what_a_dead_instance_left_and_spares_a_live_one(tmp_path):
    import shutil
    dead = tmp_path / "session_dead"
    agent = _orphan(shutil.which("sleep"), dead)
    parent = int(Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if parent != 1:
        pytest.skip(f"orphans are re-parented to PID {parent} (a subreaper) here, not to init")
    assert cluster.stop_orphans(str(dead)) == [agent]
    state = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{agent}").exists() else "gone"
    assert state in ("Z", "gone")

    live = tmp_path / "session_live"
    raylet = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep"), raylet)  # a process named raylet: the instance is alive
    pids = [_orphan(raylet, live), _orphan(shutil.which("sleep"), live)]
    try:
        assert cluster.stop_orphans(str(live)) == []
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
    finally:
        for pid in pids:
            os.kill(pid, 9)
    assert cluster.stop_orphans(str(tmp_path / "no_such_session")) == []


@pytest.mark.parametrize("user_value", [None, "1"])
def test_a_local_instance_starts_no_idle_workers_unless_the_user_asks(monkeypatch, user_value):
    # Tune's trial actors never run on prestarted workers; they would only take CPU at start-up.
    if user_value is None:
        monkeypatch.delenv("RAY_prestart_worker_first_driver", raising=False)
    else:
        monkeypatch.setenv("RAY_prestart_worker_first_driver", user_value)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    cluster.prepare_local_environment()
    assert os.environ["RAY_prestart_worker_first_driver"] == (user_value or "0")
