"""The search: Ray Tune runs the trials, Optuna proposes them, a results folder keeps them.

``run(space, **overrides)`` is what ``nas-attn search`` calls. The study (an Optuna journal
file), Ray's experiment folder and our own ``trials.jsonl``/``pareto.json`` all live in one
results folder::

    runs/digits_resnet-20261122-101500/
      space.yaml        the space as run (flags applied)
      study.journal     the Optuna study (optuna-dashboard study.journal)
      trials.jsonl      one line per finished trial: number, status, arch, metrics
      pareto.json       the non-dominated finished trials
      ray/              Ray Tune's experiment (checkpoints with each trial's final weights)
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from . import pareto as pareto_mod
from .arch import arch_summary
from .space import SearchSpace, load
from .trial import REPORTED_METRICS, run_trial, settings_from_space
from .units import format_count

RAY_FOLDER = "ray"
STUDY_FILE = "study.journal"
TRIALS_FILE = "trials.jsonl"
PARETO_FILE = "pareto.json"
SPACE_FILE = "space.yaml"
STUDY_NAME = "nas_attn"


class SearchError(ValueError):
    """A search that cannot start (bad flag, missing data, unreachable cluster)."""


@dataclass
class SearchResult:
    """What a search leaves: every finished trial, the Pareto set, and where the files are."""
    run_dir: Path
    trials: List[Dict[str, Any]]
    pareto: List[Dict[str, Any]]
    space: SearchSpace


# --------------------------------------------------------------------------------------------
# Files that must never be half-written

def write_atomic(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_trials(run_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    """The records of ``trials.jsonl`` in a results folder (empty if none yet)."""
    path = Path(run_dir) / TRIALS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pareto_records(records: List[Dict[str, Any]], objectives: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The non-dominated records among those with status ``ok``, in trial order."""
    finished = [r for r in records if r["status"] == "ok"]
    metrics = [o["metric"] for o in objectives]
    directions = [o["direction"] for o in objectives]
    points = [[r["metrics"][m] for m in metrics] for r in finished]
    return [finished[i] for i in sorted(pareto_mod.non_dominated(points, directions))] if points else []


# --------------------------------------------------------------------------------------------
# Driver-side pieces handed to Ray (they are pickled into the experiment for --resume)

def trial_status(result: Optional[Dict[str, Any]], epochs: int, errored: bool = False) -> str:
    """ok / stopped / infeasible / failed, from the last result a trial reported."""
    if errored or not result:
        return "failed"
    status = result.get("status", "failed")
    if status == "ok" and result.get("epoch", 0) < epochs:
        return "stopped"  # a scheduler ended it before its last epoch
    return status


def constraint_values(frozen_trial) -> List[float]:
    """Optuna 4 ``constraints_func``: <= 0 is feasible (relative excess over each limit)."""
    return frozen_trial.user_attrs.get("constraints", [0.0])


def _has_set_constraint() -> bool:
    # Optuna 5 stores constraints on the trial (Trial.set_constraint) and deprecates the
    # samplers' constraints_func; Optuna 4 has only the latter.
    import optuna
    return hasattr(optuna.trial.Trial, "set_constraint")


def _make_sampler(name: str, seed: int):
    import optuna
    constraints = {} if _has_set_constraint() else {"constraints_func": constraint_values}
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **constraints)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **constraints)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"--sampler must be tpe, nsga2 or random, got {name!r}")


def _measured_or_worst(value, objective: Dict[str, Any]) -> float:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if objective["metric"] == "accuracy":
        return 0.0 if objective["direction"] == "maximize" else 1.0
    return -1e30 if objective["direction"] == "maximize" else 1e30


def _searcher_class():
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that tells Optuna what each trial really was.

        Ray's OptunaSearch tells every trial with values as COMPLETE; ours tells a trial the
        scheduler stopped as PRUNED, a failed one as FAIL with its reason, and an infeasible
        one as COMPLETE with a positive constraint value (so the sampler steers away from it
        and ``best_trials`` leaves it out), and stores the Arch and status
        as user attributes so the study alone is a full record.
        """

        def __init__(self, *args, epochs: int, objectives: List[Dict[str, Any]],
                     constraint_keys: List[str], run_dir: str, budget: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._epochs = epochs
            self._objectives = objectives
            self._constraint_keys = constraint_keys
            self._run_dir = run_dir
            self._budget = budget

        def suggest(self, trial_id: str):
            if trial_id not in self._ot_trials:
                # The budget counts recorded trials, not Ray's: after a driver crash Ray's
                # periodic snapshot may miss trials that trials.jsonl already holds.
                recorded = {r["number"] for r in read_trials(self._run_dir)}
                running = [t for tid, t in self._ot_trials.items()
                           if tid not in self._completed_trials and t.number not in recorded]
                if len(recorded) + len(running) >= self._budget:
                    return self.FINISHED
            config = super().suggest(trial_id)
            if config is not None:
                ot_trial = self._ot_trials[trial_id]
                config["trial_number"] = ot_trial.number
                ot_trial.set_user_attr("arch", config["arch"])
            return config

        def on_trial_complete(self, trial_id, result=None, error=False):
            import optuna
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
                # Told before the driver died; after --resume Ray replays the trial's end.
                self._completed_trials.add(trial_id)
                return
            status = trial_status(result, self._epochs, errored=error)
            ot_trial.set_user_attr("status", status)
            # Ray hands searchers flattened results: {"violations/max_params": 0.2}.
            violations = {k.split("/", 1)[1]: v for k, v in (result or {}).items() if k.startswith("violations/")}
            if _has_set_constraint():
                for key in self._constraint_keys:
                    ot_trial.set_constraint(key, violations.get(key, 0.0))
            else:
                ot_trial.set_user_attr("constraints", [violations.get(k, 0.0) for k in self._constraint_keys] or [0.0])
            values, state = None, optuna.trial.TrialState.FAIL
            if status == "ok":
                values, state = [float(result[o["metric"]]) for o in self._objectives], optuna.trial.TrialState.COMPLETE
            elif status == "infeasible":
                # Optuna needs finite values; what was never measured (accuracy) gets its worst
                # value. The positive constraint value is what marks the trial infeasible.
                values = [_measured_or_worst(result.get(o["metric"]), o) for o in self._objectives]
                state = optuna.trial.TrialState.COMPLETE
            elif status == "stopped":
                state = optuna.trial.TrialState.PRUNED
            else:
                ot_trial.set_user_attr("error", str((result or {}).get("error", "the trial raised"))[:2000])
            try:
                self._ot_study.tell(ot_trial, values, state=state)
            except Exception as exc:  # e.g. told already before a driver restart
                logging.getLogger(__name__).warning("could not tell trial %s: %s", ot_trial.number, exc)
            self._completed_trials.add(trial_id)

    return StudySearcher


def _recorder_class():
    from ray.tune import Callback

    class RunRecorder(Callback):
        """Writes trials.jsonl and pareto.json after every finished trial, and prints progress."""

        def __init__(self, run_dir: str, budget: int, epochs: int, objectives):
            self.run_dir, self.budget, self.epochs = run_dir, budget, epochs
            self.objectives = objectives
            self.records: List[Dict[str, Any]] = []

        def setup(self, **info):
            # On --resume this object comes back from Ray's pickle: the file is the truth.
            self.records = read_trials(self.run_dir)

        def _record(self, trial, errored: bool, error_text: str = ""):
            result = dict(trial.last_result or {})
            config = trial.config
            number = config.get("trial_number")
            if any(r["number"] == number for r in self.records):
                return  # a trial rerun after a driver restart is recorded once
            status = trial_status(result, self.epochs, errored=errored)
            metrics = {k: result[k] for k in ("accuracy", "macs", "effective_macs", "params",
                                              "elementwise_ops", "latency_ms", "epoch",
                                              "train_time_s", "val_loss", "train_loss") if k in result}
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
            write_atomic(Path(self.run_dir) / TRIALS_FILE,
                         "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
            write_atomic(Path(self.run_dir) / PARETO_FILE,
                         json.dumps(pareto_records(self.records, self.objectives), indent=1, sort_keys=True))
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
    return {**{name: nan for name in REPORTED_METRICS}, **record["metrics"], "status": record["status"],
            "replayed": True, **({"violations": record["violations"]} if record.get("violations") else {}),
            **({"error": record["error"]} if record.get("error") else {})}


class ArchSampler:
    """The define-by-run function given to OptunaSearch (a class: Ray pickles the searcher)."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> Dict[str, Any]:
        return {"arch": self.space.sample(trial)}


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

    if finished and config.get("trial_number") in finished:
        tune.report(finished[config["trial_number"]])
        return

    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    def report(metrics, checkpoint_dir=None):
        tune.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    run_trial(config["arch"], settings, report, gpu_ids=ray.get_gpu_ids(),
              extra={"node_id": context.get_node_id()})


# --------------------------------------------------------------------------------------------
# Formatting

def progress_line(record: Dict[str, Any], done: int, budget: int) -> str:
    m = record.get("metrics", {})
    acc = m.get("accuracy")
    acc_text = f"acc {acc:.3f}" if isinstance(acc, float) and math.isfinite(acc) else "acc -"
    tail = ""
    if record["status"] == "failed":
        tail = f"  ({str(record.get('error', ''))[:80]})"
    elif record["status"] == "infeasible":
        tail = f"  (breaks {', '.join(record.get('violations') or {})})"
    elif record["status"] == "stopped":
        tail = f"  (stopped after epoch {m.get('epoch')})"
    summary = arch_summary(record["arch"]) if record.get("arch") else "-"
    return (f"[{done:>3}/{budget}] trial {record['number']:>3}  {record['status']:<10} {acc_text}  "
            f"{format_count(m.get('macs'), 'MACs'):>14}  eff {format_count(m.get('effective_macs'), 'MACs'):>14}"
            f"  {summary}{tail}")


def pareto_table(records: List[Dict[str, Any]]) -> str:
    """A plain-text table of Pareto records (units in the header)."""
    header = f"{'trial':>5}  {'accuracy':>8}  {'MACs':>14}  {'eff. MACs':>14}  {'params':>10}  architecture"
    lines = [header, "-" * len(header)]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['number']:>5}  {m.get('accuracy', float('nan')):>8.3f}  "
                     f"{format_count(m.get('macs'), 'MACs'):>14}  {format_count(m.get('effective_macs'), 'MACs'):>14}  "
                     f"{format_count(m.get('params'), ''):>10}  {arch_summary(r['arch'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run

def _init_ray(address: Optional[str], verbose: bool, num_cpus: Optional[int] = None,
              allow_unauthenticated_cluster: bool = False):
    from .cluster import ClusterError, connect, start_local
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        if address:
            connect(address, verbose, allow_unauthenticated=allow_unauthenticated_cluster)
        else:
            start_local(num_cpus, verbose)
    except ClusterError as exc:
        raise SearchError(str(exc)) from None


def _check_address(address: Optional[str]) -> None:
    """Reject a malformed --address, and an unreachable one before Ray retries it for minutes."""
    if address is None or address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SearchError(f"--address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")
    import socket
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SearchError(f"could not connect to the Ray cluster at --address {address}: {exc}. "
                          f"Start one with `ray start --head` and pass its address (or 'auto').") from None


def _check_data(space: SearchSpace) -> None:
    """Fail before any trial if the dataset cannot be read (missing folder, wrong files)."""
    from .data import DataError
    from .trial import get_data
    try:
        get_data(space.data, space.search["seed"])
    except DataError as exc:
        raise SearchError(str(exc)) from None


def apply_overrides(space: SearchSpace, *, trials=None, concurrent=None, epochs=None, sampler=None,
                    seed=None, cpus_per_trial=None, gpus_per_trial=None, data_root=None,
                    early_stopping=None) -> SearchSpace:
    """The space with CLI flags applied (None leaves a value as the space has it), re-validated."""
    es = space.search.get("early_stopping")
    if early_stopping is not None:
        es = {"grace_epochs": 1, "reduction_factor": 3, **(es or {}), "enabled": early_stopping}
    resources = dict(space.search["resources"])
    if cpus_per_trial is not None:
        resources["cpu"] = cpus_per_trial
    if gpus_per_trial is not None:
        resources["gpu"] = gpus_per_trial
    return space.with_overrides(
        train={"epochs": epochs},
        search={"trials": trials, "concurrent": concurrent, "sampler": sampler, "seed": seed,
                "resources": resources, "early_stopping": es},
        data={"root": data_root})


def trial_resources(space: SearchSpace) -> Dict[str, float]:
    """What Ray reserves for each trial: ``{"cpu": c, "gpu": g}`` (g may be a fraction)."""
    return {"cpu": space.search["resources"]["cpu"], "gpu": space.search["resources"]["gpu"]}


def default_run_dir(space: SearchSpace) -> Path:
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(space: Union[SearchSpace, str, os.PathLike] = "digits_resnet", *, trials: Optional[int] = None,
        concurrent: Optional[int] = None, epochs: Optional[int] = None, sampler: Optional[str] = None,
        seed: Optional[int] = None, cpus_per_trial: Optional[float] = None,
        gpus_per_trial: Optional[float] = None, address: Optional[str] = None,
        out: Optional[Union[str, os.PathLike]] = None, resume: Optional[Union[str, os.PathLike]] = None,
        data_root: Optional[str] = None, early_stopping: Optional[bool] = None,
        verbose: bool = False, num_cpus: Optional[int] = None,
        allow_unauthenticated_cluster: bool = False) -> SearchResult:
    """Run (or with ``resume=DIR`` continue) a search; returns its trials and Pareto set.

    Keyword arguments override the space's ``search``/``train``/``data`` sections, exactly like
    the CLI flags of the same names. Ray always runs with token authentication
    (:mod:`nas_attn.cluster`); ``allow_unauthenticated_cluster`` lets ``address`` name a
    cluster that runs without it.
    """
    if address is None and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        # First: before any work, and before `import ray`, which reads whether a new node may
        # take 127.0.0.1 only then.
        from .cluster import ClusterError, prepare_local_environment
        try:
            prepare_local_environment()
        except ClusterError as exc:
            raise SearchError(str(exc)) from None
    _check_address(address)
    if resume is not None:
        run_dir = Path(resume).resolve()
        if not (run_dir / SPACE_FILE).is_file() or not (run_dir / RAY_FOLDER).is_dir():
            raise SearchError(f"--resume {resume}: not a nas-attn results folder "
                              f"(expected {SPACE_FILE} and {RAY_FOLDER}/ inside)")
        space = load(run_dir / SPACE_FILE)
    else:
        if not isinstance(space, SearchSpace):
            space = load(space)
        space = apply_overrides(space, trials=trials, concurrent=concurrent, epochs=epochs, sampler=sampler,
                                seed=seed, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                data_root=data_root, early_stopping=early_stopping)
        run_dir = Path(out) if out is not None else default_run_dir(space)
        run_dir = run_dir.resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SearchError(f"--out {run_dir} exists and is not empty; choose a new folder "
                              f"or continue it with --resume {run_dir}")
    _check_data(space)

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_ray = not ray.is_initialized()
    if started_ray:
        _init_ray(address, verbose, num_cpus, allow_unauthenticated_cluster)
    try:
        return _run(space, run_dir, resume is not None, verbose)
    finally:
        if started_ray:
            ray.shutdown()


def _run(space: SearchSpace, run_dir: Path, resuming: bool, verbose: bool) -> SearchResult:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune

    search = space.search
    budget, epochs = search["trials"], space.train["epochs"]
    objectives = space.objectives
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_atomic(run_dir / SPACE_FILE, space.to_yaml())

    settings = settings_from_space(space)
    finished = {r["number"]: replay_result(r) for r in read_trials(run_dir)} if resuming else {}
    trainable = tune.with_resources(tune.with_parameters(ray_trainable, settings=settings, finished=finished),
                                    trial_resources(space))
    recorder = _recorder_class()(str(run_dir), budget, epochs, objectives)

    print(f"nas-attn search: {space.name}, {budget} trials x {epochs} epochs, {search['concurrent']} at once, "
          f"sampler {search['sampler']}, results in {run_dir}", flush=True)
    if resuming:
        tuner = tune.Tuner.restore(str(run_dir / RAY_FOLDER), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        storage = JournalStorage(JournalFileBackend(str(run_dir / STUDY_FILE)))
        first = [space.baseline_params()] if space.baseline_params() else None
        define_by_run = ArchSampler(space)
        searcher = _searcher_class()(
            space=define_by_run, metric=space.objective_metrics(),
            mode=["max" if d == "maximize" else "min" for d in space.objective_directions()],
            sampler=_make_sampler(search["sampler"], search["seed"]), storage=storage,
            study_name=STUDY_NAME, points_to_evaluate=first,
            epochs=epochs, objectives=objectives, constraint_keys=sorted(space.constraints),
            run_dir=str(run_dir), budget=budget)
        scheduler = _make_scheduler(space)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=budget,
                                        max_concurrent_trials=search["concurrent"], reuse_actors=True,
                                        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
            run_config=tune.RunConfig(name=RAY_FOLDER, storage_path=str(run_dir), verbose=1 if verbose else 0,
                                      callbacks=[recorder],
                                      failure_config=tune.FailureConfig(max_failures=search["max_failures"])))
    tuner.fit()
    _close_orphans(run_dir)
    records = read_trials(run_dir)
    front = pareto_records(records, objectives)
    print(f"\nPareto set ({len(front)} of {len(records)} trials; objectives: "
          + ", ".join(f"{o['metric']} ({o['direction']})" for o in objectives) + ")")
    print(pareto_table(front))
    print(f"\nResults: {run_dir}\n  {TRIALS_FILE}, {PARETO_FILE}, {STUDY_FILE} (optuna-dashboard "
          f"{run_dir / STUDY_FILE}), {RAY_FOLDER}/")
    return SearchResult(run_dir=run_dir, trials=records, pareto=front, space=space)


def _make_scheduler(space: SearchSpace):
    es = space.search.get("early_stopping")
    if not es or not es.get("enabled", True):
        return None
    from .schedulers import MultiObjectiveASHA
    return MultiObjectiveASHA(metrics=space.objective_metrics(),
                              modes=["max" if d == "maximize" else "min" for d in space.objective_directions()],
                              time_attr="epoch", grace_period=es["grace_epochs"],
                              reduction_factor=es["reduction_factor"], max_t=space.train["epochs"])


def _close_orphans(run_dir: Path) -> None:
    """Mark study trials still RUNNING after the search as FAIL.

    When a driver dies, trials it had asked Optuna for but never started are left RUNNING in
    the journal; on --resume they are not Ray's to finish, so the study would disagree with
    trials.jsonl forever.
    """
    import optuna
    study = open_study(run_dir)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(frozen._trial_id, "error", "lost when the search driver stopped")
        study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)


def open_study(run_dir: Union[str, Path]):
    """The Optuna study of a results folder (read it with ``best_trials``, the dashboard, ...)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(Path(run_dir) / STUDY_FILE)))
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)
