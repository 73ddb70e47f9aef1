"""The results folder of a search: its file names, how each file is written and read back.

::

    runs/digits_resnet-20261122-101500/
      space.yaml        the space as run (flags applied)
      study.journal     the Optuna study (optuna-dashboard study.journal)
      trials.jsonl      one line per finished trial: number, status, arch, metrics
      pareto.json       the non-dominated finished trials
      ray/              Ray Tune's experiment (checkpoints with each trial's final weights)
      ray_sessions.txt  the local Ray instances the search started (for --resume after a kill)
      driver.lock       locked while a search driver writes the folder

The search writes this folder; export, plot and report only read it, through this module, so
they never import the Ray/Optuna driver.
"""
from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import pareto as pareto_mod

PathLike = Union[str, os.PathLike]

SPACE_FILE = "space.yaml"
STUDY_FILE = "study.journal"
TRIALS_FILE = "trials.jsonl"
PARETO_FILE = "pareto.json"
RAY_FOLDER = "ray"
# One line per local Ray instance a search started here (its session folder), for --resume to
# end what a killed driver left running (nas_attn.cluster.stop_orphans).
RAY_SESSIONS_FILE = "ray_sessions.txt"
# Held (flock) by the search driver writing the folder, for its whole life: the kernel lets go
# when the process ends, however it ends (see claim_results_folder).
DRIVER_LOCK_FILE = "driver.lock"
STUDY_NAME = "nas_attn"
#: The trained weights in a trial's checkpoint and in an exported folder (safetensors).
WEIGHTS_FILE = "model.safetensors"
#: Trial outcomes, as recorded in trials.jsonl and in the study's ``status`` user attribute.
STATUSES = ("ok", "stopped", "infeasible", "failed")


class ResultsError(ValueError):
    """A folder that is not a (readable) results folder: names the file, line and what was wrong."""


def trial_status(result: Optional[Dict[str, Any]], epochs: int, errored: bool = False) -> str:
    """ok / stopped / infeasible / failed, from the last result a trial reported.

    The one status rule: the search computes it once per trial, tells the study and writes it
    into trials.jsonl.
    """
    if errored or not result:
        return "failed"
    status = result.get("status", "failed")
    if status == "ok" and result.get("epoch", 0) < epochs:
        return "stopped"  # a scheduler ended it before its last epoch
    return status


def write_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_trials(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The records of ``trials.jsonl`` in a results folder, in file order (empty if none yet).

    Raises :class:`ResultsError` naming the file and line of a line that is not a JSON record
    with ``number`` and ``status``.
    """
    path = Path(run_dir) / TRIALS_FILE
    if not path.exists():
        return []
    records = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}:{line_number}: not one JSON record per line ({exc})") from None
        if not isinstance(record, dict) or "number" not in record or "status" not in record:
            raise ResultsError(f"{path}:{line_number}: record lacks 'number' or 'status': {line[:200]}")
        records.append(record)
    return records


def objective_value(record: Dict[str, Any], metric: str) -> float:
    """A record's value of ``metric``: for accuracy, the mean over seeds once confirmed."""
    if metric == "accuracy" and isinstance(record.get("confirm"), dict):
        return record["confirm"]["mean"]
    return record["metrics"][metric]


def pareto_records(records: Sequence[Dict[str, Any]], objectives: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The non-dominated records among those with status ``ok``, in trial order.

    After a confirmation step (records with ``confirm``) only the confirmed records compete,
    by their mean accuracy over seeds: the others were already dominated on one seed.
    """
    finished = [r for r in records if r["status"] == "ok"]
    if any("confirm" in r for r in finished):
        finished = [r for r in finished if "confirm" in r]
    metrics = [o["metric"] for o in objectives]
    directions = [o["direction"] for o in objectives]
    points = [[objective_value(r, m) for m in metrics] for r in finished]
    return [finished[i] for i in sorted(pareto_mod.non_dominated(points, directions))] if points else []


def write_trials(run_dir: PathLike, records: Sequence[Dict[str, Any]], objectives: Sequence[Dict[str, Any]]) -> None:
    """Write trials.jsonl (records by trial number) and pareto.json, each atomically."""
    run_dir = Path(run_dir)
    ordered = sorted(records, key=lambda r: r["number"])
    write_atomic(run_dir / TRIALS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    write_atomic(run_dir / PARETO_FILE, json.dumps(pareto_records(ordered, objectives), indent=1, sort_keys=True))


def load_space(run_dir: PathLike):
    """The SearchSpace a results folder was run with (its space.yaml)."""
    from .space import load
    return load(Path(run_dir) / SPACE_FILE)


def check_folder(run_dir: PathLike, required: Sequence[str] = (SPACE_FILE, TRIALS_FILE)) -> Path:
    """``run_dir`` as a Path, or :class:`ResultsError` if it is not a folder holding ``required``."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ResultsError(f"run folder {str(run_dir)!r} does not exist or is not a folder")
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise ResultsError(f"{str(run_dir)!r} is not a nas-attn results folder: {', '.join(missing)} "
                           f"missing (a results folder holds {SPACE_FILE}, {TRIALS_FILE} and {PARETO_FILE})")
    return path


def finished_records(run_dir: PathLike, records: Sequence[Dict[str, Any]], objectives) -> List[Dict[str, Any]]:
    """The records with status ``ok``; :class:`ResultsError` if one lacks a finite objective."""
    finished = [r for r in records if r["status"] == "ok"]
    for record in finished:
        for objective in objectives:
            value = (record.get("metrics") or {}).get(objective["metric"])
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ResultsError(f"{Path(run_dir) / TRIALS_FILE}: trial {record['number']} has status ok but "
                                   f"no finite {objective['metric']} (an objective); got {value!r}")
    return finished


def status_counts(records: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Trials per status, in the order ok, stopped, infeasible, failed (then any other)."""
    counts = {status: 0 for status in STATUSES}
    for record in records:
        status = record.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
    return counts


def open_study(run_dir: PathLike):
    """The Optuna study of a results folder (read it with ``best_trials``, the dashboard, ...)."""
    import optuna
    return optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run_dir))


def claim_results_folder(run_dir: PathLike):
    """Lock ``run_dir`` for this process, the one search driver that may write it; returns the
    open lock file, to keep for as long as the search runs (closing it lets go).

    Raises :class:`ResultsError` when another live process holds it (a search still running
    there). An exclusive ``flock`` on ``driver.lock``: the kernel releases it when its process
    ends, also on SIGKILL, so a folder whose driver was killed is never locked out. Why not a
    PID file: a PID can be reused, and a dead driver's file would have to be guessed stale.
    Where ``fcntl`` does not exist (not POSIX), nothing is locked and None is returned.
    """
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(run_dir) / DRIVER_LOCK_FILE
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ResultsError(f"{run_dir}: a search is still running in this folder (another process holds "
                           f"{path}); wait for it to end or stop it first") from None
    return handle


def release_stale_journal_lock(run_dir: PathLike) -> bool:
    """Remove the study journal's write lock a killed driver left behind; True if there was one.

    Call only while :func:`claim_results_folder` holds the folder: then no other driver can be
    writing the journal (export, plot and report only read it, without the lock). Optuna
    itself breaks a lock only after it has stood unchanged for 30 s, so a ``--resume`` after
    a driver killed mid-write would otherwise wait that long.
    """
    from optuna.storages.journal import JournalFileSymlinkLock
    try:
        JournalFileSymlinkLock(str(Path(run_dir) / STUDY_FILE)).release()
    except RuntimeError:  # no lock file: the driver died between writes
        return False
    return True


def study_storage(run_dir: PathLike):
    """The Optuna journal storage of a results folder."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    return JournalStorage(JournalFileBackend(str(Path(run_dir) / STUDY_FILE)))


class PickledState:
    """``save``/``restore`` of Ray Tune's searcher and scheduler checkpoints: the object's
    ``__dict__``, pickled. First in a class's bases, so that these replace Ray's abstract ones.

    Ray calls them with files in the experiment folder it wrote itself (for ``--resume``), as
    with Ray's own schedulers; they never read a file a user names.
    """

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
