"""Accuracy of each attention module in every searched block, against the plain model.

For each shipped space named, each module and each seed: the space's baseline Arch (no
attention anywhere) with ``attention`` (or AW-conv) put into every block the space searches,
built with ``torch.manual_seed(seed)`` and trained by :func:`nas_attn.train.train` with the
space's own data and train settings (what a search trial does, without Ray). Prints one
line per run and a table of validation accuracy (fraction) per module and space: the mean
over seeds and the minimum-maximum range.

    python scripts/module_accuracy.py --space digits_mobilenetv2 digits_resnet \\
        --modules none se eca cbam dsa sca cpsam aw_conv --seeds 0 1 2

``--set dsa.threshold=0`` passes a keyword to one module (repeatable). ``--json FILE`` writes
every run. Runs one training at a time, on the threads torch picks (``--threads`` sets them).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from nas_attn.arch import build_model
from nas_attn.data import load as load_data
from nas_attn.space import load as load_space
from nas_attn.train import train


def module_arch(baseline, module: str, kwargs):
    arch = copy.deepcopy(baseline)
    for choice in arch["blocks"].values():
        if module == "aw_conv":
            choice["aw_conv"] = dict(kwargs)
        elif module != "none":
            choice["attention"] = module
            choice["attention_kwargs"] = dict(kwargs)
    return arch


def parse_sets(items):
    sets = {}
    for item in items:
        key, _, value = item.partition("=")
        module, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--set expects MODULE.KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)  # numbers, true/false
        except json.JSONDecodeError:
            parsed = value  # a bare word: a choice such as mean or gate
        sets.setdefault(module, {})[name] = parsed
    return sets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", nargs="+", default=["digits_mobilenetv2", "digits_resnet"])
    parser.add_argument("--modules", nargs="+", default=["none", "se", "eca", "cbam", "dsa", "sca", "cpsam", "aw_conv"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = parse_sets(args.set)
    runs = []
    for space_name in args.space:
        space = load_space(space_name)
        cfg, data_cfg = space.train, space.data
        for seed in args.seeds:
            data = load_data(data_cfg["dataset"], root=data_cfg.get("root"), image_size=data_cfg["image_size"],
                             val_fraction=data_cfg["val_fraction"], seed=seed, augment=data_cfg.get("augment", True))
            for module in args.modules:
                arch = module_arch(space.baseline(), module, sets.get(module, {}))
                torch.manual_seed(seed)
                model = build_model(arch)
                start = time.perf_counter()
                result = train(model, data, epochs=args.epochs or cfg["epochs"], batch_size=cfg["batch_size"],
                               lr=cfg["lr"], optimizer=cfg["optimizer"], weight_decay=cfg.get("weight_decay"),
                               momentum=cfg.get("momentum", 0.9), label_smoothing=cfg.get("label_smoothing", 0.0),
                               seed=seed)
                run = dict(space=space_name, module=module, seed=seed, kwargs=sets.get(module, {}),
                           accuracy=result.accuracy, train_loss=result.train_loss,
                           seconds=time.perf_counter() - start)
                runs.append(run)
                print(f"{space_name:20s} {module:8s} seed {seed}: accuracy {result.accuracy:.3f}, "
                      f"train loss {result.train_loss:.3f}, {run['seconds']:.0f} s", flush=True)
    print("\nvalidation accuracy (fraction), mean [min-max] over seeds", args.seeds)
    for space_name in args.space:
        for module in args.modules:
            acc = [r["accuracy"] for r in runs if r["space"] == space_name and r["module"] == module]
            print(f"{space_name:20s} {module:8s} {statistics.mean(acc):.3f} [{min(acc):.3f}-{max(acc):.3f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
