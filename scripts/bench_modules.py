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
    python scripts/bench_modules.py --threads 2 --repeats 9 --aw-shapes both   # issue 11's full run
    python scripts/bench_modules.py --no-steps --aw-shapes both   # only the per-stage tables

A third table (``--cpsam-stages``, on by default) times CPSAM in both PSA forms against
timm's Non-Local on the attention-slot shape of each resnet50 stage, with MACs per image.
``--aw-shapes docstring|both`` adds the shapes of the AWConv2d docstring's table (with the
depthwise convs) to the AW-conv formulation table, so the docstring's figures and the
per-stage table's are compared in one run.
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
ALL_VARIANTS = ("none", "se", "eca", "cbam", "dsa", "sca", "cpsam", "cpsam_mix", "nl", "aw_conv")
# variant -> (attention name, kwargs) where the variant is not simply an attention name
VARIANT_ATTENTION = {"cpsam_mix": ("cpsam", {"psa": "mix"})}
# (variant, reference, comparison, factor): the overhead of `variant` must be below / at most
# `factor` times the reference's (issue 11's targets).
TARGETS = (("dsa", "se", "<", 1.0), ("sca", "cbam", "<=", 1.0), ("cpsam", "cbam", "<=", 2.0))
# AW-conv shapes of the AWConv2d docstring's table: (C, H at 224 input, depthwise)
DOCSTRING_AW_SHAPES = ((64, 56, False), (128, 28, False), (256, 14, False), (512, 7, False),
                       (64, 56, True), (256, 14, True), (960, 7, True))
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
    parser.add_argument("--aw-shapes", choices=("stages", "docstring", "both"), default="stages",
                        help="AW-conv formulation shapes: resnet50's conv2 per stage, the AWConv2d "
                             "docstring's table (incl. depthwise convs), or both in one run")
    parser.add_argument("--cpsam-stages", action=argparse.BooleanOptionalAction, default=True,
                        help="also time CPSAM (gate and mix) against timm's Non-Local at every "
                             "resnet50 stage shape (default: on)")
    parser.add_argument("--no-steps", dest="steps", action="store_false",
                        help="skip the all-blocks resnet50 train-step table")
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
    attention, kwargs = VARIANT_ATTENTION.get(variant, (variant, {}))
    for name in block_names:
        if variant == "aw_conv":
            blocks[name] = {"attention": "none", "attention_kwargs": {}, "aw_conv": {}}
        else:
            blocks[name] = {"attention": attention, "attention_kwargs": dict(kwargs), "aw_conv": None}
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
        "chunks of 4 MiB (before)": _with_chunk_bytes(aw, 4 << 20),
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


def aw_conv_cases(args) -> List[tuple]:
    """(label, block label, conv, input shape (C, H, W)) for each AW-conv shape to time."""
    cases = []
    if args.aw_shapes in ("stages", "both"):
        reference = timm.create_model(MODEL, pretrained=False)
        sites = attention_sites(reference)
        shapes = conv2_inputs(reference, args.size)
        for stage in STAGES:
            names = [name for name in sites if name.startswith(stage + ".")]
            # the second block's conv2 has stride 1: the shape every block but the first sees
            block = names[1] if len(names) > 1 else names[0]
            cases.append((stage, f"{block}.conv2", getattr(sites[block].block, sites[block].conv_attr),
                          shapes[block]))
    if args.aw_shapes in ("docstring", "both"):
        for c, h224, depthwise in DOCSTRING_AW_SHAPES:
            h = max(1, round(h224 * args.size / 224))
            conv = nn.Conv2d(c, c, 3, padding=1, groups=c if depthwise else 1, bias=False)
            label = f"{'dw ' if depthwise else ''}{c}, {h224}x{h224} at 224"
            cases.append((label, "AWConv2d docstring table", conv, (c, h, h)))
    return cases


def bench_stages(args, rng: random.Random, log) -> List[StageRow]:
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for stage, block, conv, shape in aw_conv_cases(args):
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        aw = AWConv2d.from_conv(plain)
        _randomise_attention(aw, generator)
        x = torch.randn(args.batch_size, *shape, generator=generator).requires_grad_(True)
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
        log(f"  {stage} ({block}, {args.batch_size} x {shape}) ...")
        timings = time_interleaved(steps, args.repeats, args.warmup, rng)
        c, h, w = shape
        groups = f", groups {conv.groups}" if conv.groups > 1 else ""
        rows.append(StageRow(stage, block, f"{c}->{conv.out_channels}, {h}x{w}, stride {conv.stride[0]}{groups}",
                             timings.pop("nn.Conv2d"), timings, errors))
    return rows


@dataclass
class CpsamRow:
    stage: str
    shape: tuple
    macs: Dict[str, int]
    timings: Dict[str, Timing]


CPSAM_VS_NL = ("cpsam (gate)", "cpsam (mix)", "nl")


def bench_cpsam_stages(args, rng: random.Random, log) -> List[CpsamRow]:
    """CPSAM's two forms against timm's Non-Local on each resnet50 stage's attention-slot shape."""
    from timm.layers import NonLocalAttn
    from nas_attn.arch import site_shapes
    from nas_attn.modules import CPSAM
    reference = timm.create_model(MODEL, pretrained=False)
    slots = {name: shape["slot"] for name, shape in site_shapes(reference, (3, args.size, args.size)).items()}
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for stage in STAGES:
        names = [name for name in slots if name.startswith(stage + ".")]
        shape = slots[names[1] if len(names) > 1 else names[0]]
        c = shape[0]
        modules = {"cpsam (gate)": CPSAM(c), "cpsam (mix)": CPSAM(c, psa="mix"), "nl": NonLocalAttn(c)}
        with torch.no_grad():  # leave the identity start, so every path carries work and gradient
            for module in modules.values():
                for param in module.parameters():
                    if not param.any():
                        param.normal_(0.0, 0.02, generator=generator)
        macs = {name: int(measure(nn.Sequential(m), shape).macs) for name, m in modules.items()}
        x = torch.randn(args.batch_size, *shape, generator=generator).requires_grad_(True)
        grad_out = torch.randn(args.batch_size, *shape, generator=generator)

        def step(module):
            def run():
                module.zero_grad(set_to_none=True)
                x.grad = None
                module.train()(x).backward(grad_out)
            return run

        log(f"  cpsam vs nl at {stage} ({args.batch_size} x {shape}) ...")
        timings = time_interleaved({name: step(m) for name, m in modules.items()}, args.repeats, args.warmup, rng)
        rows.append(CpsamRow(stage, shape, macs, timings))
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
    for variant, reference, relation, factor in TARGETS:
        times = "" if factor == 1.0 else f"{factor:g}x "
        missing = [name for name in (variant, reference, "none") if name not in rows]
        if missing:
            verdicts[variant] = (f"not measured: {variant} overhead {relation} {times}{reference} overhead "
                                 f"needs the variant(s) {', '.join(missing)} in --variants")
            continue
        ours = rows[variant].timing.median - base.timing.median
        theirs = factor * (rows[reference].timing.median - base.timing.median)
        met = ours < theirs if relation == "<" else ours <= theirs
        spread = max(rows[variant].timing.iqr, rows[reference].timing.iqr)
        note = ""
        if abs(ours - theirs) <= spread:
            note = f"; the gap is within the larger IQR ({_ms(spread)} ms)"
        ours_min = rows[variant].timing.low - base.timing.low
        theirs_min = factor * (rows[reference].timing.low - base.timing.low)
        met_min = ours_min < theirs_min if relation == "<" else ours_min <= theirs_min
        verdicts[variant] = (
            f"{'MET' if met else 'MISSED'}: {variant} overhead {_signed_ms(ours)} ms "
            f"({ours / base.timing.median:+.1%}) {relation} {times}{reference} overhead "
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
        for variant, reference, relation, factor in TARGETS:
            if name == variant:
                word = verdicts[variant].split(":")[0]
                times = "" if factor == 1.0 else f"{factor:g}x "
                target = f"overhead {relation} {times}{reference}'s: {word}"
        lines.append(
            f"| {name} | {_ms(t.median)} | {_ms(t.low)} - {_ms(t.high)} | {_ms(t.iqr)} | "
            f"{_ms(t.cpu_median)} | {over_ms} | "
            f"{over_pct} | {row.params:,} | {row.macs / 1e9:.3f} | {row.elementwise_ops / 1e9:.3f} | {target} |")
    return "\n".join(lines)


def stage_table(rows: List[StageRow]) -> str:
    form_names = list(dict.fromkeys(name for row in rows for name in row.forms))  # unfold + bmm: groups 1 only
    header = ["stage", "conv2 shape (batch folded out)", "nn.Conv2d median (ms)"]
    for name in form_names:
        header.append(f"{name} median (ms)")
    header += ["AWConv2d / conv ratio", "fastest exact formulation"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 3) + "---|"]
    for row in rows:
        cells = [f"{row.stage} ({row.block}.conv2)", row.shape,
                 f"{_ms(row.conv.median)} ({_ms(row.conv.low)} - {_ms(row.conv.high)})"]
        for name in form_names:
            t = row.forms.get(name)
            cells.append("n/a (grouped conv)" if t is None else f"{_ms(t.median)} ({_ms(t.low)} - {_ms(t.high)})")
        shipped = row.forms[form_names[0]]
        cells.append(f"{shipped.median / row.conv.median:.1f}x")
        fastest = min(row.forms, key=lambda n: row.forms[n].median)
        cells.append(f"{fastest} ({row.forms[fastest].median / row.conv.median:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpsam_table(rows: List[CpsamRow]) -> str:
    lines = ["| stage | slot shape (C x H x W) | " + " | ".join(f"{n} MACs (M/image)" for n in CPSAM_VS_NL)
             + " | " + " | ".join(f"{n} fwd+bwd median (min - max) (ms)" for n in CPSAM_VS_NL)
             + " | cpsam (gate) below nl in MACs and time |",
             "|---|---|" + "---:|" * (2 * len(CPSAM_VS_NL)) + "---|"]
    for row in rows:
        cells = [row.stage, "x".join(map(str, row.shape))]
        cells += [f"{row.macs[n] / 1e6:,.2f}" for n in CPSAM_VS_NL]
        cells += [f"{_ms(row.timings[n].median)} ({_ms(row.timings[n].low)} - {_ms(row.timings[n].high)})"
                  for n in CPSAM_VS_NL]
        gate, nl = "cpsam (gate)", "nl"
        met = row.macs[gate] < row.macs[nl] and row.timings[gate].median < row.timings[nl].median
        cells.append(f"{'MET' if met else 'MISSED'} ({row.macs[gate] / row.macs[nl]:.2f}x MACs, "
                     f"{row.timings[gate].median / row.timings[nl].median:.2f}x time)")
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
                   started: datetime.datetime, took_s: float, loads: tuple,
                   cpsam_rows: Optional[List[CpsamRow]] = None) -> str:
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
    if rows:
        out.append(variant_table(rows))
        out.append("")
        out.append("Targets (overheads from the medians):")
        out.append("")
        for variant, verdict in target_verdicts(rows).items():
            out.append(f"- {verdict}")
    else:
        out.append("(train-step table not run: --no-steps)")
    if cpsam_rows:
        out.append("")
        out.append("### CPSAM against Non-Local per stage (scripts/bench_modules.py)")
        out.append("")
        out.append(
            f"Each module alone on the attention-slot shape of each resnet50 stage's second block, "
            f"batch {args.batch_size}, train mode, forward + backward with the input requiring "
            f"grad, same rounds scheme ({args.repeats} timed, {args.warmup} warm-up). Parameters "
            f"that start at zero (CPSAM's identity start, Non-Local's zero-initialised output BN) "
            f"get small random values so every path does its work. MACs per image from "
            f"`nas_attn.cost.measure`. `cpsam (gate)` is the default (`psa=\"gate\"`), "
            f"`cpsam (mix)` the full-map form (`psa=\"mix\"`), `nl` timm's NonLocalAttn.")
        out.append("")
        out.append(cpsam_table(cpsam_rows))
    if stage_rows:
        out.append("")
        out.append(f"### AW-conv per stage (scripts/bench_modules.py, --aw-shapes {args.aw_shapes})")
        out.append("")
        out.append(
            f"Forward + backward of one conv2 at batch {args.batch_size}, input requiring grad (as "
            f"inside the network), same rounds scheme ({args.repeats} timed, {args.warmup} warm-up); "
            f"median (min - max) in ms. Stage rows: each stage's second block (its conv2 has "
            f"stride 1, the shape every block but the stage's first sees); \"at 224\" rows: the "
            f"shapes of AWConv2d's docstring table (scaled with --size), dw = depthwise, timed in "
            f"the same run so the formulations are compared side by side. AWConv2d's attention MLP has small "
            f"random last-layer weights (fresh, it is zero and A = 0). Formulations: "
            f"\"as shipped\" is `AWConv2d.forward` (per-sample kernels as a grouped conv with the "
            f"batch folded into the groups, cut into chunks of at most "
            f"{AWConv2d.cpu_chunk_bytes / 2 ** 20:g} MiB of kernels plus "
            f"activations, with its own backward for K + A (.) K); \"chunks of 4 MiB (before)\" "
            f"is the same with the cap it had before; \"batch folded whole\" folds "
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
    for variant in (args.variants if args.steps else []):
        model = build_model(variant_arch(variant, block_names))
        costs[variant] = measure(model, input_size=(3, args.size, args.size))
        models[variant] = model.train()
        log(f"built {variant}: {costs[variant].macs / 1e9:.3f} GMACs/image, {costs[variant].params:,} params")

    rows: Dict[str, VariantRow] = {}
    if models:
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
        del steps
    del models

    cpsam_rows: List[CpsamRow] = []
    if args.cpsam_stages:
        log("CPSAM against Non-Local per stage")
        cpsam_rows = bench_cpsam_stages(args, rng, log)

    stage_rows: List[StageRow] = []
    if args.stages:
        log("AW-conv per stage")
        stage_rows = bench_stages(args, rng, log)

    took = time.perf_counter() - clock
    section = render_section(args, argv, rows, stage_rows, started, took, (load_start, os.getloadavg()),
                             cpsam_rows)
    write_section(args.out, section)
    print(section)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
