"""The search end to end on Ray (local and a two-node loopback cluster), resume, failures, errors.

Ray-backed tests are the slow part of the suite (each starts Ray: ~5 s, plus ~5 s of worker
start-up); they use tiny trials: resnet18 at 16x16 on digits, one epoch.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas_attn import results, search
from nas_attn.space import load, loads

# resnet18 (1 input channel, 10 classes) has 11,175,370 parameters; an SE in a 64-channel block
# adds 2 x (64 x 8 + 8) + ... > 630, so any trial with SE breaks max_params.
BASELINE_PARAMS = 11175370


@pytest.fixture
def tiny_yaml(tiny_space):
    return tiny_space()


@pytest.fixture
def unconstrained_yaml(tiny_space):
    return tiny_space(constraints=None)


@pytest.fixture
def tiny_space_file(tmp_path, tiny_yaml):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_yaml)
    return path


@pytest.fixture(autouse=True)
def loopback_env(monkeypatch):
    # Keep Ray on 127.0.0.1 (DESIGN.md): otherwise it swaps in the external interface address.
    # conftest.py sets it (with the session's Ray token) before Ray is first imported.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    yield
    import ray
    if ray.is_initialized():
        ray.shutdown()


def check_files_agree(run_dir: Path, budget: int, contiguous: bool = True):
    records = results.read_trials(run_dir)
    assert len(records) == budget
    numbers = [r["number"] for r in records]
    assert len(set(numbers)) == budget
    if contiguous:  # after a driver crash, trials it asked Optuna for but never ran leave gaps
        assert sorted(numbers) == list(range(budget))
    pareto = json.loads((run_dir / results.PARETO_FILE).read_text())
    space = load(run_dir / results.SPACE_FILE)
    assert pareto == results.pareto_records(records, space.objectives)
    study = results.open_study(run_dir)
    best = sorted(t.number for t in study.best_trials)
    assert [r["number"] for r in pareto] == best
    by_number = {t.number: t for t in study.trials}
    for record in records:
        frozen = by_number[record["number"]]
        assert frozen.user_attrs["status"] == record["status"]
        assert frozen.user_attrs["arch"] == record["arch"]
        if record["status"] == "ok":
            assert frozen.state.name == "COMPLETE"
            assert frozen.values == [record["metrics"]["accuracy"], record["metrics"]["effective_macs"]]
    return records, pareto, study


def test_search_end_to_end(tiny_space_file, tmp_path, capsys):
    out = tmp_path / "run"
    result = search.run(str(tiny_space_file), out=str(out), num_cpus=2)
    records, pareto, study = check_files_agree(out, 5)
    assert result.run_dir == out.resolve() and result.trials == records and result.pareto == pareto

    baseline = records[0]
    assert baseline["arch"] == load(out / results.SPACE_FILE).baseline()
    assert baseline["status"] == "ok" and baseline["metrics"]["params"] == BASELINE_PARAMS

    statuses = {r["status"] for r in records}
    assert statuses <= {"ok", "infeasible"}
    for r in records:
        has_se = any(b["attention"] == "se" for b in r["arch"]["blocks"].values())
        assert r["status"] == ("infeasible" if has_se else "ok"), r
        if r["status"] == "infeasible":
            assert r["violations"]["max_params"] > 0
            assert r["metrics"]["epoch"] == 0  # measured, never trained
            frozen = [t for t in study.trials if t.number == r["number"]][0]
            constraints = frozen.constraints  # Optuna 5: {name: value}; Optuna 4: [value, ...]
            values = list(constraints.values()) if isinstance(constraints, dict) else constraints
            assert values == [pytest.approx(r["violations"]["max_params"])]
            assert frozen.number not in [t.number for t in study.best_trials]
        else:
            m = r["metrics"]
            assert m["epoch"] == 1 and 0.0 <= m["accuracy"] <= 1.0
            assert m["macs"] > 0 and m["effective_macs"] <= m["macs"] and m["latency_ms"] > 0
            assert (out / r["checkpoint"] / "model.safetensors").is_file()
    assert "infeasible" in statuses, "seed 1 samples an SE trial; the test relies on one"
    assert all(r["status"] == "ok" for r in pareto)

    printed = capsys.readouterr().out
    assert "[  5/5]" in printed and "Pareto set" in printed and "MACs" in printed
    assert not list(out.glob("**/.*.tmp")), "no half-written files are left"


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, unconstrained_yaml):
    space = loads(unconstrained_yaml.replace("lr: 0.05", "lr: 1.0e+12").replace("trials: 5", "trials: 3"))
    out = tmp_path / "run"
    result = search.run(space, out=str(out), num_cpus=2)
    assert [r["status"] for r in result.trials] == ["failed"] * 3
    assert all("diverged" in r["error"] for r in result.trials)
    assert result.pareto == []
    study = results.open_study(out)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert all("diverged" in t.user_attrs["error"] for t in study.trials)


def test_search_on_a_two_node_loopback_cluster(tiny_space_file, tmp_path, unconstrained_yaml):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        search.run(loads(unconstrained_yaml), out=str(out), address=cluster.address, trials=4)
        records, _, _ = check_files_agree(out, 4)
        assert all(r["status"] == "ok" for r in records)
        assert len({r["node_id"] for r in records}) == 2
    finally:
        cluster.shutdown()


def test_a_node_lost_mid_search_is_retried_and_the_budget_completes(tiny_space_file, tmp_path, unconstrained_yaml):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        space = loads(unconstrained_yaml.replace("epochs: 1", "epochs: 3"))

        def kill_worker_node():
            # Trial folders appear before trials are placed; the first epoch report means both
            # nodes (1 CPU each, 2 trials at once) are training a 3-epoch trial: pull the plug.
            deadline = time.time() + 180
            while time.time() < deadline:
                if any(p.stat().st_size > 0 for p in (out / "ray").glob("trial_*/result.json")):
                    cluster.remove_node(worker, allow_graceful=False)
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_worker_node, daemon=True)
        killer.start()
        search.run(space, out=str(out), address=cluster.address, trials=4)
        killer.join()
        records, _, _ = check_files_agree(out, 4)
        assert all(r["status"] == "ok" for r in records)
        assert sum(r["retries"] for r in records) >= 1
    finally:
        cluster.shutdown()


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "nas_attn.cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_resume_after_the_driver_is_killed(tiny_space_file, tmp_path, tiny_yaml):
    out = tmp_path / "run"
    space = tmp_path / "slow.yaml"
    space.write_text(tiny_yaml.replace("epochs: 1", "epochs: 2").replace("concurrent: 2", "concurrent: 1")
                     .replace("trials: 5", "trials: 6"))
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    driver = subprocess.Popen([sys.executable, "-m", "nas_attn.cli", "search", "--space", str(space),
                               "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(results.read_trials(out)) < 2:
            time.sleep(0.5)
        assert len(results.read_trials(out)) >= 2, "the first search never finished two trials"
    finally:
        # SIGKILL the driver and every Ray process it started (they share its session).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {r["number"]: r for r in results.read_trials(out)}
    assert 2 <= len(before) < 6
    resumed = run_cli("search", "--resume", str(out), env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records, _, study = check_files_agree(out, 6, contiguous=False)
    recorded = {r["number"] for r in records}
    for frozen in study.trials:
        if frozen.number not in recorded:  # asked by the killed driver, never run
            assert frozen.state.name == "FAIL" and "lost" in frozen.user_attrs["error"]
    for number, record in before.items():
        assert records[number] == record, "a trial finished before the kill was rerun or changed"
    assert len({r["ray_trial_id"] for r in records}) == 6
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


@pytest.mark.parametrize("args, words", [
    (["search", "--address", "not-an-address"], "--address must be"),
    (["search", "--address", "127.0.0.1:{closed_port}"], "could not connect to the Ray cluster"),
    (["search", "--space", "no_such_space"], "no shipped space of that name"),
])
def test_search_errors_exit_2_with_a_clear_message(args, words, tmp_path):
    # A port the OS just handed out and that nobody listens on any more (not a guessed one:
    # something may listen on port 1).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = run_cli(*[a.format(closed_port=closed_port) for a in args], "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_folder_is_named(tmp_path, tiny_yaml):
    path = tmp_path / "cifar.yaml"
    path.write_text(tiny_yaml.replace("dataset: digits", f"dataset: cifar10, root: {tmp_path / 'nowhere'}")
                    .replace("in_chans: 1", "in_chans: 3"))
    result = run_cli("search", "--space", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert str(tmp_path / "nowhere") in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the data is found"


def test_trial_status_reads_the_last_result():
    assert results.trial_status({"status": "ok", "epoch": 3}, epochs=3) == "ok"
    assert results.trial_status({"status": "ok", "epoch": 1}, epochs=3) == "stopped"
    assert results.trial_status({"status": "infeasible", "epoch": 0}, epochs=3) == "infeasible"
    assert results.trial_status({"status": "failed"}, epochs=3) == "failed"
    assert results.trial_status(None, epochs=3) == "failed"
    assert results.trial_status({"status": "ok", "epoch": 3}, epochs=3, errored=True) == "failed"


def test_flags_override_the_space_and_resources_follow(tiny_space_file):
    space = search.apply_overrides(load(str(tiny_space_file)), trials=9, epochs=2, sampler="nsga2",
                                   cpus_per_trial=2, gpus_per_trial=0.5, early_stopping=True)
    assert space.search["trials"] == 9 and space.train["epochs"] == 2 and space.search["sampler"] == "nsga2"
    assert search.trial_resources(space) == {"cpu": 2, "gpu": 0.5}
    assert space.search["early_stopping"] == {"enabled": True, "grace_epochs": 1, "reduction_factor": 3}
    assert search.trial_resources(load(str(tiny_space_file))) == {"cpu": 1, "gpu": 0}


def test_early_stopping_prunes_hopeless_trials_and_keeps_them_off_the_front(tmp_path, unconstrained_yaml):
    # Sequential trials (concurrent 1) make the rung decisions deterministic for a seed.
    space = loads(unconstrained_yaml.replace("epochs: 1", "epochs: 3").replace("trials: 5", "trials: 6")
                  .replace("concurrent: 2", "concurrent: 1")
                  .replace("seed: 1,", "seed: 1, early_stopping: {grace_epochs: 1, reduction_factor: 2},"))
    out = tmp_path / "run"
    search.run(space, out=str(out), num_cpus=2)
    records, pareto, study = check_files_agree(out, 6)
    stopped = [r for r in records if r["status"] == "stopped"]
    assert stopped, "with reduction factor 2 some of 6 trials rank in the bottom half of a rung"
    by_number = {t.number: t for t in study.trials}
    for r in stopped:
        assert r["metrics"]["epoch"] < 3
        assert by_number[r["number"]].state.name == "PRUNED"
    assert all(r["metrics"]["epoch"] == 3 for r in pareto)
    assert sum(r["metrics"]["epoch"] for r in records) < 6 * 3


def test_recorder_copies_the_status_the_study_was_told(tmp_path):
    # One status rule, computed once: the searcher tells the study, trials.jsonl copies it.
    import optuna
    from types import SimpleNamespace
    from nas_attn.search._ray import recorder_class
    study = optuna.create_study(storage=results.study_storage(tmp_path), study_name=results.STUDY_NAME,
                                directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("status", "stopped")
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    objectives = [{"metric": "accuracy", "direction": "maximize"},
                  {"metric": "effective_macs", "direction": "minimize"}]
    recorder = recorder_class()(str(tmp_path), budget=2, epochs=3, objectives=objectives)
    recorder.setup()
    last = {"status": "ok", "epoch": 3, "accuracy": 0.5, "effective_macs": 1e6}  # alone it reads "ok"
    ray_trial = SimpleNamespace(last_result=last, config={"trial_number": 0, "arch": {"blocks": {}}},
                                trial_id="t0", num_failures=0, checkpoint=None)
    recorder.on_trial_complete(0, [], ray_trial)
    (record,) = results.read_trials(tmp_path)
    assert record["status"] == "stopped" and record["metrics"]["accuracy"] == 0.5
    assert json.loads((tmp_path / results.PARETO_FILE).read_text()) == []
