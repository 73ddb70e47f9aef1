"""A search's start: the space's YAML is checked before Ray starts; its second check (torch,
timm, the model, the data) runs in a thread while Ray starts, and a mistake found there stops
that Ray and leaves no results folder.

Ray is simulated here (``init_ray``, ``ray.is_initialized`` and ``ray.shutdown`` replaced) so
the order of events can be forced without timing: the fake Ray start waits until the second
check has begun, which happens only if the two run at the same time. The real start is run by
every search test that starts its own Ray (tests/test_plugins.py, the killed-driver test in
tests/test_search.py, scripts/bench_search.py's smoke test).
"""
import threading

import pytest

from nas_attn import search
from nas_attn.search import _driver
from nas_attn.space import SpaceDocument, SpaceError, read


class FakeRay:
    """Stands in for the Ray a search starts: records calls, and its start can wait for the
    space's second check to begin."""

    def __init__(self, monkeypatch, wait_for_second_pass=True, fail=None):
        import ray
        self.started = self.shut_down = 0
        self.running = False
        self.second_pass_began = threading.Event()
        self.saw_second_pass = None
        self.wait_for_second_pass, self.fail = wait_for_second_pass, fail
        build = SpaceDocument.build

        def watched_build(document):
            self.second_pass_began.set()
            return build(document)

        monkeypatch.setattr(SpaceDocument, "build", watched_build)
        monkeypatch.setattr(_driver, "init_ray", self.init_ray)
        monkeypatch.setattr(ray, "is_initialized", lambda: self.running)
        monkeypatch.setattr(ray, "shutdown", self.shutdown)

    def init_ray(self, *args, **kwargs):
        self.started += 1
        if self.wait_for_second_pass:
            # Set only by the space's second check: without the overlap this waits in vain.
            self.saw_second_pass = self.second_pass_began.wait(timeout=60)
        if self.fail is not None:
            raise self.fail
        self.running = True
        return None

    def shutdown(self):
        self.shut_down += 1
        self.running = False


NO_BLOCK = """\
name: no_block
model: {name: resnet18, args: {num_classes: 10, in_chans: 1}}
data: {dataset: digits, image_size: 16, val_fraction: 0.2}
train: {epochs: 1, batch_size: 32}
blocks:
  "layer9.*":
    attention: {choices: [none, se]}
"""


def test_the_second_check_runs_while_ray_starts_and_its_mistake_stops_that_ray(tmp_path, monkeypatch):
    fake = FakeRay(monkeypatch)
    space = tmp_path / "no_block.yaml"
    space.write_text(NO_BLOCK)
    out = tmp_path / "run"
    with pytest.raises(SpaceError, match="glob matches no block of the model") as caught:
        search.run(str(space), out=str(out))
    assert "no_block.yaml" in str(caught.value) and caught.value.line == 6
    assert fake.started == 1 and fake.saw_second_pass is True  # both at once
    assert fake.shut_down == 1 and not fake.running  # the Ray started for it is stopped
    assert not out.exists()  # nothing written: the same --out works once the space is fixed


def test_a_mistake_in_the_yaml_is_refused_before_ray_starts(tmp_path, monkeypatch):
    fake = FakeRay(monkeypatch, wait_for_second_pass=False)
    space = tmp_path / "typo.yaml"
    space.write_text(NO_BLOCK.replace("batch_size: 32", "batchsize: 32"))
    with pytest.raises(SpaceError, match="train.batchsize"):
        search.run(str(space), out=str(tmp_path / "run"))
    assert fake.started == 0 and fake.shut_down == 0


def test_a_data_folder_that_is_missing_is_found_while_ray_starts(tmp_path, monkeypatch):
    fake = FakeRay(monkeypatch)
    space = tmp_path / "cifar.yaml"
    space.write_text(NO_BLOCK.replace("layer9", "layer1").replace("in_chans: 1", "in_chans: 3").replace(
        "{dataset: digits,", f"{{dataset: cifar10, root: {tmp_path / 'nowhere'},"))
    with pytest.raises(search.SearchError, match="nowhere"):
        search.run(str(space), out=str(tmp_path / "run"))
    assert fake.saw_second_pass is True and fake.shut_down == 1
    assert not (tmp_path / "run").exists()


def test_when_both_fail_the_space_mistake_is_reported_and_without_it_the_ray_error(tmp_path, monkeypatch):
    # The space is the user's input, so its mistake comes first; Ray never started, so there
    # is nothing to stop.
    fake = FakeRay(monkeypatch, fail=search.SearchError("could not set up Ray's authentication token"))
    space = tmp_path / "no_block.yaml"
    space.write_text(NO_BLOCK)
    with pytest.raises(SpaceError, match="glob matches no block"):
        search.run(str(space), out=str(tmp_path / "run"))
    assert fake.shut_down == 0
    space.write_text(NO_BLOCK.replace("layer9", "layer1"))
    with pytest.raises(search.SearchError, match="authentication token"):
        search.run(str(space), out=str(tmp_path / "run"))
    assert fake.started == 2 and not (tmp_path / "run").exists()


def test_read_checks_only_the_yaml_and_build_gives_what_load_gives(tmp_path):
    space = tmp_path / "no_block.yaml"
    space.write_text(NO_BLOCK)
    document = read(space)  # the glob is the second pass's to check
    assert document.name == "no_block"
    with pytest.raises(SpaceError, match="glob matches no block"):
        document.build()
    space.write_text(NO_BLOCK.replace("layer9", "layer1"))
    built = read(space).build()
    assert built.to_yaml() == search.apply_overrides(built).to_yaml()
    assert [d.blocks for d in built.decisions] == [["layer1.0"], ["layer1.1"]]


# --------------------------------------------------------------------------------------------
# One driver per results folder (results.claim_results_folder), and the journal lock a killed
# driver leaves (results.release_stale_journal_lock).

HOLD = """\
import sys, time
from nas_attn.results import claim_results_folder
held = claim_results_folder(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_folder_is_held_by_one_process_and_let_go_when_it_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from nas_attn.results import ResultsError, claim_results_folder
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ResultsError, match="a search is still running in this folder") as caught:
            claim_results_folder(tmp_path)
        assert str(tmp_path / "driver.lock") in str(caught.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up code runs: the kernel lets go
        holder.wait()
    claimed = claim_results_folder(tmp_path)
    try:
        with pytest.raises(ResultsError):  # and now this process holds it
            claim_results_folder(tmp_path)
    finally:
        claimed.close()
    claim_results_folder(tmp_path).close()  # closed, it is free again


def _results_folder(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "ray").mkdir(parents=True)
    (run_dir / "space.yaml").write_text(NO_BLOCK.replace("layer9", "layer1"))
    (run_dir / "trials.jsonl").write_text("")
    return run_dir


def test_resume_refuses_a_folder_a_running_search_holds_before_ray_starts(tmp_path, monkeypatch, capsys):
    from nas_attn import cli
    from nas_attn.results import claim_results_folder
    fake = FakeRay(monkeypatch, wait_for_second_pass=False)
    run_dir = _results_folder(tmp_path)
    held = claim_results_folder(run_dir)  # as the search running there would
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    try:
        assert cli.main(["search", "--resume", str(run_dir)]) == 2
    finally:
        held.close()
    err = capsys.readouterr().err
    assert "--resume" in err and "a search is still running in this folder" in err
    assert fake.started == 0
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_the_journal_lock_a_killed_driver_left_is_removed_and_only_that(tmp_path):
    import os

    from optuna.storages.journal import JournalFileSymlinkLock

    from nas_attn.results import STUDY_FILE, release_stale_journal_lock, study_storage
    journal = tmp_path / STUDY_FILE
    lock_file = tmp_path / (STUDY_FILE + ".lock")  # Optuna's name for it
    study_storage(tmp_path).create_new_study(directions=[], study_name="before")
    assert JournalFileSymlinkLock(str(journal)).acquire()  # a driver killed while writing
    assert os.path.lexists(lock_file)
    assert release_stale_journal_lock(tmp_path) is True
    assert not os.path.lexists(lock_file)
    assert release_stale_journal_lock(tmp_path) is False  # nothing to remove
    storage = study_storage(tmp_path)  # and the journal is whole and writable at once
    storage.create_new_study(directions=[], study_name="after")
    assert sorted(s.study_name for s in storage.get_all_studies()) == ["after", "before"]
