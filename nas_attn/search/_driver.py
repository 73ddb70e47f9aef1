"""The search driver: Ray Tune runs the trials, Optuna proposes them, a results folder keeps them.

``run(space, **overrides)`` is what ``nas-attn search`` calls; :mod:`nas_attn.results`
describes the folder it writes.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from ..results import (PARETO_FILE, RAY_FOLDER, RAY_SESSIONS_FILE, SPACE_FILE, STUDY_FILE, STUDY_NAME, TRIALS_FILE,
                       ResultsError, claim_results_folder, pareto_records, read_trials, release_stale_journal_lock,
                       study_storage, write_atomic)
from ..plugins import PluginError, import_plugins
from ..space import SearchSpace, SpaceDocument, read
from ._base import SearchError, SearchResult
from ._optuna import ArchSampler, make_sampler, searcher_class
from ._text import pareto_table, repeats_text


# --------------------------------------------------------------------------------------------
# The run

def init_ray(address: Optional[str], verbose: bool, num_cpus: Optional[int] = None,
             allow_unauthenticated_cluster: bool = False):
    from ..cluster import ClusterError, connect, start_local
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        if address:
            connect(address, verbose, allow_unauthenticated=allow_unauthenticated_cluster)
        else:
            return start_local(num_cpus, verbose)
    except ClusterError as exc:
        raise SearchError(str(exc)) from None
    return None


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
    from ..data import DataError, check
    data = space.data
    try:
        check(data["dataset"], root=data.get("root"), image_size=data["image_size"],
              val_fraction=data["val_fraction"], seed=space.search["seed"], augment=data.get("augment", True))
    except DataError as exc:
        raise SearchError(str(exc)) from None


def apply_overrides(space: SearchSpace, *, trials=None, concurrent=None, epochs=None, sampler=None,
                    seed=None, cpus_per_trial=None, gpus_per_trial=None, data_root=None,
                    early_stopping=None, confirm=None, plugins=None) -> SearchSpace:
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
                "resources": resources, "early_stopping": es, "confirm": confirm},
        data={"root": data_root}, plugins=plugins)


def trial_resources(space: SearchSpace) -> Dict[str, float]:
    """What Ray reserves for each trial: ``{"cpu": c, "gpu": g}`` (g may be a fraction)."""
    return {"cpu": space.search["resources"]["cpu"], "gpu": space.search["resources"]["gpu"]}


def default_run_dir(space: Union[SearchSpace, SpaceDocument]) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (local time) in the current folder."""
    return Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(space: Union[SearchSpace, str, os.PathLike] = "cluttered_resnet", *, trials: Optional[int] = None,
        concurrent: Optional[int] = None, epochs: Optional[int] = None, sampler: Optional[str] = None,
        seed: Optional[int] = None, cpus_per_trial: Optional[float] = None,
        gpus_per_trial: Optional[float] = None, address: Optional[str] = None,
        out: Optional[Union[str, os.PathLike]] = None, resume: Optional[Union[str, os.PathLike]] = None,
        data_root: Optional[str] = None, early_stopping: Optional[bool] = None,
        confirm: Optional[int] = None, verbose: bool = False, num_cpus: Optional[int] = None,
        allow_unauthenticated_cluster: bool = False, plugins: Optional[List[str]] = None) -> SearchResult:
    """Run (or with ``resume=DIR`` continue) a search; returns its trials and Pareto set.

    Keyword arguments override the space's ``search``/``train``/``data`` sections, exactly like
    the CLI flags of the same names. Ray always runs with token authentication
    (:mod:`nas_attn.cluster`); ``allow_unauthenticated_cluster`` lets ``address`` name a
    cluster that runs without it. ``plugins`` names modules that register attention modules
    (:mod:`nas_attn.plugins`); they join the space's ``plugins`` and are imported in every worker.
    """
    # The folder's lock (claim_results_folder), once taken, is let go however run() ends.
    with contextlib.ExitStack() as held:
        connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if address is None and not connected:
            # First: before any work, and before `import ray`, which reads whether a new node may
            # take 127.0.0.1 only then.
            from ..cluster import ClusterError, prepare_local_environment
            try:
                prepare_local_environment()
            except ClusterError as exc:
                raise SearchError(str(exc)) from None
        if address is not None and connected:
            # A driver talks to one Ray at a time: searching the one already running would
            # silently ignore --address.
            raise SearchError(f"--address {address}: this process is already connected to Ray; "
                              f"call ray.shutdown() before searching on another cluster")
        _check_address(address)
        try:
            import_plugins(plugins)  # before the space is read: it may name the modules they register
        except PluginError as exc:
            raise SearchError(str(exc)) from None
        if resume is not None:
            # Tuner.restore keeps the experiment as it started (budget, trainable settings, the
            # searcher's sampler): a changed flag would be ignored silently, so it is refused.
            given = {flag: value for flag, value in (
                ("--trials", trials), ("--concurrent", concurrent), ("--epochs", epochs), ("--sampler", sampler),
                ("--seed", seed), ("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial),
                ("--data-root", data_root), ("--early-stopping", early_stopping), ("--confirm", confirm))
                if value is not None}
            if given:
                raise SearchError(f"--resume {resume} continues the search exactly as recorded in its {SPACE_FILE}; "
                                  f"{', '.join(given)} cannot change it (Ray restores the experiment with its "
                                  f"budget, concurrency and settings). Start a new search with --out to change them.")
            run_dir = Path(resume).resolve()
            if not (run_dir / SPACE_FILE).is_file() or not (run_dir / RAY_FOLDER).is_dir():
                raise SearchError(f"--resume {resume}: not a nas-attn results folder "
                                  f"(expected {SPACE_FILE} and {RAY_FOLDER}/ inside)")
            try:
                claimed = claim_results_folder(run_dir)
            except ResultsError as exc:
                raise SearchError(f"--resume: {exc}") from None
            if claimed is not None:
                held.callback(claimed.close)
            if release_stale_journal_lock(run_dir):
                print(f"removed the lock on {run_dir / STUDY_FILE} left by the search that was stopped "
                      f"while writing it", file=sys.stderr)
            document = read(run_dir / SPACE_FILE)
            read_trials(run_dir)  # a damaged trials.jsonl is named now, before Ray starts

            def prepare() -> SearchSpace:
                restored = document.build()
                _check_data(restored)
                return restored
        else:
            document = space if isinstance(space, (SearchSpace, SpaceDocument)) else read(space)
            run_dir = Path(out) if out is not None else default_run_dir(document)
            run_dir = run_dir.resolve()
            if run_dir.exists() and any(run_dir.iterdir()):
                raise SearchError(f"--out {run_dir} exists and is not empty; choose a new folder "
                                  f"or continue it with --resume {run_dir}")

            def prepare() -> SearchSpace:
                built = document.build() if isinstance(document, SpaceDocument) else document
                built = apply_overrides(built, trials=trials, concurrent=concurrent, epochs=epochs, sampler=sampler,
                                        seed=seed, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                        data_root=data_root, early_stopping=early_stopping, confirm=confirm,
                                        plugins=plugins)
                _check_data(built)
                return built

        import optuna
        import ray

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        started_ray = not ray.is_initialized()
        if resume is not None and (run_dir / RAY_SESSIONS_FILE).is_file():
            from ..cluster import stop_orphans
            for session_dir in (run_dir / RAY_SESSIONS_FILE).read_text().split():
                ended = stop_orphans(session_dir)
                if ended:
                    print(f"ended {len(ended)} Ray process(es) left running by the killed search "
                          f"(PIDs {', '.join(map(str, ended))})", file=sys.stderr)
        session_dir = None
        if not started_ray:
            space = prepare()
        else:
            space, session_dir = _prepare_while_ray_starts(
                prepare, lambda: init_ray(address, verbose, num_cpus, allow_unauthenticated_cluster))
        try:
            check_resources(trial_resources(space), ray.cluster_resources())  # before the folder is made
            if resume is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                try:
                    claimed = claim_results_folder(run_dir)
                except ResultsError as exc:  # another search took the new folder first
                    raise SearchError(f"--out {exc}") from None
                if claimed is not None:
                    held.callback(claimed.close)
            if started_ray and session_dir:
                with open(run_dir / RAY_SESSIONS_FILE, "a") as handle:
                    handle.write(session_dir + "\n")
            return _run(space, run_dir, resume is not None, verbose)
        except KeyboardInterrupt:
            # Tune usually ends fit() itself on Ctrl+C (then _run says so); a second Ctrl+C lands here.
            print(f"\ninterrupted after {len(read_trials(run_dir))} of {space.search['trials']} trials; "
                  f"continue with nas-attn search --resume {run_dir}", file=sys.stderr)
            raise
        finally:
            if started_ray:
                ray.shutdown()


def _prepare_while_ray_starts(prepare: Callable[[], SearchSpace], start_ray: Callable[[], Optional[str]]):
    """``(prepare(), start_ray())``, the first in a thread while this one starts Ray.

    Both take seconds and share little: ``prepare`` is the space's second check, which imports
    torch and timm (3-5 s of one core), then reads the data; Ray's start is mostly its own
    processes coming up on the other core (2-3 s). Overlapped, a search reaches its first trial
    1.5-2 s sooner (measured idle, BENCHMARKS.md). A mistake ``prepare`` finds is the user's
    input and is raised first, after the Ray started for it is stopped, so nothing is left
    running.
    """
    import ray
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nas-attn-space-check") as pool:
        prepared = pool.submit(prepare)
        start_error: Optional[BaseException] = None
        session_dir = None
        try:
            session_dir = start_ray()
        except BaseException as exc:  # Ctrl+C too: the space check still ends before we leave
            start_error = exc
        try:
            space = prepared.result()
        except BaseException:
            if ray.is_initialized():
                ray.shutdown()
            raise
    if start_error is not None:
        raise start_error
    return space, session_dir


def _run(space: SearchSpace, run_dir: Path, resuming: bool, verbose: bool) -> SearchResult:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from ..trial import settings_from_space
    from ._ray import ray_trainable, recorder_class, replay_result, trial_dirname

    # Tune adds CSV, JSON and TensorBoard loggers to every search; the results folder and
    # --resume need none of them (trials.jsonl, the study journal and Tune's experiment state
    # are the record), and the TensorBoard one imports tensorboardX in the driver and writes an
    # event file per trial. _run keeps the JSON logger only: result.json is the per-epoch
    # history (time_total_s) the search benchmark reads.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

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
    recorder = recorder_class()(str(run_dir), budget, epochs, objectives)

    print(f"nas-attn search: {space.name}, {budget} trials x {epochs} epochs, {search['concurrent']} at once, "
          f"sampler {search['sampler']}, results in {run_dir}", flush=True)
    if resuming:
        tuner = tune.Tuner.restore(str(run_dir / RAY_FOLDER), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        storage = study_storage(run_dir)
        first = space.first_points() or None
        define_by_run = ArchSampler(space)
        searcher = searcher_class()(
            define_by_run, sampler=make_sampler(search["sampler"], search["seed"], budget, search.get("population"),
                                                search.get("startup_trials"), search.get("sampler_options")),
            storage=storage,
            study_name=STUDY_NAME, objectives=objectives, points_to_evaluate=first,
            epochs=epochs, constraint_keys=sorted(space.constraints), run_dir=str(run_dir), budget=budget)
        scheduler = _make_scheduler(space)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=budget,
                                        max_concurrent_trials=search["concurrent"], reuse_actors=True,
                                        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
            run_config=tune.RunConfig(name=RAY_FOLDER, storage_path=str(run_dir), verbose=1 if verbose else 0,
                                      callbacks=[recorder, JsonLoggerCallback()],
                                      failure_config=tune.FailureConfig(max_failures=search["max_failures"])))
    tuner.fit()
    study = _close_orphans(run_dir)
    records = read_trials(run_dir)
    if search.get("confirm"):
        from ._confirm import confirm
        records = confirm(space, run_dir, records, objectives, search["concurrent"], trial_resources(space))
    front = pareto_records(records, objectives)
    interrupted = len(records) < budget
    ok = sum(1 for r in records if r["status"] == "ok")
    if front:
        title = "Partial Pareto set, so far" if interrupted else "Pareto set"
        print(f"\n{title} ({len(front)} of {len(records)} trials; objectives: "
              + ", ".join(f"{o['metric']} ({o['direction']})" for o in objectives) + ")")
        print(pareto_table(front))
    repeats = repeats_text(*_repeat_counts(study))
    if repeats:
        print("\n" + "\n".join(repeats))
    print(f"\nResults: {run_dir}\n  {TRIALS_FILE}, {PARETO_FILE}, {STUDY_FILE} (optuna-dashboard "
          f"{run_dir / STUDY_FILE}), {RAY_FOLDER}/")
    if interrupted:
        print(f"\ninterrupted after {len(records)} of {budget} trials; continue with "
              f"nas-attn search --resume {run_dir}", file=sys.stderr)
    elif not ok:
        print(f"\nno trial finished: {len(records)} of {budget} trials ended "
              + ", ".join(f"{n} {status}" for status, n in sorted(_status_counts(records).items()))
              + f" (reasons in {run_dir / TRIALS_FILE})", file=sys.stderr)
    return SearchResult(run_dir=run_dir, trials=records, pareto=front, space=space, interrupted=interrupted)


def _status_counts(records) -> Dict[str, int]:
    return Counter(record["status"] for record in records)


def check_resources(per_trial: Dict[str, float], cluster: Dict[str, float]) -> None:
    """Refuse a per-trial request no node set of the cluster can ever meet (Ray would wait forever).

    ``per_trial``: ``{"cpu": c, "gpu": g}``; ``cluster``: ``ray.cluster_resources()`` (``CPU``, ``GPU``).
    """
    for key, ray_key, flag, space_key in (("cpu", "CPU", "--cpus-per-trial", "search.resources.cpu"),
                                          ("gpu", "GPU", "--gpus-per-trial", "search.resources.gpu")):
        asked, present = float(per_trial.get(key) or 0), float(cluster.get(ray_key, 0))
        if asked > present:
            raise SearchError(f"each trial asks for {asked:g} {ray_key}(s) ({flag} / {space_key}), but the Ray "
                              f"cluster has {present:g} in all; lower {flag} or run on a cluster that has them")


def _make_scheduler(space: SearchSpace):
    es = space.search.get("early_stopping")
    if not es or not es.get("enabled", True):
        return None
    from ..schedulers import MultiObjectiveASHA
    return MultiObjectiveASHA(metrics=space.objective_metrics(),
                              modes=["max" if d == "maximize" else "min" for d in space.objective_directions()],
                              time_attr="epoch", grace_period=es["grace_epochs"],
                              reduction_factor=es["reduction_factor"], max_t=space.train["epochs"])


def _repeat_counts(study):
    """(answered, set aside): the study's trials the searcher told for a repeated architecture
    (user attribute ``repeat_of``) with the trained trial's values, and those told FAIL."""
    import optuna
    repeats = [t for t in study.get_trials(deepcopy=False) if "repeat_of" in t.user_attrs]
    answered = sum(1 for t in repeats if t.state == optuna.trial.TrialState.COMPLETE)
    return answered, len(repeats) - answered


def _close_orphans(run_dir: Path):
    """Mark study trials still RUNNING after the search as FAIL; returns the study (loaded once
    for this and the summary: loading replays the whole journal).

    When a driver dies, trials it had asked Optuna for but never started are left RUNNING in
    the journal; on --resume they are not Ray's to finish, so the study would disagree with
    trials.jsonl forever.
    """
    import optuna
    storage = study_storage(run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        storage.set_trial_user_attr(trial_id, "error", "lost when the search driver stopped")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    return study

