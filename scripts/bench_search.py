#!/usr/bin/env python
"""Search overhead: the same trials run by ``nas-attn search --concurrent 2`` and by a plain loop.

The same N trials (fixed seed, the default space ``cluttered_resnet`` unless ``--space``)
run twice or three times:

1. ``nas-attn search --concurrent 2`` (Ray Tune + Optuna, one CPU and one torch thread per
   trial, as the search sets it), as a child process;
2. a plain sequential Optuna loop in one child process (``--seq-threads``, default ``2,1``: one
   run with 2 torch threads, i.e. the whole machine for one trial at a time, and one with 1
   thread). The loop asks an in-memory Optuna study with the same sampler and seed, builds the
   Arch with the same define-by-run (``SearchSpace.sample``), calls
   :func:`nas_attn.trial.run_trial` with a local ``report`` and tells the study the result.

With two trials at once, TPE proposes from different finished trials than a one-at-a-time loop
does, so a free-running loop would train different architectures. By default
(``--seq-archs same``) the loop therefore enqueues, in order, the Optuna parameters of the Ray
run's trials (read from its study journal): both runs train exactly the same architectures,
each checked against the Ray run's ``trials.jsonl``. ``--seq-archs sample`` lets the loop's own
sampler propose instead.

What is measured (all durations in seconds; ``time.perf_counter`` unless noted):

* ``wall``: from spawning the child process to its exit, measured in this process. It includes
  Python start-up, imports, Ray start and stop, data loading, everything.
* ``trial time`` of one trial: from the start of the trial function to its last report, in the
  process that runs it. Ray run: ``time_total_s`` of the trial's last result (Ray's clock in the
  worker); sequential loop: ``perf_counter`` around ``run_trial``. It includes building the
  model, cost and latency measurement, loading data (first trial of a process), training,
  validation, DSA's kept-fraction probe and writing the final weights.
* ``train/eval time`` of one trial: ``train_time_s`` of its last report (``perf_counter`` inside
  ``nas_attn.train.train`` around each epoch's training and validation).
* ``search overhead`` = ``wall - sum(trial time) / c`` with ``c`` trials at once (2 for the Ray
  run, 1 for the loop), as a percentage of ``sum(trial time) / c``: the wall time a perfect
  scheduler with zero start-up would not have spent. It is split into start-up (spawn -> first
  trial starts), tear-down (last trial ends -> exit) and idle worker slots in between (divided by
  ``c``; with ``c = 2`` this includes the tail where one trial runs alone). Trial start and end
  times in the Ray run come from the moment the driver prints each finished trial (read from its
  stdout here) minus the trial's ``time_total_s``.

The machine may be shared: the 1-, 5- and 15-minute load averages (``os.getloadavg``, the
numbers ``uptime`` prints) are recorded before and after each run, and the 1-minute load is
sampled every 5 s during it.

    python scripts/bench_search.py                      # 16 trials, space default epochs
    python scripts/bench_search.py --quick              # tiny smoke run (~1 min)
    python scripts/bench_search.py --write-md BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

SECTION_HEADING = "## Search overhead: Ray Tune vs a sequential loop"
SPACE_FILE = "bench_space.yaml"
SEQ_TRIALS_FILE = "trials.jsonl"
TARGET_OVERHEAD_PCT = 5.0
TARGET_WALL_RATIO = 0.8
TARGET_STARTUP_S = 6.0
TARGET_WORKER_RSS_BYTES = 1.5e9


# --------------------------------------------------------------------------------------------
# Shared with bench_search_quality.py

def load_now() -> List[float]:
    """1-, 5- and 15-minute load averages (what ``uptime`` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


class LoadSampler:
    """Samples the 1-minute load average every ``period_s`` seconds in a thread."""

    def __init__(self, period_s: float = 5.0):
        self.period_s, self.samples = period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.period_s)

    def __enter__(self):
        self.before = load_now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = load_now()

    def summary(self) -> Dict[str, Any]:
        mean = sum(self.samples) / len(self.samples) if self.samples else float("nan")
        return {"before": self.before, "after": self.after, "mean_1min": round(mean, 2),
                "max_1min": round(max(self.samples), 2) if self.samples else float("nan")}


def machine_facts() -> str:
    """One line: CPU model, cores, memory, OS, Python, torch."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    import torch
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def code_version() -> str:
    """The repository's commit, and whether the working tree differed from it."""
    import nas_attn
    root = Path(nas_attn.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nas_attn"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes in nas_attn/' if dirty else ''}" if commit else "unknown"


def format_load(load: Dict[str, Any]) -> str:
    return (f"{'/'.join(f'{x:.1f}' for x in load['before'])} -> {'/'.join(f'{x:.1f}' for x in load['after'])}"
            f" (mean 1-min {load['mean_1min']:.1f})")


def replace_section(path: Path, heading: str, body: str) -> None:
    """Put ``heading`` + ``body`` into a Markdown file, replacing only that section.

    The file is read right before writing (others edit other sections of it at the same time).
    A section runs from its ``## `` heading to the next ``## `` heading or the end of the file.
    A missing section is appended; a missing file is created with a title.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    new = [heading + "\n", "\n", body.rstrip("\n") + "\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        if lines and lines[-1].strip():
            lines.append("\n")
        lines += new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    text = "".join(lines).rstrip("\n") + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def recorded_command(script: str, argv: List[str]) -> str:
    """The command line as run, without the flags that only say where the report goes."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--write-md", "--note"):
            skip = True
            continue
        if arg.startswith(("--write-md=", "--note=")):
            continue
        kept.append(arg)
    return " ".join(["python", script, *kept])


def isolated_ray_env() -> Dict[str, str]:
    """Environment for a child that starts its own Ray.

    Ray's ``ray.init()`` without an address joins the cluster named in
    ``$RAY_TMPDIR/ray/ray_current_cluster`` (left there by ``ray start`` or by a test's
    ``ray.cluster_utils.Cluster``) instead of starting a new one; on a shared machine that file
    may belong to someone else. A private RAY_TMPDIR keeps the benchmark on its own Ray.
    """
    env = dict(os.environ)
    folder = Path(f"/tmp/nasattn-bench-ray-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    env["RAY_TMPDIR"] = str(folder)
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env.pop("RAY_ADDRESS", None)
    return env


def bench_space(space_name: str, trials: int, epochs: Optional[int], quick: bool):
    """The benchmark's space: ``space_name`` with the trial budget and epochs applied.

    ``--quick`` shrinks it to scikit-learn's plain digits at 16x16 and one epoch (a smoke test of
    the script, not a measurement): 1,258 training images that need no generating, against
    cluttered digits' 4,900 rendered in each worker.
    """
    from nas_attn.space import load
    space = load(space_name)
    if quick:
        space = space.with_overrides(data={"dataset": "digits", "image_size": 16}, train={"epochs": epochs or 1})
    return space.with_overrides(train={"epochs": epochs}, search={"trials": trials})


# --------------------------------------------------------------------------------------------
# The sequential loop (runs in a child process: ``--_sequential-worker``)

def sequential_worker(space_file: str, out: str, threads: int, replay: Optional[str]) -> None:
    import torch
    torch.set_num_threads(threads)
    import optuna

    from nas_attn import results
    from nas_attn.search import make_sampler
    from nas_attn.space import load
    from nas_attn.trial import run_trial, settings_from_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load(space_file)
    settings = settings_from_space(space)
    budget, epochs = space.search["trials"], space.train["epochs"]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The same sampler class and seed the search builds (nas_attn.search.make_sampler).
    study = optuna.create_study(directions=space.objective_directions(),
                                sampler=make_sampler(space.search["sampler"], space.search["seed"], space.search["trials"],
                                                     space.search.get("population"), space.search.get("startup_trials"),
                                                     space.search.get("sampler_options")))
    expected_archs: Dict[int, Any] = {}
    if replay:
        ray_study = results.open_study(replay)
        # The trials Ray trained, in order: the search answered repeated proposals (user
        # attribute repeat_of) from the record, so the loop skips them too, and its trial i is
        # the i-th trained one.
        trained = [t for t in sorted(ray_study.trials, key=lambda t: t.number)
                   if "repeat_of" not in t.user_attrs][:budget]
        for frozen in trained:
            study.enqueue_trial(frozen.params)
        recorded = {r["number"]: r["arch"] for r in results.read_trials(replay)}
        expected_archs = {index: recorded[t.number] for index, t in enumerate(trained) if t.number in recorded}
    else:
        for point in space.first_points():  # as the search does (points_to_evaluate)
            study.enqueue_trial(point)

    records = []
    for number in range(budget):
        ask_start = time.perf_counter()
        trial = study.ask()
        arch = space.sample(trial)
        ask_s = time.perf_counter() - ask_start
        last: Dict[str, Any] = {}

        def report(metrics, checkpoint_dir=None):
            last.clear()
            last.update(metrics)
            if checkpoint_dir:  # the search keeps each trial's final weights; so does the loop
                shutil.copytree(checkpoint_dir, out_dir / f"trial_{trial.number:04d}", dirs_exist_ok=True)

        start_unix = time.time()
        start = time.perf_counter()
        run_trial(arch, settings, report)
        trial_s = time.perf_counter() - start
        end_unix = time.time()
        tell_start = time.perf_counter()
        status = last.get("status", "failed")
        if status == "ok" and last.get("epoch", 0) >= epochs:
            study.tell(trial, [float(last[m]) for m in space.objective_metrics()])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        tell_s = time.perf_counter() - tell_start
        record = {"number": trial.number, "status": status, "arch": arch,
                  "metrics": {k: last[k] for k in ("accuracy", "effective_macs", "epoch", "train_time_s")
                              if k in last},
                  "trial_s": trial_s, "ask_s": ask_s, "tell_s": tell_s,
                  "start_unix": start_unix, "end_unix": end_unix}
        if trial.number in expected_archs:
            record["same_arch_as_ray"] = expected_archs[trial.number] == arch
        records.append(record)
        (out_dir / SEQ_TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"[{len(records):>3}/{budget}] trial {trial.number:>3} {status:<8} "
              f"acc {last.get('accuracy', float('nan')):.3f}  trial {trial_s:6.1f} s  "
              f"train/eval {last.get('train_time_s', 0.0):6.1f} s", flush=True)


# --------------------------------------------------------------------------------------------
# Running the children

def _proc_status(pid: int) -> Optional[Dict[str, Any]]:
    """Memory lines of /proc/PID/status in bytes (VmRSS, VmHWM, RssAnon, RssFile, RssShmem), and
    the process's title (Ray names its workers ``ray::...``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    fields = {"title": title}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "PPid"):
            parts = value.split()
            fields[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return fields


class RssSampler:
    """Peak memory of a process tree, from /proc every ``period_s`` (Linux only).

    For each descendant of ``root`` it keeps the largest VmHWM seen (the kernel's own peak
    resident set) and the RssAnon/RssFile/RssShmem split at its largest VmRSS sample: anonymous
    memory is the process's heap (tensors, datasets, models), file-backed is mapped libraries
    (torch's .so files count here, shared between processes), shmem is shared memory (Ray's
    object store lives in /dev/shm).
    """

    def __init__(self, root: int, period_s: float = 1.0):
        self.root, self.period_s = root, period_s
        self.peaks: Dict[int, Dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _descendants(self) -> List[int]:
        parents: Dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = {self.root}, [self.root]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sorted(tree)

    def sample(self) -> None:
        for pid in self._descendants():
            fields = _proc_status(pid)
            if not fields or "VmRSS" not in fields:
                continue
            peak = self.peaks.setdefault(pid, {"pid": pid, "title": fields["title"], "VmHWM": 0, "VmRSS": 0})
            if fields["title"].startswith("ray::"):
                peak["title"] = fields["title"]  # the worker renames itself once it runs a task
            peak["VmHWM"] = max(peak["VmHWM"], fields.get("VmHWM", 0))
            if fields["VmRSS"] >= peak["VmRSS"]:
                peak.update({k: fields.get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")})

    def _loop(self):
        while not self._stop.wait(self.period_s):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> Dict[str, Any]:
        """Peaks of the Ray workers that ran trials (titles ``ray::``, not Ray's agents) and of the root."""
        # Ray's per-node agents (ray::DashboardAgent, ray::RuntimeEnvAgent) run no trial
        ray_procs = [p for p in self.peaks.values() if p["title"].startswith("ray::") and "Agent" not in p["title"]]
        workers = [p for p in ray_procs if not p["title"].startswith("ray::IDLE")] or ray_procs
        root = self.peaks.get(self.root, {})
        return {"workers": sorted(workers, key=lambda p: -p["VmHWM"]), "root": root,
                "max_worker_hwm": max((p["VmHWM"] for p in workers), default=None),
                "root_hwm": root.get("VmHWM")}


def run_child(cmd: List[str], log_path: Path, env: Dict[str, str]) -> Dict[str, Any]:
    """Run ``cmd``, tee its output to ``log_path``, time it and each output line, and sample the
    memory of its process tree (:class:`RssSampler`)."""
    lines = []
    with LoadSampler() as load, open(log_path, "w") as log:
        spawn_unix = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        rss = RssSampler(proc.pid).__enter__()
        for line in proc.stdout:
            now = time.perf_counter() - start
            lines.append((now, line.rstrip("\n")))
            log.write(f"{now:9.3f} {line}")
            log.flush()
        code = proc.wait()
        wall_s = time.perf_counter() - start
        rss.__exit__(None, None, None)
    if code != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; last output:\n{tail}")
    return {"wall_s": wall_s, "spawn_unix": spawn_unix, "lines": lines, "load": load.summary(),
            "memory": rss.summary()}


def ray_trial_times(run_dir: Path) -> Dict[str, float]:
    """Ray trial id -> ``time_total_s`` of its last result (s)."""
    times = {}
    for result in (run_dir / "ray").glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            times[rows[-1]["trial_id"]] = float(rows[-1]["time_total_s"])
    return times


def summarise(name: str, concurrency: int, threads: int, child: Dict[str, Any],
              trials: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Overhead figures of one run from its per-trial times (see module docstring)."""
    wall = child["wall_s"]
    trial_total = sum(t["trial_s"] for t in trials)
    train_total = sum(t["train_eval_s"] for t in trials)
    ideal = trial_total / concurrency
    first_start = min(t["start_s"] for t in trials)
    last_end = max(t["end_s"] for t in trials)
    idle_slots = concurrency * (last_end - first_start) - trial_total
    return {
        "run": name, "concurrency": concurrency, "threads_per_trial": threads, "trials": len(trials),
        "epochs": sum(t["epochs"] for t in trials),
        "wall_s": wall, "trial_s": trial_total, "train_eval_s": train_total,
        "train_eval_share": train_total / trial_total if trial_total else float("nan"),
        "overhead_s": wall - ideal, "overhead_pct": 100.0 * (wall - ideal) / ideal if ideal else float("nan"),
        "startup_s": first_start, "teardown_s": wall - last_end, "idle_between_s": idle_slots / concurrency,
        "load": child["load"],
        # bytes: the largest VmHWM of a Ray worker (Ray run) or of the loop's process
        "peak_rss_bytes": child["memory"]["max_worker_hwm"] or child["memory"]["root_hwm"],
        "memory": child["memory"],
    }


def run_ray(space_file: Path, out: Path, concurrency: int) -> Dict[str, Any]:
    from nas_attn.results import read_trials
    run_dir = out / "ray_search"
    cmd = [str(Path(sys.executable).with_name("nas-attn")), "search", "--space", str(space_file),
           "--concurrent", str(concurrency), "--out", str(run_dir)]
    if not Path(cmd[0]).exists():
        cmd[:1] = [sys.executable, "-m", "nas_attn.cli"]
    print("$ " + " ".join(cmd), flush=True)
    child = run_child(cmd, out / "ray_search.log", isolated_ray_env())
    records = read_trials(run_dir)
    totals = ray_trial_times(run_dir)
    # The driver prints "[  k/N] trial n ..." as it records trial n: that moment is its end.
    ends = {}
    for moment, text in child["lines"]:
        if text.startswith("[") and "] trial" in text:
            ends[int(text.split("] trial", 1)[1].split()[0])] = moment
    trials = []
    for r in records:
        trial_s = totals.get(r["ray_trial_id"], 0.0)
        end = ends.get(r["number"], child["wall_s"])
        trials.append({"number": r["number"], "status": r["status"], "trial_s": trial_s,
                       "train_eval_s": float(r["metrics"].get("train_time_s", 0.0) or 0.0),
                       "epochs": int(r["metrics"].get("epoch", 0) or 0), "start_s": end - trial_s, "end_s": end})
    summary = summarise(f"nas-attn search --concurrent {concurrency}", concurrency, 1, child, trials)
    summary["run_dir"] = str(run_dir)
    summary["statuses"] = {s: sum(r["status"] == s for r in records) for s in {r["status"] for r in records}}
    return summary


def run_sequential(space_file: Path, out: Path, threads: int, replay: Optional[Path]) -> Dict[str, Any]:
    run_dir = out / f"sequential_{threads}thread"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_sequential-worker", "--space", str(space_file),
           "--out", str(run_dir), "--threads", str(threads)]
    if replay is not None:
        cmd += ["--replay", str(replay)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)  # Ray sets OMP_NUM_THREADS=1 in its workers likewise
    print("$ " + " ".join(cmd), flush=True)
    child = run_child(cmd, out / f"sequential_{threads}thread.log", env)
    records = [json.loads(line) for line in (run_dir / SEQ_TRIALS_FILE).read_text().splitlines()]
    trials = [{"number": r["number"], "status": r["status"], "trial_s": r["trial_s"],
               "train_eval_s": float(r["metrics"].get("train_time_s", 0.0) or 0.0),
               "epochs": int(r["metrics"].get("epoch", 0) or 0),
               "start_s": r["start_unix"] - child["spawn_unix"], "end_s": r["end_unix"] - child["spawn_unix"]}
              for r in records]
    summary = summarise(f"sequential Optuna loop, {threads} thread{'s' if threads > 1 else ''}", 1, threads,
                        child, trials)
    summary["run_dir"] = str(run_dir)
    summary["ask_tell_s"] = sum(r["ask_s"] + r["tell_s"] for r in records)
    if replay is not None:
        summary["same_archs"] = sum(bool(r.get("same_arch_as_ray")) for r in records)
    return summary


# --------------------------------------------------------------------------------------------
# Report

def markdown_table(rows: List[Dict[str, Any]]) -> str:
    header = ("| run | trials at once x torch threads | wall (s) | sum of trial time (s) | sum of train/eval (s) "
              "| train/eval share of trial time | search overhead (s) | search overhead (% of trial time / c) "
              "| start-up / idle slots / tear-down (s) | peak RSS per trial process (GB) "
              "| load avg 1/5/15 min before -> after |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['concurrency']} x {r['threads_per_trial']} | {r['wall_s']:.1f} | {r['trial_s']:.1f} "
            f"| {r['train_eval_s']:.1f} | {100 * r['train_eval_share']:.1f}% | {r['overhead_s']:.1f} "
            f"| {r['overhead_pct']:.1f}% | {r['startup_s']:.1f} / {r['idle_between_s']:.1f} / {r['teardown_s']:.1f} "
            f"| {_gb(r.get('peak_rss_bytes'))} | {format_load(r['load'])} |")
    return "\n".join(lines)


def _gb(value) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def is_ray_row(row: Dict[str, Any]) -> bool:
    return row["run"].startswith("nas-attn search")


def verdicts(rows: List[Dict[str, Any]]) -> List[str]:
    """MET/MISSED for each Ray run (overhead) and each Ray run / sequential run pair (wall ratio)."""
    out = []
    rays = [r for r in rows if is_ray_row(r)]
    sequential = [r for r in rows if not is_ray_row(r)]
    for k, ray in enumerate(rays, 1):
        which = f" (Ray run {k})" if len(rays) > 1 else ""
        ok = ray["overhead_pct"] <= TARGET_OVERHEAD_PCT
        steady = 100.0 * ray["idle_between_s"] / (ray["trial_s"] / ray["concurrency"])
        out.append(f"- Search overhead <= {TARGET_OVERHEAD_PCT:g}% of trial time{which}: **{'MET' if ok else 'MISSED'}** "
                   f"({ray['overhead_pct']:.1f}%: {ray['overhead_s']:.1f} s over {ray['trial_s'] / ray['concurrency']:.1f} s"
                   f" of trial time per slot; start-up {ray['startup_s']:.1f} s, idle slots {ray['idle_between_s']:.1f} s"
                   f" ({steady:.1f}%), tear-down {ray['teardown_s']:.1f} s).")
        ok = ray["startup_s"] <= TARGET_STARTUP_S
        out.append(f"- Search start-up (process start -> first trial running) <= {TARGET_STARTUP_S:g} s{which}: "
                   f"**{'MET' if ok else 'MISSED'}** ({ray['startup_s']:.1f} s).")
        if ray.get("peak_rss_bytes") is not None:
            ok = ray["peak_rss_bytes"] <= TARGET_WORKER_RSS_BYTES
            out.append(f"- Peak RSS per Ray worker <= {TARGET_WORKER_RSS_BYTES / 1e9:g} GB{which}: "
                       f"**{'MET' if ok else 'MISSED'}** ({ray['peak_rss_bytes'] / 1e9:.2f} GB VmHWM).")
    for k, ray in enumerate(rays, 1):
        which = f"Ray run {k}" if len(rays) > 1 else "Ray"
        for seq in sequential:
            ratio = ray["wall_s"] / seq["wall_s"]
            ok = ratio <= TARGET_WALL_RATIO
            out.append(f"- {which} wall <= {TARGET_WALL_RATIO:g}x the sequential loop with {seq['threads_per_trial']} "
                       f"torch thread{'s' if seq['threads_per_trial'] > 1 else ''}: **{'MET' if ok else 'MISSED'}** "
                       f"({ray['wall_s']:.1f} s / {seq['wall_s']:.1f} s = {ratio:.2f}x).")
    return out


def merge_results(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One result from several runs of this script on the same workload (rows in run order)."""
    first = results[0]
    for other in results[1:]:
        for key in ("space", "trials", "epochs", "sampler", "seed", "quick"):
            if other[key] != first[key]:
                raise ValueError(f"--from-summary: runs differ in {key}: {first[key]!r} vs {other[key]!r}")
    rows = [row for r in results for row in r["rows"]]
    rays = [row for row in rows if is_ray_row(row)]
    if len(rays) > 1:
        for k, row in enumerate(rays, 1):
            row["run"] = f"{row['run']} (run {k})"
    return {**first, "command": [r["command"] for r in results], "date": " / ".join(r["date"] for r in results),
            "code": " / ".join(sorted({r.get("code", "unknown") for r in results} - {"unknown"})) or "unknown",
            "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="cluttered_resnet", help="shipped space name or YAML path")
    parser.add_argument("--trials", type=int, default=16, help="trial budget (default 16)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once in the Ray run (default 2)")
    parser.add_argument("--seq-threads", default=None,
                        help="comma-separated torch thread counts of the sequential runs, or none "
                             "(default 2,1; 1 with --quick)")
    parser.add_argument("--seq-archs", choices=("same", "sample"), default="same",
                        help="same: the loop replays the Ray run's architectures; sample: its own sampler proposes")
    parser.add_argument("--quick", action="store_true", help="tiny smoke config: 2 trials, 1 epoch, 16x16 digits, one sequential run (1 thread)")
    parser.add_argument("--out", help="working folder (default: a new folder under /tmp)")
    parser.add_argument("--write-md", metavar="FILE", help="put the result section into this Markdown file")
    parser.add_argument("--note", default="", help="Markdown text added to the section (an analysis of the numbers)")
    parser.add_argument("--from-summary", metavar="JSON", nargs="+",
                        help="run nothing: print (and with --write-md write) the section of earlier runs' "
                             "summary.json files, rows merged in the order given")
    # the child-process side of the sequential loop
    parser.add_argument("--_sequential-worker", dest="worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--replay", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        sequential_worker(args.space, args.out, args.threads, args.replay)
        # The loop's process exits as the nas-attn program does (nas_attn.cli.console_main):
        # without the final collection, so both sides' tear-down is measured alike.
        import gc
        gc.freeze()
        return 0

    if args.from_summary:
        try:
            result = merge_results([json.loads(Path(f).read_text()) for f in args.from_summary])
        except ValueError as exc:
            parser.error(str(exc))
        result["rendered_from_summaries"] = True
        result["note"] = args.note
        emit(result, args.write_md)
        return 0
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    trials = 2 if args.quick and args.trials == 16 else args.trials
    seq_threads = args.seq_threads or ("1" if args.quick else "2,1")
    try:
        threads = [] if seq_threads == "none" else [int(t) for t in seq_threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--seq-threads must be 'none' or comma-separated integers, got {seq_threads!r}")
    if (not threads and seq_threads != "none") or (threads and min(threads) < 1):
        parser.error(f"--seq-threads must be 'none' or thread counts >= 1, got {seq_threads!r}")

    out = Path(args.out) if args.out else Path(f"/tmp/bench_search-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    space = bench_space(args.space, trials, args.epochs, args.quick)
    space_file = out / SPACE_FILE
    space_file.write_text(space.to_yaml())
    command = recorded_command("scripts/bench_search.py", argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now()
    print(f"{space.name}: {trials} trials x {space.train['epochs']} epochs, sampler {space.search['sampler']}, "
          f"seed {space.search['seed']}; working folder {out}", flush=True)

    ray = run_ray(space_file, out, args.concurrent)
    replay = Path(ray["run_dir"]) if args.seq_archs == "same" else None
    sequential = [run_sequential(space_file, out, n, replay) for n in threads] if threads else []
    rows = [ray] + sequential
    result = {"command": command.strip(), "date": started.isoformat(timespec="seconds"), "machine": machine_facts(),
              "code": code_version(),
              "space": space.name, "trials": trials, "epochs": space.train["epochs"],
              "sampler": space.search["sampler"], "seed": space.search["seed"], "quick": args.quick, "rows": rows}
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    result["note"] = args.note
    emit(result, args.write_md)
    return 0


def emit(result: Dict[str, Any], md_file: Optional[str]) -> None:
    """Print the section of a run's result and, with ``md_file``, put it into that file."""
    body = section_text(result)
    print("\n" + body, flush=True)
    if md_file:
        replace_section(Path(md_file), SECTION_HEADING, body)
        print(f"\nwrote section {SECTION_HEADING!r} of {md_file}")


def section_text(result: Dict[str, Any]) -> str:
    rows = result["rows"]
    same = [r.get("same_archs") for r in rows if "same_archs" in r]
    commands = result["command"] if isinstance(result["command"], list) else [result["command"]]
    lines = [
        ("Command: " if len(commands) == 1 else "Commands, in this order (rows below in the same order): ")
        + ", then ".join(f"`{c}`" for c in commands)
        + (" (this section rendered from their `summary.json` files with `--from-summary`)"
           if result.get("rendered_from_summaries") else "") + "  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}. The machine was shared with other jobs during the run; "
        f"load averages (`uptime`) are in the table.  ",
        *([f"Code: nas_attn at {result['code']}.  "] if result.get("code", "unknown") != "unknown" else []),
        f"Workload: space `{result['space']}`, {result['trials']} trials x {result['epochs']} epochs, "
        f"sampler {result['sampler']}, seed {result['seed']}"
        + (f"; the sequential loops trained exactly the Ray run's architectures "
           f"({', '.join(str(n) + '/' + str(result['trials']) for n in same)} identical, checked)" if same else "")
        + (". **--quick smoke config: not a measurement.**" if result["quick"] else "."),
        "",
        markdown_table(rows),
        "",
        "Targets:",
        "",
        *verdicts(rows),
        "",
        *([result["note"], ""] if result.get("note") else []),
        "Definitions (seconds): *wall* is spawn-to-exit of the process, timed with `time.perf_counter` "
        "(Python start, imports, Ray start/stop, data loading included). *Trial time* runs from the start of "
        "the trial function to its last report (Ray: the trial's `time_total_s`; loop: `perf_counter` around "
        "`run_trial`): model build, cost and latency measurement, data loading, training, validation, DSA "
        "probe, writing weights. *Train/eval* is `train_time_s` from `trials.jsonl` (`perf_counter` around each "
        "epoch's training and validation). *Search overhead* = wall - sum(trial time) / c, c = trials at once, "
        "shown as % of sum(trial time) / c; it splits into start-up (spawn -> first trial starts), idle trial "
        "slots between first start and last end (divided by c; includes the tail where one trial runs alone) "
        "and tear-down (last trial ends -> exit). *Peak RSS per trial process*: the largest VmHWM (the "
        "kernel's peak resident set, /proc/PID/status, sampled every second) of any Ray worker that ran a "
        "trial (Ray run) or of the loop's process (sequential runs), in GB (1e9 bytes).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
