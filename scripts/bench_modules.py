#!/usr/bin/env python
"""Forward + backward wall time of resnet50 with each attention module in every block (CPU).

What is timed: one training step without the optimizer, ``loss = cross_entropy(model(x), y);
loss.backward()``, on a random batch (``--batch-size`` images of ``--size`` x ``--size``), in
train mode (BatchNorm on batch statistics), gradients reset to None before each step.
Variants: ``none`` (plain resnet50), timm's ``se``, ``eca``, ``cbam``, ours ``dsa``, ``sca``,
``cpsam`` (each in the attention slot of every bottleneck block, default hyperparameters) and
``aw_conv`` (every block's 3x3 ``conv2`` replaced by an AWConv2d, no activation attention).

All models are built first; then each round times one step of every variant, in a shuffled
order, so a burst of load from other jobs on a shared machine falls on all variants alike
instead of on whichever ran at that moment. The table gives the median over rounds, the
min-max range and the inter-quartile range, all in milliseconds of wall time
(``time.perf_counter``).

The models are built with ``zero_init_last=False``: timm's default zero-initialises the last
BN of every block, so the attention slot would see all zeros (DSA then passes its input
through without pruning), which is not what a trained network shows its attention.

Costs (params, MACs and element-wise ops per image) come from :func:`nas_attn.cost.measure`.

A second table times AWConv2d against the plain 3x3 ``conv2`` it replaces, stage by stage
(the stride-1 conv2 of each stage's second block, at the shape it sees in the model), forward
+ backward with the input requiring grad (as inside the network), for the formulation
AWConv2d uses and for the other exact formulations it was chosen among; every formulation's
output and gradients are checked against AWConv2d's before timing.

Results go into one section of a Markdown file (``--out``, default BENCHMARKS.md); other
sections of the file are kept as they are. The table is printed too.

Usage::

    python scripts/bench_modules.py                       # full run, all variants
    python scripts/bench_modules.py --variants none,se,dsa --repeats 7
    python scripts/bench_modules.py --quick --size 32 --batch-size 2 --out /tmp/b.md
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from nas_attn.arch import attention_sites, build_model
from nas_attn.cost import measure
from nas_attn.modules import AWConv2d

MODEL = "resnet50"
SECTION_TITLE = "## Attention modules in resnet50 (scripts/bench_modules.py)"
ALL_VARIANTS = ("none", "se", "eca", "cbam", "dsa", "sca", "cpsam", "aw_conv")
# (variant, reference, comparison): the overhead of `variant` must be below / at most the reference's.
TARGETS = (("dsa", "se", "<"), ("sca", "cbam", "<="), ("cpsam", "cbam", "<="))
STAGES = ("layer1", "layer2", "layer3", "layer4")
# The start of --out when this script creates it (other scripts write other sections of the same file).
FILE_HEADER = "# nas_attn benchmarks\n\nEach section gives the command that produced it.\n"


# ----------------------------------------------------------------------------- arguments

def _variant_list(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--variants must be a comma-separated subset of {','.join(ALL_VARIANTS)}, got {text!r}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Forward+backward wall time of resnet50 with attention modules in every block.")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="images per step (default 8)")
    parser.add_argument("--size", type=_positive_int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed rounds; each round times one step of every variant "
                             "(default 15, 1 with --quick)")
    parser.add_argument("--warmup", type=_non_negative_int, default=None,
                        help="untimed rounds before the timed ones (default 2, 0 with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=available_cores(),
                        help=f"torch intra-op threads (default: all cores, {available_cores()} here)")
    parser.add_argument("--variants", type=_variant_list, default=list(ALL_VARIANTS),
                        help=f"comma-separated subset of {','.join(ALL_VARIANTS)} (default: all)")
    parser.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                        help="also time AWConv2d against the plain conv2 per stage (default: on)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="Markdown file whose section this script writes (default BENCHMARKS.md)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and round order")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 timed round and no warm-up unless --repeats/--warmup say otherwise")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 15
    if args.warmup is None:
        args.warmup = 0 if args.quick else 2
    return args


# ----------------------------------------------------------------------------- statistics

@dataclass
class Timing:
    """Times of repeated runs, in milliseconds: wall clock, and CPU time of this process.

    CPU time (all threads of the process, ``time.process_time``) hardly grows when other jobs
    take the cores away, so it shows the work done where wall time shows the wait too; idle
    OpenMP threads spinning at barriers count in it.
    """

    samples: List[float]
    cpu_samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples) if self.cpu_samples else math.nan

    def quartiles(self) -> tuple:
        """(Q1, Q3) by linear interpolation; both equal the sample for one sample."""
        data = sorted(self.samples)
        if len(data) == 1:
            return data[0], data[0]
        q = statistics.quantiles(data, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def iqr(self) -> float:
        q1, q3 = self.quartiles()
        return q3 - q1


# ----------------------------------------------------------------------------- models

def variant_arch(variant: str, block_names: Sequence[str]) -> dict:
    """Arch with ``variant`` in every block: an attention name, ``aw_conv`` or ``none``."""
    blocks = {}
    for name in block_names:
        if variant == "aw_conv":
            blocks[name] = {"attention": "none", "attention_kwargs": {}, "aw_conv": {}}
        else:
            blocks[name] = {"attention": variant, "attention_kwargs": {}, "aw_conv": None}
    return {"model": MODEL, "model_args": {"zero_init_last": False}, "blocks": blocks}


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()


def time_interleaved(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int,
                     rng: random.Random, progress: Optional[Callable[[int, str], None]] = None
                     ) -> Dict[str, Timing]:
    """Wall and CPU time (ms) of each callable: ``repeats`` rounds, each callable once per round, shuffled."""
    names = list(steps)
    timings = {name: Timing([], []) for name in names}
    for round_index in range(warmup + repeats):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            cpu_start = time.process_time()
            start = time.perf_counter()
            steps[name]()
            wall = (time.perf_counter() - start) * 1000.0
            cpu = (time.process_time() - cpu_start) * 1000.0
            if round_index >= warmup:
                timings[name].samples.append(wall)
                timings[name].cpu_samples.append(cpu)
        if progress is not None:
            progress(round_index, "warm-up" if round_index < warmup else "timed")
    return timings


# ----------------------------------------------------------------------------- AW-conv formulations

def _randomise_attention(aw: AWConv2d, generator: torch.Generator) -> None:
    """Give the attention MLP's zero-initialised last layer small random weights.

    A fresh AWConv2d has A = 0, where every formulation trivially agrees with the plain
    conv; with A != 0 the exactness check below means something.
    """
    with torch.no_grad():
        for param in aw.attention.fc2.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _with_chunk_bytes(aw: AWConv2d, chunk_bytes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        aw.cpu_chunk_bytes = chunk_bytes  # instance attribute shadows the class default
        try:
            return aw(x)
        finally:
            del aw.cpu_chunk_bytes
    return forward


def _unfold_bmm(aw: AWConv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample kernels as one batched matrix product over the unfolded input (groups = 1 only)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        kernels = torch.addcmul(aw.weight, aw.attention_weights(x), aw.weight)  # K + A (.) K
        columns = F.unfold(x, aw.kernel_size, aw.dilation, aw.padding, aw.stride)
        out = torch.bmm(kernels.reshape(b, aw.out_channels, -1), columns)
        if aw.bias is not None:
            out = out + aw.bias.view(1, -1, 1)
        out_h = (x.shape[2] + 2 * aw.padding[0] - aw.dilation[0] * (aw.kernel_size[0] - 1) - 1) // aw.stride[0] + 1
        out_w = (x.shape[3] + 2 * aw.padding[1] - aw.dilation[1] * (aw.kernel_size[1] - 1) - 1) // aw.stride[1] + 1
        return out.view(b, aw.out_channels, out_h, out_w)
    return forward


def aw_formulations(aw: AWConv2d) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Exact formulations of ``aw``'s forward: name -> function of the input."""
    forms = {
        "AWConv2d (as shipped)": aw,
        "batch folded whole": _with_chunk_bytes(aw, 1 << 62),
        "folded per sample": _with_chunk_bytes(aw, 0),
    }
    if aw.groups == 1 and aw.padding_mode == "zeros" and not isinstance(aw.padding, str):
        forms["unfold + bmm"] = _unfold_bmm(aw)
    return forms


def _grads(module: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    return [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]


def check_formulations(aw: AWConv2d, forms: Dict[str, Callable], x: torch.Tensor,
                       grad_out: torch.Tensor) -> Dict[str, float]:
    """Largest relative difference of each formulation's output and gradients from AWConv2d's."""
    def run(fn):
        aw.zero_grad(set_to_none=True)
        x.grad = None
        out = fn(x)
        out.backward(grad_out)
        return [out.detach().clone()] + _grads(aw, x)

    reference = run(aw)
    errors = {}
    for name, fn in forms.items():
        got = run(fn)
        errors[name] = max(float((g - r).abs().max() / r.abs().max().clamp_min(1e-12))
                           for g, r in zip(got, reference))
    return errors


@dataclass
class StageRow:
    stage: str
    block: str
    shape: str
    conv: Timing
    forms: Dict[str, Timing]
    errors: Dict[str, float]


def conv2_inputs(model: nn.Module, size: int) -> Dict[str, tuple]:
    """Input shape (C, H, W) of every block's conv2, by block name, for one size x size image."""
    shapes: Dict[str, tuple] = {}
    sites = attention_sites(model)
    handles = [getattr(site.block, site.conv_attr).register_forward_pre_hook(
        lambda mod, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[1:])))
        for name, site in sites.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def bench_stages(args, rng: random.Random, log) -> List[StageRow]:
    reference = timm.create_model(MODEL, pretrained=False)
    sites = attention_sites(reference)
    shapes = conv2_inputs(reference, args.size)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for stage in STAGES:
        names = [name for name in sites if name.startswith(stage + ".")]
        # the second block's conv2 has stride 1: the shape every block but the first sees
        block = names[1] if len(names) > 1 else names[0]
        conv = getattr(sites[block].block, sites[block].conv_attr)
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        aw = AWConv2d.from_conv(plain)
        _randomise_attention(aw, generator)
        x = torch.randn(args.batch_size, *shapes[block], generator=generator).requires_grad_(True)
        with torch.no_grad():
            grad_out = torch.randn_like(plain(x))
        forms = aw_formulations(aw)
        errors = check_formulations(aw, forms, x, grad_out)

        def step(fn, module):
            def run():
                module.zero_grad(set_to_none=True)
                x.grad = None
                fn(x).backward(grad_out)
            return run

        steps = {"nn.Conv2d": step(plain, plain)}
        steps.update({name: step(fn, aw) for name, fn in forms.items()})
        log(f"  {stage} ({block}.conv2, {args.batch_size} x {shapes[block]}) ...")
        timings = time_interleaved(steps, args.repeats, args.warmup, rng)
        c, h, w = shapes[block]
        rows.append(StageRow(stage, block, f"{c}->{conv.out_channels}, {h}x{w}, stride {conv.stride[0]}",
                             timings.pop("nn.Conv2d"), timings, errors))
    return rows


# ----------------------------------------------------------------------------- report

@dataclass
class VariantRow:
    variant: str
    timing: Timing
    params: int
    macs: int
    elementwise_ops: int


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def _signed_ms(value: float) -> str:
    return f"{value:+,.1f}"


def target_verdicts(rows: Dict[str, VariantRow]) -> Dict[str, str]:
    """variant -> 'MET: ...' / 'MISSED: ...' / 'not measured: ...' for each target."""
    verdicts = {}
    base = rows.get("none")
    for variant, reference, relation in TARGETS:
        missing = [name for name in (variant, reference, "none") if name not in rows]
        if missing:
            verdicts[variant] = (f"not measured: {variant} overhead {relation} {reference} overhead "
                                 f"needs the variant(s) {', '.join(missing)} in --variants")
            continue
        ours = rows[variant].timing.median - base.timing.median
        theirs = rows[reference].timing.median - base.timing.median
        met = ours < theirs if relation == "<" else ours <= theirs
        spread = max(rows[variant].timing.iqr, rows[reference].timing.iqr)
        note = ""
        if abs(ours - theirs) <= spread:
            note = f"; the gap is within the larger IQR ({_ms(spread)} ms)"
        ours_min = rows[variant].timing.low - base.timing.low
        theirs_min = rows[reference].timing.low - base.timing.low
        met_min = ours_min < theirs_min if relation == "<" else ours_min <= theirs_min
        verdicts[variant] = (
            f"{'MET' if met else 'MISSED'}: {variant} overhead {_signed_ms(ours)} ms "
            f"({ours / base.timing.median:+.1%}) {relation} {reference} overhead "
            f"{_signed_ms(theirs)} ms ({theirs / base.timing.median:+.1%}) is "
            f"{'true' if met else 'false'}{note}. On the fastest runs (minima): "
            f"{_signed_ms(ours_min)} vs {_signed_ms(theirs_min)} ms, {'met' if met_min else 'missed'}")
    return verdicts


def variant_table(rows: Dict[str, VariantRow]) -> str:
    verdicts = target_verdicts(rows)
    base = rows.get("none")
    lines = [
        "| variant | fwd+bwd median (ms) | min - max (ms) | IQR (ms) | CPU time median (ms) | "
        "overhead vs none (ms) | overhead vs none (%) | params | MACs (G/image) | "
        "element-wise ops (G/image) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        t = row.timing
        if base is None:
            over_ms = over_pct = "n/a"
        elif name == "none":
            over_ms, over_pct = "0", "0"
        else:
            diff = t.median - base.timing.median
            over_ms, over_pct = _signed_ms(diff), f"{diff / base.timing.median:+.1%}"
        target = ""
        for variant, reference, relation in TARGETS:
            if name == variant:
                word = verdicts[variant].split(":")[0]
                target = f"overhead {relation} {reference}'s: {word}"
        lines.append(
            f"| {name} | {_ms(t.median)} | {_ms(t.low)} - {_ms(t.high)} | {_ms(t.iqr)} | "
            f"{_ms(t.cpu_median)} | {over_ms} | "
            f"{over_pct} | {row.params:,} | {row.macs / 1e9:.3f} | {row.elementwise_ops / 1e9:.3f} | {target} |")
    return "\n".join(lines)


def stage_table(rows: List[StageRow]) -> str:
    form_names = list(rows[0].forms)
    header = ["stage", "conv2 shape (batch folded out)", "nn.Conv2d median (ms)"]
    for name in form_names:
        header.append(f"{name} median (ms)")
    header += ["AWConv2d / conv ratio", "fastest exact formulation"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 3) + "---|"]
    for row in rows:
        cells = [f"{row.stage} ({row.block}.conv2)", row.shape,
                 f"{_ms(row.conv.median)} ({_ms(row.conv.low)} - {_ms(row.conv.high)})"]
        for name in form_names:
            t = row.forms[name]
            cells.append(f"{_ms(t.median)} ({_ms(t.low)} - {_ms(t.high)})")
        shipped = row.forms[form_names[0]]
        cells.append(f"{shipped.median / row.conv.median:.1f}x")
        fastest = min(row.forms, key=lambda n: row.forms[n].median)
        cells.append(f"{fastest} ({row.forms[fastest].median / row.conv.median:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loads(triple: Sequence[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in triple)


def command_line(argv: Sequence[str]) -> str:
    script = "scripts/bench_modules.py"
    return " ".join(["python", script] + [shlex.quote(a) for a in argv])


def render_section(args, argv, rows: Dict[str, VariantRow], stage_rows: List[StageRow],
                   started: datetime.datetime, took_s: float, loads: tuple) -> str:
    out = [SECTION_TITLE, ""]
    out.append(f"Command: `{command_line(argv)}`")
    out.append("")
    out.append(
        f"Date: {started:%Y-%m-%d %H:%M} {started.tzname() or ''}. Machine: {cpu_model()}, "
        f"{available_cores()} cores available, {args.threads} torch threads; Python "
        f"{platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}. "
        f"Load averages (1, 5, 15 min, as `uptime` shows them): {_loads(loads[0])} at the start, "
        f"{_loads(loads[1])} at the end; with {available_cores()} cores, a load above "
        f"{available_cores()} means other jobs were competing for them, and all numbers below "
        f"were taken under that load. The run took {took_s / 60:.1f} min, whole, in one go.")
    out.append("")
    out.append(
        f"{MODEL} in train mode, batch {args.batch_size}, {args.size}x{args.size}, fp32, CPU; one "
        f"step is `cross_entropy(model(x), y).backward()` (no optimizer). Each variant puts the "
        f"module in every one of the 16 bottleneck blocks with default hyperparameters "
        f"(`aw_conv`: every block's 3x3 conv2 is an AWConv2d, no activation attention). "
        f"{_count(args.repeats, 'timed round')} after {_count(args.warmup, 'warm-up round')}; each round times one step of "
        f"every variant in a shuffled order, so load from other jobs falls on all variants "
        f"alike. Times are wall-clock (`time.perf_counter`). Params count all parameters; "
        f"MACs and element-wise ops are per image from `nas_attn.cost.measure` (AW-conv's "
        f"weight modulation counted as C_out x C_in x k x k MACs per layer and image). "
        f"CPU time is this process's, all threads (`time.process_time`): it hardly grows when "
        f"other jobs hold the cores, so it shows the work where wall time also shows the wait. "
        f"Models are built with `zero_init_last=False`: timm's default zero-initialises each "
        f"block's last BN, so every attention module would see zeros (and DSA keep every pixel). "
        f"DSA's pruned pixels stay in dense tensors, so no later convolution runs faster here.")
    out.append("")
    out.append(variant_table(rows))
    out.append("")
    out.append("Targets (overheads from the medians):")
    out.append("")
    for variant, verdict in target_verdicts(rows).items():
        out.append(f"- {verdict}")
    if stage_rows:
        out.append("")
        out.append("### AW-conv per stage (scripts/bench_modules.py)")
        out.append("")
        out.append(
            f"Forward + backward of one conv2 at batch {args.batch_size}, input requiring grad (as "
            f"inside the network), same rounds scheme ({args.repeats} timed, {args.warmup} warm-up); "
            f"median (min - max) in ms. Each stage's second block (its conv2 has stride 1, the "
            f"shape every block but the stage's first sees). AWConv2d's attention MLP has small "
            f"random last-layer weights (fresh, it is zero and A = 0). Formulations: "
            f"\"as shipped\" is `AWConv2d.forward` (per-sample kernels as a grouped conv with the "
            f"batch folded into the groups, cut into chunks of at most 4 MiB of kernels plus "
            f"activations, with its own backward for K + A (.) K); \"batch folded whole\" folds "
            f"all samples at once; \"folded per sample\" runs one sample per chunk; \"unfold + bmm\" "
            f"multiplies each sample's kernel matrix with its unfolded input.")
        worst = max(max(r.errors.values()) for r in stage_rows)
        out.append(
            f"Every formulation's output and gradients (input, K, bias, attention MLP) agree "
            f"with AWConv2d's to a relative {worst:.1e} at most (max |diff| / max |ref|).")
        out.append("")
        out.append(stage_table(stage_rows))
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (from its title to the next '## ' title), keep the rest."""
    text = path.read_text() if path.exists() else FILE_HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == SECTION_TITLE), None)
    if start is None:
        body = text if text.endswith("\n") else text + "\n"
        new_text = body + "\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new_text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new_text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    clock = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - clock:7.1f} s] {message}", file=sys.stderr, flush=True)

    block_names = list(attention_sites(timm.create_model(MODEL, pretrained=False)))
    models, costs = {}, {}
    for variant in args.variants:
        model = build_model(variant_arch(variant, block_names))
        costs[variant] = measure(model, input_size=(3, args.size, args.size))
        models[variant] = model.train()
        log(f"built {variant}: {costs[variant].macs / 1e9:.3f} GMACs/image, {costs[variant].params:,} params")

    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
    num_classes = models[args.variants[0]].num_classes
    target = torch.randint(0, num_classes, (args.batch_size,), generator=generator)
    steps = {variant: (lambda m=model: train_step(m, x, target)) for variant, model in models.items()}
    total = args.warmup + args.repeats
    timings = time_interleaved(
        steps, args.repeats, args.warmup, rng,
        progress=lambda i, kind: log(f"round {i + 1}/{total} ({kind}) done"))
    rows = {variant: VariantRow(variant, timings[variant], costs[variant].params, costs[variant].macs,
                                costs[variant].elementwise_ops)
            for variant in args.variants}
    del models, steps

    stage_rows: List[StageRow] = []
    if args.stages:
        log("AW-conv per stage")
        stage_rows = bench_stages(args, rng, log)

    took = time.perf_counter() - clock
    section = render_section(args, argv, rows, stage_rows, started, took, (load_start, os.getloadavg()))
    write_section(args.out, section)
    print(section)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
