#!/usr/bin/env python
"""Inference wall time of DSA-gated models (sparse eval path) against the dense model (CPU).

For each model (default resnet18, resnet50, mobilenetv2_100) and batch size (default 1 and
32) at 224x224, eval mode, ``--threads`` threads (default 2), the script builds:

* ``dense``: the plain timm model, channels-last like every variant (``--nchw`` for NCHW), and
  ``dense (NCHW)``, the same model in NCHW, to show what the format alone changes;
* ``keep K`` for each K in ``--keeps`` (default 0.3, 0.5, 0.7): every gateable block gated
  (``nas_attn.modules.gate_block``) with ``prune_mode=keep_ratio, keep_ratio=K``, so each
  gate keeps the fraction K of its output pixels (mean kept fraction K); the sparse path on,
  so each block runs sparse or dense by its kind's measured rule (``_Gated.sparse_pays``), and
  the table's ``sparse blocks`` column counts the blocks that ran sparse;
* ``keep 1.0``: every gateable block gated with ``keep_ratio=1.0``, keeping every pixel: the
  gate's own overhead where the rule alone says every pixel is kept (no saliency is computed;
  the block runs as the plain timm block);
* ``threshold 0``: every gateable block gated with ``threshold=0``, which also keeps every
  pixel, but only after computing the mask (saliency, min-max foreground, comparison, count):
  the overhead of a gate whose mask turns out full, the price of the mask computation itself;
* ``keep 1.0, forced sparse``: the same with the sparse path forced (``sparse_max_kept=1``),
  the fixed cost of gathering and scattering every pixel.

All variants share the dense model's random-init weights (no pretrained weights offline).
The input is scikit-learn's two bundled photographs (``load_sample_images``), random crops
resized to the input size and ImageNet-normalised, so masks follow image structure rather
than noise. Each round times one forward of every variant in shuffled order (all in this one
process, side by side, so load from other jobs falls on all alike); the table gives the
median over rounds in milliseconds (``time.perf_counter``; with ``--cpu-time``
``time.process_time``), the speedup (dense median / variant median) and, next to it, the
effective-MAC ratio MACs / effective MACs measured by
``nas_attn.cost.measure`` on the same batch: the speedup the sparse path would reach if only
the charged convolutions took time. The load average (``os.getloadavg``) is recorded before
and after. Results go into the section below of ``--out`` (default BENCHMARKS.md); other
sections are kept.

Memory allocation moves the dense times between processes: with glibc, tensors above its mmap
threshold (at batch 32, mobilenetv2_100's activations reach 154 MB) are mapped fresh from the
kernel, and the page faults that costs varied here from run to run (dense mobilenetv2_100 at
batch 32: 268 ms in one process, 493 ms in another, 317 ms with the threshold raised). Comparing
variants inside one process keeps each ratio fair to that process's allocator, but a ratio can
differ between runs. To take allocation out of the comparison, run with glibc's tunables set,
e.g. ``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=268435456``; the section's
command line shows any ``MALLOC_*`` or ``GLIBC_TUNABLES`` variable it ran with.

Usage::

    python scripts/bench_sparse.py                              # the full run (minutes)
    python scripts/bench_sparse.py --models resnet18 --batch-sizes 1 --keeps 0.3 \\
        --image-size 64 --rounds 1 --out /tmp/b.md               # a smoke test (seconds)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F

from nas_attn.cost import measure
from nas_attn.modules import DSAGate, gate_block, why_not_gateable
from nas_attn.modules.dsa_gate import _SPARSE

SECTION_TITLE = "## DSA gate: sparse inference speed (scripts/bench_sparse.py)"
FILE_HEADER = "# nas_attn benchmarks\n\nEach section gives the command that produced it.\n"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _list(kind):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_list(str), default=["resnet18", "resnet50", "mobilenetv2_100"])
    p.add_argument("--batch-sizes", type=_list(int), default=[1, 32])
    p.add_argument("--keeps", type=_list(float), default=[0.3, 0.5, 0.7],
                   help="kept fractions (keep_ratio of every gate), each in (0, 1)")
    p.add_argument("--image-size", type=int, default=224, help="input H = W, pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each times every variant once)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--nchw", action="store_true",
                   help="run every variant in NCHW instead of channels-last (the sparse path's row "
                        "tables are views of channels-last tensors; NCHW adds a copy per block)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with time.process_time (this process's CPU time) instead of wall time: "
                        "steadier on a machine loaded by other jobs, meaningful with --threads 1 only "
                        "(idle OpenMP threads spin and count as CPU time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                   help="Markdown file whose section this script writes (default BENCHMARKS.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    for k in args.keeps:
        if not 0.0 < k < 1.0:
            p.error(f"--keeps: each kept fraction must be in (0, 1), got {k}")
    for name in args.models:
        if not timm.is_model(name):
            p.error(f"--models: unknown timm model {name!r}")
    if min(args.batch_sizes) < 1 or args.image_size < 32 or args.threads < 1 or args.rounds < 1:
        p.error("batch sizes, threads and rounds must be >= 1, --image-size >= 32")
    return args


def photo_batch(batch: int, size: int, seed: int) -> torch.Tensor:
    """``batch`` random crops of scikit-learn's two sample photographs, resized and normalised."""
    from sklearn.datasets import load_sample_images
    photos = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
              for img in load_sample_images().images]
    rng = random.Random(seed)
    crops = []
    for i in range(batch):
        photo = photos[i % len(photos)]
        h, w = photo.shape[-2:]
        side = rng.randint(min(h, w) // 2, min(h, w))
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    x = torch.cat(crops)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def gated_copy(dense: torch.nn.Module, model_name: str, **gate_kwargs) -> tuple:
    model = timm.create_model(model_name)
    model.load_state_dict(dense.state_dict())
    n = 0
    for module in list(model.modules()):
        if why_not_gateable(module) is None:
            gate_block(module, **gate_kwargs)
            n += 1
    return model.eval(), n


def time_interleaved(steps: Dict[str, Callable[[], None]], rounds: int, warmup: int,
                     rng: random.Random, clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """ms of ``clock`` (wall by default) of each callable: every round runs each once, in a shuffled order."""
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    for r in range(warmup + rounds):
        order = list(steps)
        rng.shuffle(order)
        for name in order:
            start = clock()
            steps[name]()
            if r >= warmup:
                samples[name].append((clock() - start) * 1000.0)
    return samples


def bench_model(args, model_name: str, batch: int, rng: random.Random, log) -> List[dict]:
    torch.manual_seed(args.seed)
    dense = timm.create_model(model_name).eval()
    x = photo_batch(batch, args.image_size, args.seed)
    x_nchw = x
    variants = {"dense": (dense, None)}
    for keep in args.keeps:
        variants[f"keep {keep:g}"] = gated_copy(dense, model_name, prune_mode="keep_ratio", keep_ratio=keep)
    variants["keep 1.0 (gate overhead)"] = gated_copy(dense, model_name, prune_mode="keep_ratio", keep_ratio=1.0)
    variants["threshold 0 (mask computed)"] = gated_copy(dense, model_name, threshold=0.0)
    forced, n = gated_copy(dense, model_name, prune_mode="keep_ratio", keep_ratio=1.0)
    for m in forced.modules():
        if hasattr(m, "sparse_max_kept"):
            m.sparse_max_kept = 1.0
    variants["keep 1.0, forced sparse"] = (forced, n)
    if not args.nchw:
        # the NCHW dense model as a second reference: the speedups are against the dense model
        # in the same format, and this row shows how that format compares
        nchw = timm.create_model(model_name).eval()
        nchw.load_state_dict(dense.state_dict())
        x_nchw = x.clone()
        x = x.contiguous(memory_format=torch.channels_last)
        for model, _ in variants.values():
            model.to(memory_format=torch.channels_last)
        variants["dense (NCHW)"] = (nchw, None)
    rows = {}
    size = (3, args.image_size, args.image_size)
    with torch.no_grad():
        reference = dense(x)
        for name, (model, n_gated) in variants.items():
            cost = measure(model, size, data=x_nchw if name == "dense (NCHW)" else x)
            kept = [v for k, v in cost.dsa_kept.items() if k.endswith("gate")]
            out = model(x)
            # which gated blocks took the sparse path in that forward (each block's speed rule, or
            # forced), the same choice every timed forward makes: the input does not change
            sparse_blocks = sum(1 for m in model.modules() if isinstance(m, DSAGate) and m.last_route == _SPARSE)
            rows[name] = {"model": model_name, "batch": batch, "variant": name, "gated_blocks": n_gated or 0,
                          "sparse_blocks": sparse_blocks,
                          "macs": cost.macs, "effective_macs": cost.effective_macs,
                          "mean_kept": statistics.mean(kept) if kept else 1.0,
                          "max_abs_diff": (float((out - reference).abs().max())
                                           if name.startswith(("keep 1.0", "threshold 0")) else None)}
        steps = {name: (lambda m=model, inp=(x_nchw if name == "dense (NCHW)" else x): m(inp))
                 for name, (model, _) in variants.items()}
        samples = time_interleaved(steps, args.rounds, args.warmup, rng,
                                   time.process_time if args.cpu_time else time.perf_counter)
    dense_ms = statistics.median(samples["dense"])
    for name, row in rows.items():
        row["ms"] = statistics.median(samples[name])
        row["ms_min"], row["ms_max"] = min(samples[name]), max(samples[name])
        row["speedup"] = dense_ms / row["ms"]
        row["mac_ratio"] = row["macs"] / row["effective_macs"]
        log(f"{model_name} b{batch} {name:<26} {row['ms']:9.1f} ms  speedup {row['speedup']:.2f}x  "
            f"MAC ratio {row['mac_ratio']:.2f}x  mean kept {row['mean_kept']:.3f}  "
            f"sparse blocks {row['sparse_blocks']}/{row['gated_blocks']}")
    return list(rows.values())


def render_section(args, argv, rows: List[dict], load_before, load_after, started: str) -> str:
    # glibc reads its allocator tunables from the environment at start-up, and they change the
    # dense times (see the module docstring): the command names the ones it ran with
    tunables = [f"{name}={shlex.quote(value)}" for name, value in sorted(os.environ.items())
                if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES"]
    cmd = " ".join(tunables + ["python scripts/bench_sparse.py"]) + (" " + shlex.join(argv) if argv else "")
    lines = [SECTION_TITLE, "",
             f"Command: `{cmd}`. Run {started}, torch {torch.__version__}, timm {timm.__version__}, "
             f"{platform.processor() or platform.machine()}, {args.threads} threads, "
             f"{'NCHW' if args.nchw else 'channels-last (plus a dense NCHW row)'}, eval mode, no grad, "
             f"{args.image_size}x{args.image_size}, {args.rounds} rounds (median; min-max in brackets)"
             f"{', CPU time (time.process_time), not wall time' if args.cpu_time else ''}.",
             f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
             f"after: {', '.join(f'{v:.2f}' for v in load_after)}.", "",
             "Speedup = dense time / variant time. MAC ratio = MACs / effective MACs (the limit the "
             "speedup approaches if only the charged convolutions took time). `keep 1.0 (gate overhead)`: "
             "every gate has keep_ratio 1, so its rule keeps every pixel without computing a mask (plain "
             "block); `threshold 0 (mask computed)`: every gate computes its mask, which keeps every pixel "
             "(plain block after the mask); `forced sparse`: keep 1.0 through the gather/scatter path. "
             "`sparse blocks`: gated blocks that ran the sparse path (each block chooses it from its kept "
             "fraction by its kind's measured rule, README \"DSA gate\"; the others run dense, masked). "
             "Weights are random-init; the input is random crops of scikit-learn's two sample photographs.", "",
             "| model | batch | variant | gated blocks | sparse blocks | mean kept | ms | speedup | MAC ratio | effective MACs/image |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['gated_blocks']} | {r['sparse_blocks']} | {r['mean_kept']:.3f} | "
                     f"{r['ms']:.1f} [{r['ms_min']:.1f}-{r['ms_max']:.1f}] | {r['speedup']:.2f}x | "
                     f"{r['mac_ratio']:.2f}x | {r['effective_macs']:,.0f} |")
    lines.append("")
    overhead = [r for r in rows if r["variant"] in ("keep 1.0 (gate overhead)", "threshold 0 (mask computed)")]
    for r in overhead:
        what = "at keep 1.0" if r["variant"].startswith("keep") else "at threshold 0 (mask computed)"
        lines.append(f"- {r['model']} batch {r['batch']}: gate overhead {what} = "
                     f"{(1 / r['speedup'] - 1) * 100:+.1f}% of the dense time (target <= 5%); "
                     f"output differs from dense by at most {r['max_abs_diff']:.2e}.")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (its title up to the next '## ' title), keep the rest."""
    text = path.read_text() if path.exists() else FILE_HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == SECTION_TITLE), None)
    if start is None:
        new_text = (text if text.endswith("\n") else text + "\n") + "\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new_text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new_text)
    tmp.replace(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            rows.extend(bench_model(args, model_name, batch, rng, lambda s: print(s, flush=True)))
    load_after = os.getloadavg()
    section = render_section(args, argv, rows, load_before, load_after, started)
    print(section)
    if not args.no_write:
        write_section(args.out, section)
        print(f"wrote section {SECTION_TITLE!r} of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
