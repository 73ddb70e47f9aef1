"""The search end to end on Ray (local and a two-node loopback cluster), resume, failures, errors.

Ray-backed tests are the slow part of the suite. They use tiny trials (conftest's tiny space:
resnet18 at a quarter width, 16x16 digits, ~2 s an epoch on one core), the local searches share
one Ray instance (conftest's ``shared_ray``), and faults are injected on events the search emits
(a trial's epoch report, a progress line), never on a timer."""
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nas_attn import cli, results, search
from nas_attn.space import load, loads

# The tiny space's resnet18 (1 input channel, 10 classes, channels 16-128) has 712,234
# parameters; an SE in a 16-channel block adds 2 x 16 x 8 + 8 + 16 = 280 > 66, so any trial
# with SE breaks max_params (712,300).
BASELINE_PARAMS = 712234


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
    # An answered repeat (README, "Repeated proposals") has its original's values, so it can sit
    # in best_trials beside it; it has no record of its own.
    best = sorted(t.number for t in study.best_trials if "repeat_of" not in t.user_attrs)
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


def replay_searcher_archs(space):
    """The Archs the search's searcher will ask for, in trial-number order, replayed in-process:
    the same sampler and seed (search.make_sampler), the baseline enqueued first, then one
    ask + space.sample per trial. Ray runs trials concurrently, but the searcher asks and
    samples each trial whole in one suggest call, and the random sampler's draws depend only
    on their order, so trial n always gets the n-th draws."""
    import optuna
    settings = space.search
    sampler = search.make_sampler(settings["sampler"], settings["seed"], settings["trials"],
                                  settings.get("population"), settings.get("startup_trials"))
    study = optuna.create_study(sampler=sampler, directions=[o["direction"] for o in space.objectives])
    study.enqueue_trial(space.baseline_params())
    return [space.sample(study.ask()) for _ in range(settings["trials"])]


def has_se(arch):
    return any(b["attention"] == "se" for b in arch["blocks"].values())


def test_search_end_to_end(tiny_space, tmp_path, capsys, shared_ray):
    # The first seed whose two sampled trials (after the baseline) are an SE trial (infeasible:
    # over max_params) and a plain or DSA one (trained), found by replaying the searcher, so
    # the test exercises both outcomes whatever Optuna's random stream draws for a given seed.
    # Three trials on two slots: the fewest that hold the baseline and both outcomes, with one
    # slot running two trials in turn (more trials only trained more).
    for seed in range(50):
        space_file = tmp_path / "tiny.yaml"
        space_file.write_text(tiny_space(seed=seed, trials=3))
        expected = replay_searcher_archs(load(space_file))
        if {has_se(arch) for arch in expected[1:]} == {True, False}:
            break
    else:
        pytest.fail("no seed below 50 samples both an SE and a non-SE trial")
    out = tmp_path / "run"
    result = search.run(str(space_file), out=str(out), num_cpus=2)
    records, pareto, study = check_files_agree(out, 3)
    # the search honours its seed: trial n holds the n-th replayed Arch
    assert [r["arch"] for r in sorted(records, key=lambda r: r["number"])] == expected
    assert result.run_dir == out.resolve() and result.trials == records and result.pareto == pareto

    baseline = records[0]
    assert baseline["arch"] == load(out / results.SPACE_FILE).baseline()
    assert baseline["status"] == "ok" and baseline["metrics"]["params"] == BASELINE_PARAMS

    statuses = {r["status"] for r in records}
    assert statuses <= {"ok", "infeasible"}
    for r in records:
        assert r["status"] == ("infeasible" if has_se(r["arch"]) else "ok"), r
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
    assert statuses == {"ok", "infeasible"}
    assert all(r["status"] == "ok" for r in pareto)

    printed = capsys.readouterr().out
    assert "[  3/3]" in printed and "Pareto set" in printed and "MACs" in printed
    assert not list(out.glob("**/.*.tmp")), "no half-written files are left"


def test_an_address_is_refused_while_this_process_is_connected_to_another_ray(tiny_space_file, tmp_path,
                                                                             shared_ray):
    # Without the check the search would run on the Ray already connected, ignoring the address.
    with pytest.raises(search.SearchError, match="already connected to Ray"):
        search.run(str(tiny_space_file), out=str(tmp_path / "run"), address="127.0.0.1:6379")
    assert not (tmp_path / "run").exists()


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, unconstrained_yaml, shared_ray):
    # One trial at a time: one trial worker (reused, reuse_actors) runs all three, so a failed
    # trial must leave its worker able to run the next; two at once only started a second
    # worker (~7 CPU-s of imports) and checked nothing more.
    space = loads(unconstrained_yaml.replace("lr: 0.05", "lr: 1.0e+12").replace("trials: 5", "trials: 3")
                  .replace("concurrent: 2", "concurrent: 1"))
    out = tmp_path / "run"
    result = search.run(space, out=str(out), num_cpus=2)
    assert [r["status"] for r in result.trials] == ["failed"] * 3
    assert all("diverged" in r["error"] for r in result.trials)
    assert result.pareto == []
    study = results.open_study(out)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert all("diverged" in t.user_attrs["error"] for t in study.trials)


def test_resume_after_the_driver_is_killed(tmp_path, tiny_yaml, capsys, shared_ray):
    out = tmp_path / "run"
    space = tmp_path / "slow.yaml"
    # One epoch a trial, one trial at a time: the kill lands between trials 2 and 3 (the event
    # below), which needs no trial to be mid-way.
    space.write_text(tiny_yaml.replace("concurrent: 2", "concurrent: 1").replace("trials: 5", "trials: 4"))
    driver = subprocess.Popen([sys.executable, "-m", "nas_attn.cli", "search", "--space", str(space),
                               "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in driver.stdout], daemon=True).start()
    try:
        # The event: the driver's progress line for the second finished trial, printed after that
        # trial is written to trials.jsonl. Each line must come within 120 s (a trial here takes
        # a few seconds); the queue wait is a guard against a hung driver, not a timer to kill on.
        printed = []
        while not any(line.startswith("[  2/4]") for line in printed):
            printed.append(lines.get(timeout=120))
    finally:
        # SIGKILL the driver and every Ray process it started (they share its session).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {r["number"]: r for r in results.read_trials(out)}
    assert 2 <= len(before) < 4
    # A kill that lands while the driver appends to the study journal leaves the journal's lock
    # behind (Optuna breaks such a lock only after 30 s); make sure one is there, as the kill
    # left it or planted now, and that the resume removes it and says so.
    from optuna.storages.journal import JournalFileSymlinkLock
    journal_lock = Path(str(out / results.STUDY_FILE) + ".lock")  # Optuna's name for it
    if not os.path.lexists(journal_lock):
        assert JournalFileSymlinkLock(str(out / results.STUDY_FILE)).acquire()
    # The killed driver had to be a process of its own; the resume runs `nas-attn search --resume`
    # in this process, on the session's Ray (a fresh interpreter and Ray cost ~10 s and check
    # nothing about resuming: the resumed trials still run in new Ray workers).
    assert cli.main(["search", "--resume", str(out)]) == 0, capsys.readouterr()
    assert "removed the lock on" in capsys.readouterr().err and not os.path.lexists(journal_lock)
    records, _, study = check_files_agree(out, 4, contiguous=False)
    by_number = {r["number"]: r for r in records}
    for frozen in study.trials:
        if frozen.number in by_number:
            continue
        if "repeat_of" in frozen.user_attrs:  # a proposal answered from its original's record, never run
            if frozen.state.name == "COMPLETE":  # else FAIL: it repeated a trial running then
                original = by_number[frozen.user_attrs["repeat_of"]]
                assert (frozen.user_attrs["arch"], frozen.user_attrs["status"]) == (original["arch"], original["status"])
            continue
        # asked by the killed driver, never run
        assert frozen.state.name == "FAIL" and "lost" in frozen.user_attrs["error"]
    for number, record in before.items():
        assert records[number] == record, "a trial finished before the kill was rerun or changed"
    assert len({r["ray_trial_id"] for r in records}) == 4
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def test_missing_data_folder_is_named(tmp_path, tiny_yaml, capsys, shared_ray):
    # On the session's Ray: a search that starts its own finds the data while Ray starts and
    # then stops it (tests/test_search_startup.py); the message and the empty --out are the same.
    path = tmp_path / "cifar.yaml"
    path.write_text(tiny_yaml.replace("dataset: digits", f"dataset: cifar10, root: {tmp_path / 'nowhere'}")
                    .replace("in_chans: 1", "in_chans: 3"))
    assert cli.main(["search", "--space", str(path), "--out", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
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


def test_early_stopping_prunes_hopeless_trials_and_keeps_them_off_the_front(tmp_path, unconstrained_yaml, shared_ray):
    # Sequential trials (concurrent 1) make the rung decisions deterministic for a seed. Two
    # epochs: the fewest with a rung (at epoch 1) before the last epoch.
    space = loads(unconstrained_yaml.replace("epochs: 1", "epochs: 2").replace("trials: 5", "trials: 6")
                  .replace("concurrent: 2", "concurrent: 1")
                  .replace("seed: 1,", "seed: 1, early_stopping: {grace_epochs: 1, reduction_factor: 2},"))
    out = tmp_path / "run"
    search.run(space, out=str(out), num_cpus=2)
    records, pareto, study = check_files_agree(out, 6)
    stopped = [r for r in records if r["status"] == "stopped"]
    assert stopped, "with reduction factor 2 some of 6 trials rank in the bottom half of a rung"
    by_number = {t.number: t for t in study.trials}
    for r in stopped:
        assert r["metrics"]["epoch"] < 2
        assert by_number[r["number"]].state.name == "PRUNED"
    assert all(r["metrics"]["epoch"] == 2 for r in pareto)
    assert sum(r["metrics"]["epoch"] for r in records) < 6 * 2


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


# The tests below end this process's Ray (no_shared_ray: they connect to a cluster of their own,
# or need no Ray connected); they come last so the local searches above all share one Ray
# instance (each restart costs ~4 CPU-s and a few seconds: GCS, raylet, agents, workers).


@pytest.mark.parametrize("args, words", [
    (["search", "--address", "not-an-address"], "--address must be"),
    (["search", "--address", "127.0.0.1:{closed_port}"], "could not connect to the Ray cluster"),
    (["search", "--space", "no_such_space"], "no shipped space of that name"),
])
def test_search_errors_exit_2_with_a_clear_message(args, words, tmp_path, capsys, no_shared_ray):
    # A port the OS just handed out and that nobody listens on any more (not a guessed one:
    # something may listen on port 1).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # In-process: an error that escaped main() would fail this test with its traceback.
    code = cli.main([*[a.format(closed_port=closed_port) for a in args], "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err
    assert not (tmp_path / "run").exists()


def test_a_search_spreads_over_two_nodes_and_a_node_lost_mid_search_is_retried(
        tmp_path, unconstrained_yaml, no_shared_ray, monkeypatch):
    # Also the two-node test: the kill fires only once the worker node has reported from a
    # trial, so a search that never placed work on the second node fails here (killed stays unset).
    from ray.cluster_utils import Cluster
    from ray.tune.logger import JsonLoggerCallback
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        # Four epochs, the kill on a trial's first report: the trial must still be running when
        # the node goes. Tune fetches a trial's next result while the driver handles the last
        # one, so with two epochs an idle machine's 0.5 s epoch could finish the trial before the
        # kill took effect (seen in CI: the lost trial was never retried).
        space = loads(unconstrained_yaml.replace("epochs: 1", "epochs: 4"))
        killed = []
        log_trial_result = JsonLoggerCallback.log_trial_result

        def kill_worker_node_on_its_first_report(self, iteration, trial, result):
            # The event: the driver receives a trial's epoch-1-of-4 report from the worker node.
            # The kill happens here, in the driver's loop, before it asks that trial for its next
            # epoch, so a running trial is always lost (a node merely idle would prove nothing).
            # Not by watching result.json in the run folder: Tune writes it to a staging folder
            # and copies it there periodically, and a search of fast trials could end before
            # the first copy (that left the kill unfired, on an idle machine).
            log_trial_result(self, iteration, trial, result)
            if not killed and result.get("node_id") == worker.node_id and result.get("epoch", 4) < 2:
                cluster.remove_node(worker, allow_graceful=False)
                killed.append(trial.trial_id)

        # The search adds Tune's JSON logger itself (result.json), so every report passes here.
        monkeypatch.setattr(JsonLoggerCallback, "log_trial_result", kill_worker_node_on_its_first_report)
        # Two trials on two one-CPU nodes run at once, so one of them is always on the worker
        # node; more trials only trained more on the head.
        search.run(space, out=str(out), address=cluster.address, trials=2)
        assert killed, "no trial ever reported from the second node"
        records, _, _ = check_files_agree(out, 2)
        assert all(r["status"] == "ok" for r in records)
        lost = [r for r in records if r["ray_trial_id"] == killed[0]]
        assert lost and lost[0]["retries"] >= 1, "the trial on the lost node was run again"
        assert {r["node_id"] for r in records} <= {node.node_id for node in [cluster.head_node, worker]}
    finally:
        cluster.shutdown()
