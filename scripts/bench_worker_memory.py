#!/usr/bin/env python
"""Where a Ray worker's memory goes: peak RSS of each worker of a small search, against the
same trials in one plain process, and what a bare process holds after each import.

Everything is read from /proc/PID/status (Linux): ``VmHWM`` is the kernel's peak resident set
of a process; at the largest ``VmRSS`` sample the resident set splits into ``RssAnon`` (heap:
tensors, datasets, models, optimiser state), ``RssFile`` (mapped files, mostly shared
libraries such as torch's .so files, shared between processes) and ``RssShmem`` (shared
memory; Ray's object store lives in /dev/shm). Samples every second; sizes in GB (1e9 bytes).

1. ``nas-attn search`` (``--concurrent``, default 2) with ``--trials`` trials; every process
   Ray started is sampled; rows are the worker processes (titles ``ray::...``).
2. The sequential loop of ``scripts/bench_search.py`` (1 torch thread) trains the same
   architectures in one process.
3. Fresh processes that import torch; torch, timm and nas_attn's trial code; that plus Ray;
   that plus the space's dataset: what a worker holds before its first trial.

    python scripts/bench_worker_memory.py --quick                  # smoke run (tiny data, 2 trials)
    python scripts/bench_worker_memory.py --write-md BENCHMARKS.md # 16 trials of the default space
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_search as common  # noqa: E402  (shares the space set-up, child runner and /proc sampler)

SECTION_HEADING = "## Ray worker memory"

PROBES = [
    ("python + import torch", "import torch"),
    ("+ timm, nas_attn trial code", "import torch, timm, nas_attn.trial"),
    ("+ ray, ray.tune, the search's worker code", "import torch, timm, nas_attn.trial, ray, ray.tune, "
                                                  "nas_attn.search._ray"),
    ("+ the space's dataset (train and val tensors)", None),
]


def probe(code: str) -> Dict[str, Any]:
    script = (code + "\nimport json, pathlib\nfields = {}\n"
              "for line in pathlib.Path('/proc/self/status').read_text().splitlines():\n"
              "    k, _, v = line.partition(':')\n"
              "    if k in ('VmHWM', 'VmRSS', 'RssAnon', 'RssFile', 'RssShmem'):\n"
              "        fields[k] = int(v.split()[0]) * 1024\n"
              "print(json.dumps(fields))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_probe_code(space_file: Path) -> str:
    return ("import torch, timm, nas_attn.trial, ray, ray.tune, nas_attn.search._ray\n"
            "from nas_attn.space import load\nfrom nas_attn.trial import get_data\n"
            f"space = load({str(space_file)!r})\n"
            "data = get_data(space.data, space.search['seed'])\n")


def gb(value) -> str:
    return common._gb(value)


def section_text(result: Dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}`  ",
             f"Date: {result['date']}  ",
             f"Machine: {result['machine']}; load averages 1/5/15 min before -> after each run in the tables.  ",
             f"Workload: space `{result['space']}`, {result['trials']} trials x {result['epochs']} epochs, "
             f"{result['concurrent']} at once" + (". **--quick smoke config: not a measurement.**"
                                                 if result["quick"] else "."),
             "",
             "| process | peak RSS, VmHWM (GB) | at the largest RSS sample: anonymous / file-backed / shared memory (GB) |",
             "|---|---|---|"]
    for row in result["processes"]:
        lines.append(f"| {row['name']} | {gb(row.get('VmHWM'))} | {gb(row.get('RssAnon'))} / {gb(row.get('RssFile'))}"
                     f" / {gb(row.get('RssShmem'))} |")
    lines += ["", "What a fresh process holds after importing (VmRSS at the end of the import, GB):", "",
              "| process | VmRSS | anonymous / file-backed / shared memory |", "|---|---|---|"]
    for row in result["probes"]:
        lines.append(f"| {row['name']} | {gb(row.get('VmRSS'))} | {gb(row.get('RssAnon'))} / "
                     f"{gb(row.get('RssFile'))} / {gb(row.get('RssShmem'))} |")
    lines += ["", f"Search: {result['ray_load']}; loop: {result['seq_load']} (load average before -> after).", "",
              *([result["note"], ""] if result.get("note") else []),
              "RSS counts a page once per process that maps it: the file-backed part (torch's and Ray's "
              "shared libraries) is mostly the same physical memory in every worker, so the sum of workers' RSS "
              "overstates what the machine uses."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="cluttered_resnet", help="shipped space name or YAML path")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke config: 2 trials, 1 epoch, 16x16 images")
    parser.add_argument("--out", help="working folder (default: a new folder under /tmp)")
    parser.add_argument("--write-md", metavar="FILE", help="put the result section into this Markdown file")
    parser.add_argument("--note", default="", help="Markdown text added to the section")
    parser.add_argument("--from-json", metavar="JSON", help="run nothing: render an earlier run's memory.json")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        result["note"] = args.note or result.get("note", "")
        emit(result, args.write_md)
        return 0
    trials = 2 if args.quick and args.trials == 16 else args.trials
    out = Path(args.out) if args.out else Path(f"/tmp/bench_worker_memory-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    space = common.bench_space(args.space, trials, args.epochs, args.quick)
    space_file = out / common.SPACE_FILE
    space_file.write_text(space.to_yaml())
    started = datetime.datetime.now()

    ray = common.run_ray(space_file, out, args.concurrent)
    seq = common.run_sequential(space_file, out, 1, Path(ray["run_dir"]))
    processes = [{"name": f"Ray worker `{p['title']}` (pid {p['pid']})", **p} for p in ray["memory"]["workers"]]
    processes.append({"name": "search driver (`nas-attn search`)", **ray["memory"]["root"]})
    processes.append({"name": "sequential loop, same trials, one process", **seq["memory"]["root"]})
    probes = []
    for name, code in PROBES:
        probes.append({"name": name, **probe(code if code is not None else data_probe_code(space_file))})

    result = {"command": common.recorded_command("scripts/bench_worker_memory.py",
                                                 argv if argv is not None else sys.argv[1:]).strip(),
              "date": started.isoformat(timespec="seconds"), "machine": common.machine_facts(),
              "space": space.name, "trials": trials, "epochs": space.train["epochs"], "concurrent": args.concurrent,
              "quick": args.quick, "processes": processes, "probes": probes, "note": args.note,
              "ray_load": common.format_load(ray["load"]), "seq_load": common.format_load(seq["load"])}
    (out / "memory.json").write_text(json.dumps(result, indent=1))
    emit(result, args.write_md)
    return 0


def emit(result: Dict[str, Any], md_file) -> None:
    body = section_text(result)
    print("\n" + body, flush=True)
    if md_file:
        common.replace_section(Path(md_file), SECTION_HEADING, body)
        print(f"\nwrote section {SECTION_HEADING!r} of {md_file}")


if __name__ == "__main__":
    sys.exit(main())
