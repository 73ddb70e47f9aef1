"""The Ray side of the search: what runs in a worker, and the callback that keeps trials.jsonl.

Everything here is pickled into Ray's experiment (for --resume), so the pieces are plain
functions and small classes.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ..metrics import RECORDED, REPORTED
from ..results import open_study, read_trials, trial_status, write_trials
from ..trial import run_trial
from ._text import progress_line


def recorder_class():
    from ray.tune import Callback

    class RunRecorder(Callback):
        """Writes trials.jsonl and pareto.json after every finished trial, and prints progress."""

        def __init__(self, run_dir: str, budget: int, epochs: int, objectives):
            self.run_dir, self.budget, self.epochs = run_dir, budget, epochs
            self.objectives = objectives
            self.records: List[Dict[str, Any]] = []
            self._study = None

        def __getstate__(self):
            return {**self.__dict__, "_study": None}  # reopened from the journal when needed

        def setup(self, **info):
            # On --resume this object comes back from Ray's pickle: the file is the truth.
            self.records = read_trials(self.run_dir)

        def _told_status(self, number) -> Optional[str]:
            """The status the searcher computed and told the study (Ray calls searchers first)."""
            if self._study is None:
                self._study = open_study(self.run_dir)
            return next((t.user_attrs.get("status") for t in self._study.get_trials(deepcopy=False)
                         if t.number == number), None)

        def _record(self, trial, errored: bool, error_text: str = ""):
            result = dict(trial.last_result or {})
            config = trial.config
            number = config.get("trial_number")
            if any(r["number"] == number for r in self.records):
                return  # a trial rerun after a driver restart is recorded once
            # Only a trial the searcher never saw (its snapshot and Ray's disagree after a driver
            # crash) has no status in the study; the same rule then gives it one here.
            status = self._told_status(number) or trial_status(result, self.epochs, errored=errored)
            metrics = {k: result[k] for k in RECORDED if k in result}
            record = {"number": number, "status": status, "arch": config.get("arch"), "metrics": metrics,
                      "ray_trial_id": trial.trial_id, "node_id": result.get("node_id"),
                      "retries": int(getattr(trial, "num_failures", 0) or 0),
                      "device": result.get("device")}
            if status == "infeasible":
                record["violations"] = result.get("violations")
            if status == "failed":
                record["error"] = result.get("error") or error_text or "the trial raised"
            checkpoint = getattr(trial, "checkpoint", None)
            if status == "ok" and checkpoint is not None:
                record["checkpoint"] = os.path.relpath(checkpoint.path, self.run_dir) \
                    if str(checkpoint.path).startswith(str(self.run_dir)) else str(checkpoint.path)
            self.records.append(record)
            self.records.sort(key=lambda r: r["number"])
            write_trials(self.run_dir, self.records, self.objectives)
            print(progress_line(record, len(self.records), self.budget), flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._record(trial, errored=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._record(trial, errored=True, error_text=str(getattr(trial, "error_file", "") or ""))

    return RunRecorder


def trial_dirname(trial) -> str:
    """Ray trial folders named by Optuna trial number (Ray's default lists every parameter)."""
    return f"trial_{trial.config.get('trial_number', 0):04d}_{trial.trial_id}"


def replay_result(record: Dict[str, Any]) -> Dict[str, Any]:
    """The last report of a recorded trial, as the trial made it (for --resume)."""
    nan = float("nan")
    return {**{name: nan for name in REPORTED}, **record["metrics"], "status": record["status"],
            "replayed": True, **({"violations": record["violations"]} if record.get("violations") else {}),
            **({"error": record["error"]} if record.get("error") else {})}


def ray_trainable(config: Dict[str, Any], settings: Dict[str, Any],
                  finished: Optional[Dict[int, Dict[str, Any]]] = None):
    """The function Ray runs in a worker for each trial.

    ``finished`` maps trial numbers already in trials.jsonl to their last report: after a
    driver crash Ray may not know a trial ended (its experiment snapshot is periodic), and
    such a trial is replayed from the record instead of being trained again.
    """
    import ray
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    skip_final_collection_at_exit()
    if finished and config.get("trial_number") in finished:
        tune.report(finished[config["trial_number"]])
        return

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    def report(metrics, checkpoint_dir=None):
        tune.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    try:
        run_trial(config["arch"], settings, report, gpu_ids=ray.get_gpu_ids(),
                  extra={"node_id": context.get_node_id()})
    finally:
        release_freed_memory()


_SKIPS_FINAL_COLLECTION = False


def skip_final_collection_at_exit() -> None:
    """Make this process's exit skip Python's last garbage collection (once per process).

    Tune ends its trial workers when the search ends, and they exit like any program: the
    last collection walks everything torch and timm made, about 1 CPU-s per worker (measured
    for a process that imported timm: 1.0-1.2 s, 0.2 s with ``gc.freeze()``), spent beside the
    driver's own tear-down. An exit hook freezes the collector instead (as
    ``nas_attn.cli.console_main`` does for the program); trials have reported, written and
    closed everything by then.
    """
    global _SKIPS_FINAL_COLLECTION
    if _SKIPS_FINAL_COLLECTION:
        return
    import atexit
    import gc
    atexit.register(gc.freeze)
    _SKIPS_FINAL_COLLECTION = True


def release_freed_memory() -> bool:
    """Give the memory a finished trial freed back to the system; True if glibc's
    ``malloc_trim`` ran.

    Why: Tune runs each trial in a new thread of a reused worker, and glibc serves each thread
    from its own malloc arena; what a trial frees stays mapped in its arena. Measured with
    scripts/bench_worker_memory.py (16 trials of the default space, 8 per worker): workers
    peaked at 1.62-1.70 GB RSS against 1.12 GB for the same trials in one thread, and at
    1.33-1.37 GB with this trim after each trial. Python's gc and torch's allocator cannot
    reach this; only ``malloc_trim`` can (Linux/glibc only, a no-op elsewhere).
    """
    import ctypes
    import gc
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
