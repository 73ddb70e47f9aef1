"""The confirmation step (``search.confirm: K``, ``--confirm K``): the Pareto set trained again
with K more seeds, so the final Pareto set stands on a mean over seeds, not on one lucky run.

Each retraining is one Ray task running :func:`nas_attn.trial.run_trial` with the trial's
Arch and seed ``search.seed + i`` (i = 1..K); the data and the validation images stay the
same. The trial's record in trials.jsonl gains ``confirm``: the seeds, their accuracies, the
mean and its 95% interval over seeds (Student's t, :func:`nas_attn.intervals.mean_interval`).
pareto.json is then the non-dominated set of the confirmed trials by mean accuracy
(:func:`nas_attn.results.pareto_records`).
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..intervals import mean_interval
from ..results import pareto_records, write_trials
from ..trial import run_trial, settings_from_space


def _retrain(arch: Dict[str, Any], settings: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """Train ``arch`` once with ``seed``; returns its last report (runs inside a Ray task)."""
    import torch
    torch.set_num_threads(max(1, int(settings.get("threads", 1))))
    last: Dict[str, Any] = {}

    def report(metrics, checkpoint_dir=None):
        last.clear()
        last.update(metrics)

    run_trial(arch, {**settings, "seed": seed}, report)
    return {k: v for k, v in last.items() if isinstance(v, (int, float, str))}


def confirm(space, run_dir, records: List[Dict[str, Any]], objectives, concurrent: int,
            resources: Dict[str, float]) -> List[Dict[str, Any]]:
    """Retrain the current Pareto set with ``space.search["confirm"]`` more seeds; returns the
    records with ``confirm`` filled in (and writes trials.jsonl and pareto.json)."""
    import ray
    k = space.search["confirm"]
    seed = space.search["seed"]
    front = [r for r in pareto_records(records, objectives) if "confirm" not in r]
    if not k or not front:
        return records
    settings = {**settings_from_space(space), "threads": resources.get("cpu", 1)}
    task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))(_retrain)
    jobs = [(r, seed + i) for r in front for i in range(1, k + 1)]
    print(f"\nConfirming the Pareto set: {len(front)} trials x {k} more seeds ({len(jobs)} trainings)",
          flush=True)
    pending, results = {}, {}
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < concurrent:
            record, s = queue.pop(0)
            pending[task.remote(record["arch"], settings, s)] = (record["number"], s)
        done, _ = ray.wait(list(pending), num_returns=1)
        number, s = pending.pop(done[0])
        results[(number, s)] = ray.get(done[0])
        accuracy = results[(number, s)].get("accuracy")
        print(f"  trial {number:>3} seed {s}: acc {accuracy:.4f}" if isinstance(accuracy, float)
              else f"  trial {number:>3} seed {s}: {results[(number, s)].get('status')}", flush=True)
    for record in front:
        seeds = [seed] + [seed + i for i in range(1, k + 1)]
        accuracies = [record["metrics"]["accuracy"]] + [results[(record["number"], s)].get("accuracy", float("nan"))
                                                        for s in seeds[1:]]
        mean, low, high = mean_interval(accuracies)
        record["confirm"] = {"seeds": seeds, "accuracy": accuracies, "mean": mean, "low": low, "high": high}
    write_trials(run_dir, records, objectives)
    return records
