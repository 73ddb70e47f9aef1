"""Human-readable summaries: a search space, a model's cost, the module library.

Everything here reads the earlier stages (space, arch, cost) and prints; nothing feeds back.
All MACs are multiply-accumulates per image; "element-wise ops" follow nas_attn.cost's counting.
"""
from __future__ import annotations

import copy
import functools
import itertools
import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .arch import attention_sites, build_model, site_shapes
from .cost import measure
from .modules import AWConv2d, available, create_attn
from .units import format_count

MAX_KWARG_COMBINATIONS = 16


def _counted(build: Callable[[], nn.Module], input_size) -> Tuple[nn.Module, Any]:
    """``(model, cost)`` of the model ``build()`` makes, built and counted on the meta device.

    Counting needs shapes, not values: on the meta device a model takes no memory, no weight
    initialisation and no arithmetic, and the counts are identical (tests/test_describe.py
    checks it for models and every registered module). A module whose forward needs values
    (a data-dependent branch) raises there and is counted again on the CPU.
    """
    try:
        with torch.device("meta"):
            model = build()
        return model, measure(model, tuple(input_size))
    except (NotImplementedError, RuntimeError):
        model = build()
        return model, measure(model, tuple(input_size))


def _module_cost(module: nn.Module, shape: Tuple[int, int, int]):
    return measure(nn.Sequential(module), tuple(shape))


@functools.lru_cache(maxsize=4096)
def _attn_cost(name: str, kwargs: Tuple[Tuple[str, Any], ...], shape: Tuple[int, int, int]):
    """Cost of attention module ``name`` on a (C, H, W) map (None for no module), counted
    once per process for each module, hyperparameters and shape."""
    if create_attn(name, shape[0], **dict(kwargs)) is None:
        return None
    return _counted(lambda: nn.Sequential(create_attn(name, shape[0], **dict(kwargs))), shape)[1]


def _kwarg_combinations(params) -> List[Dict[str, Any]]:
    names = list(params)
    combos = [dict(zip(names, values)) for values in itertools.product(*(params[n].extremes() for n in names))]
    return combos[:MAX_KWARG_COMBINATIONS] or [{}]


def mac_range(space) -> Tuple[float, float, float]:
    """(baseline MACs, cheapest, dearest) over the space, per image.

    The cheapest (dearest) structure sets every cost knob to its smallest (largest) value,
    since MACs grow with width, depth, expansion and kernel. Attention and AW-conv costs are
    additive over blocks, so each decision's cheapest and dearest option is found on its own:
    every module at the ends of its hyperparameter ranges (at most 16 combinations) is measured
    on the feature map its block has in that structure.
    """
    base = _counted(lambda: build_model(space.baseline()), space.input_size)[1].macs
    cache: Dict[tuple, float] = {}

    def attn_delta(name, kwargs, shape):
        cost = _attn_cost(name, tuple(sorted(kwargs.items())), tuple(shape))
        return 0.0 if cost is None else cost.macs

    ends = []
    for largest, pick in ((False, min), (True, max)):
        model, cost = _counted(lambda: build_model(space.extreme_arch(largest)), space.input_size)
        total = cost.macs
        sites = attention_sites(model)
        shapes = site_shapes(model, space.input_size)

        def aw_delta(block, kwargs):
            conv = getattr(sites[block].block, sites[block].conv_attr)
            shape = shapes[block]["conv"]
            key = ("aw", largest, block, tuple(sorted(kwargs.items())))
            if key not in cache:
                cache[key] = (_module_cost(AWConv2d.from_conv(conv, **kwargs), shape).macs
                              - _module_cost(conv, shape).macs)
            return cache[key]

        for decision in space.decisions:
            present = [b for b in decision.blocks if b in sites]
            if not present:
                continue
            rule = decision.rule
            attn_options = [sum(attn_delta(name, kwargs, shapes[b]["slot"]) for b in present)
                            for name, params in rule.attention.items() for kwargs in _kwarg_combinations(params)]
            aw_options = []
            for use in rule.aw_conv:
                if not use:
                    aw_options.append(0.0)
                else:
                    aw_options.extend(sum(aw_delta(b, kwargs) for b in present)
                                      for kwargs in _kwarg_combinations(rule.aw_conv_params))
            total += pick(attn_options) + pick(aw_options)
        ends.append(total)
    return base, ends[0], ends[1]


def _stage_text(space) -> List[str]:
    lines = []
    if space.stem is not None:
        knobs = ", ".join(f"{k} {_param_text(p)}" for k, p in space.stem.rule.knobs.items())
        arg = "stem_width" if space.family == "resnet" else "stem_size"
        lines.append(f"    {'stem':<12} {arg} {space.stem.channels} (base): {knobs}")
    for stage in space.stages:
        if stage.rule is None:
            continue
        knobs = ", ".join(f"{k} {_param_text(p)}" for k, p in stage.rule.knobs.items())
        lines.append(f"    {stage.name:<12} {stage.channels} channels x {len(stage.blocks)} blocks (base): {knobs}")
    return lines


def _choices_text(rule) -> str:
    parts = []
    for name, params in rule.attention.items():
        if params:
            hp = ", ".join(f"{k}={_param_text(p)}" for k, p in params.items())
            parts.append(f"{name}({hp})")
        else:
            parts.append(name)
    knobs = "".join(f" | {k} {_param_text(p)}" for k, p in rule.knobs.items())
    aw = {(False,): "", (True,): " + aw_conv always", (False, True): " | aw_conv: no/yes",
          (True, False): " | aw_conv: yes/no"}[rule.aw_conv]
    if rule.aw_conv_params and True in rule.aw_conv:
        aw += "(" + ", ".join(f"{k}={_param_text(p)}" for k, p in rule.aw_conv_params.items()) + ")"
    gate = {(False,): "", (True,): " + dsa_gate always", (False, True): " | dsa_gate: no/yes",
            (True, False): " | dsa_gate: yes/no"}[rule.gate]
    if rule.gate_params and True in rule.gate:
        gate += "(" + ", ".join(f"{k}={_param_text(p)}" for k, p in rule.gate_params.items()) + ")"
    return ", ".join(parts) + aw + gate + knobs


def _param_text(p) -> str:
    if p.kind in ("float", "int"):
        return f"[{p.low}, {p.high}]" + (" log" if p.log else "")
    if p.kind == "choice":
        return "{" + ", ".join(map(str, p.choices)) + "}"
    return str(p.value)


def describe_space(space, detail: bool = False) -> str:
    """The summary ``nas-attn validate`` prints (``detail``: every block, ``space show``)."""
    with torch.device("meta"):  # only its block shapes are read
        model = build_model({"model": space.model["name"], "model_args": space.model["args"],
                             "stem": space.model["stem"], "blocks": {}})
    shapes = site_shapes(model, space.input_size)
    c, h, w = space.input_size
    lines = [f"{space.name}: OK ({space.path or 'in memory'})",
             f"  model      {space.model['name']} {space.model['args']}, stem {space.model['stem']}, "
             f"input {c}x{h}x{w}",
             f"  data       {space.data['dataset']}" + (f" from {space.data['root']}" if space.data['root'] else "")
             + f", validation fraction {space.data['val_fraction']}",
             f"  train      {space.train['epochs']} epochs, batch {space.train['batch_size']}, "
             f"{space.train['optimizer']} lr {space.train['lr']}",
             "  objectives " + ", ".join(f"{o['metric']} ({o['direction']}"
                                         + (f", ref {o['ref']:g}" if 'ref' in o else "") + ")"
                                         for o in space.objectives)]
    if space.constraints:
        lines.append("  constraints " + ", ".join(f"{k} {v:g}" for k, v in space.constraints.items()))
    stage_lines = _stage_text(space)
    if stage_lines:
        lines.append(f"  stages     {len(stage_lines)} of {len(space.stages) + (space.stem is not None)} with cost knobs "
                     f"(channel divisor {space.channel_divisor})")
        lines.extend(stage_lines)
    searched = {b: d for d in space.decisions for b in d.blocks}
    lines.append(f"  blocks     {len(searched)} of {len(shapes)} searched, in {len(space.decisions)} decisions")
    if detail:
        for block, shape in shapes.items():
            slot = "x".join(map(str, shape["slot"]))
            decision = searched.get(block)
            if decision is None:
                lines.append(f"    {block:<12} {slot:<12} (not searched: keeps the base model's)")
            else:
                tie = f" [tied: {decision.unit}]" if len(decision.blocks) > 1 else ""
                lines.append(f"    {block:<12} {slot:<12} {_choices_text(decision.rule)}{tie}")
    else:
        for decision in space.decisions:
            blocks = ", ".join(decision.blocks)
            lines.append(f"    {blocks}: {_choices_text(decision.rule)}")
    count = space.count_architectures()
    count_text = f"{count:,.0f}" if math.isfinite(count) else "infinite (continuous hyperparameters)"
    lines.append(f"  architectures {count_text}; {space.structure_count():,} module structures")
    base, low, high = mac_range(space)
    lines.append(f"  MACs per image  baseline {format_count(base, 'MACs')}, cheapest {format_count(low, 'MACs')}, "
                 f"dearest {format_count(high, 'MACs')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# nas-attn cost / modules

def model_cost_report(model_name: str, attn: Optional[str], input_size, latency: bool = False,
                      latency_batch_size: int = 1) -> Dict[str, Any]:
    """``nas-attn cost``: params, MACs, element-wise ops of a model, with ``attn`` in every block.

    With ``attn`` the top-level figures are for the model with attention, ``baseline`` holds the
    same keys for the plain model and ``blocks`` the per-block overhead.
    """
    from .latency import measure_latency
    import timm
    if not timm.is_model(model_name):
        from .space import SpaceError
        raise SpaceError(f"unknown timm model {model_name!r}", file="--model")
    if attn is not None and attn not in available():
        from .space import SpaceError
        from .space import _did_you_mean
        raise SpaceError(f"unknown attention module {attn!r}{_did_you_mean(attn, available())}; "
                         f"valid: {', '.join(available())}", file="--attn")
    args = {"in_chans": input_size[0]}

    def counted(arch):
        if latency:  # timing needs real weights and arithmetic
            model = build_model(arch)
            return model, measure(model, tuple(input_size))
        return _counted(lambda: build_model(arch), input_size)

    plain, plain_cost = counted({"model": model_name, "model_args": args, "blocks": {}})
    report: Dict[str, Any] = {"model": model_name, "input": list(input_size), **_cost_keys(plain_cost)}
    if latency:
        report["latency_ms"] = measure_latency(plain, input_size, batch_size=latency_batch_size)
        report["latency_batch_size"] = latency_batch_size
    if attn is None or attn == "none":
        return report
    sites = attention_sites(plain)
    # aw_conv is not an attention-slot module: it replaces each block's spatial conv.
    choice = ({"attention": "none", "attention_kwargs": {}, "aw_conv": {}} if attn == "aw_conv"
              else {"attention": attn, "attention_kwargs": {}, "aw_conv": None})
    arch = {"model": model_name, "model_args": args, "blocks": {b: dict(choice) for b in sites}}
    model, cost = counted(arch)
    baseline = {k: report[k] for k in ("params", "macs", "elementwise_ops", "latency_ms") if k in report}
    report.update({"attention": attn, **_cost_keys(cost), "baseline": baseline})
    if latency:
        report["latency_ms"] = measure_latency(model, input_size, batch_size=latency_batch_size)
    shapes = site_shapes(plain, input_size)
    blocks = {}
    for block, shape in shapes.items():
        if attn == "aw_conv":  # the extra over the conv it replaces, on that conv's input
            conv = getattr(sites[block].block, sites[block].conv_attr)
            aw = _cost_keys(_module_cost(AWConv2d.from_conv(conv), shape["conv"]))
            base = _cost_keys(_module_cost(conv, shape["conv"]))
            blocks[block] = {"feature_map": list(shape["conv"]), **{k: aw[k] - base[k] for k in aw}}
            continue
        c = _attn_cost(attn, (), tuple(shape["slot"]))
        blocks[block] = {"feature_map": list(shape["slot"]), **_cost_keys(c)}
    report["blocks"] = blocks
    return report


def _cost_keys(cost) -> Dict[str, Any]:
    return {"params": int(cost.params), "macs": int(cost.macs), "elementwise_ops": int(cost.elementwise_ops)}


def format_cost_report(report: Dict[str, Any]) -> str:
    c, h, w = report["input"]
    lines = [f"{report['model']} at {c}x{h}x{w}"
             + (f" with {report['attention']} in every block" if "attention" in report else "")]

    def row(label, d):
        text = (f"  {label:<16} params {format_count(d['params']):>10}   MACs {format_count(d['macs'], 'MACs'):>14}"
                f"   element-wise {format_count(d['elementwise_ops'], 'ops'):>12}")
        if "latency_ms" in d:
            text += f"   latency {d['latency_ms']:.2f} ms (batch {report.get('latency_batch_size', 1)})"
        return text

    if "baseline" in report:
        lines.append(row("without attention", report["baseline"]))
        lines.append(row(f"with {report['attention']}", report))
        b = report["baseline"]
        lines.append(f"  overhead         params +{report['params'] - b['params']:,}   MACs "
                     f"+{report['macs'] - b['macs']:,} ({100 * (report['macs'] - b['macs']) / b['macs']:.2f}%)   "
                     f"element-wise +{report['elementwise_ops'] - b['elementwise_ops']:,} ops")
        lines.append(f"  per block ({report['attention']} module alone on the block's feature map):" if report["attention"]
                     != "aw_conv" else "  per block (AW-conv's extra over the conv it replaces, on that conv's input):")
        lines.append(f"    {'block':<12} {'C x H x W':<14} {'params':>10} {'MACs':>14} {'element-wise':>16}")
        for block, d in report["blocks"].items():
            lines.append(f"    {block:<12} {'x'.join(map(str, d['feature_map'])):<14} {d['params']:>10,} "
                         f"{d['macs']:>14,} {d['elementwise_ops']:>16,}")
    else:
        lines.append(row("", report))
    lines.append("  (MACs: multiply-accumulates of conv/linear/matmul per image; element-wise: "
                 "activations, normalisation, pooling, reductions, per image)")
    return "\n".join(lines)


TIMING_BATCH_SIZE = 1
TIMING_REPEATS = 5


def _reference_block(channels: int) -> nn.Module:
    """The block a module's time is compared with: timm's ResNet BasicBlock, C -> C, stride 1.

    Its attention slot (``se``) sits after the second conv's BN, where nas_attn puts attention
    in every ResNet (resnet18/34 have this very block at 256x14x14 in layer3).
    """
    from timm.models.resnet import BasicBlock
    return BasicBlock(channels, channels)


def _fwd_bwd_ms(block: nn.Module, x: torch.Tensor) -> float:
    block.zero_grad(set_to_none=True)
    start = time.perf_counter()
    block(x).sum().backward()
    return (time.perf_counter() - start) * 1000.0


def time_overhead(name: str, feature_map, batch_size: int = TIMING_BATCH_SIZE,
                  repeats: int = TIMING_REPEATS) -> Dict[str, float]:
    """Forward+backward wall time a module adds to the reference block, in ms and % of the block.

    The block runs in train mode on a random (batch_size, C, H, W) input, on one torch
    thread, once plain and once with ``name`` in its attention slot (``aw_conv``: its conv2
    replaced), alternating, one untimed warm-up each, then ``repeats`` timed pairs; the
    fastest run of each is compared (the fastest is the least disturbed by other jobs). A
    quick figure for orientation: on a busy machine it moves, and small overheads can come
    out negative. scripts/bench_modules.py measures properly.
    """
    c, h, w = feature_map
    plain = _reference_block(c).train()
    with_module = copy.deepcopy(plain)
    if name == "aw_conv":
        with_module.conv2 = AWConv2d.from_conv(with_module.conv2)
    else:
        with_module.se = create_attn(name, c)
    x = torch.randn(batch_size, c, h, w)
    plain_ms, module_ms = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on cores shared with other jobs stall at barriers
    try:
        for i in range(repeats + 1):
            a, b = _fwd_bwd_ms(plain, x), _fwd_bwd_ms(with_module, x)
            if i > 0:
                plain_ms.append(a)
                module_ms.append(b)
    finally:
        torch.set_num_threads(threads)
    block_ms = min(plain_ms)
    overhead = min(module_ms) - block_ms
    return {"block_ms": block_ms, "overhead_ms": overhead, "overhead_pct": 100.0 * overhead / block_ms}


def module_table(feature_map=(256, 14, 14), timing: bool = True, batch_size: int = TIMING_BATCH_SIZE,
                 repeats: int = TIMING_REPEATS) -> List[Dict[str, Any]]:
    """Every registered module's params and cost on a (C, H, W) feature map, one image.

    ``aw_conv`` is measured as the extra over the 3x3 C->C conv it replaces. With ``timing``,
    each row also has ``block_ms``, ``overhead_ms`` and ``overhead_pct`` from
    :func:`time_overhead` (forward+backward wall time added to a ResNet BasicBlock on the same
    map, batch ``batch_size``, fastest of ``repeats``, one thread).
    """
    rows = []
    for name in available():
        if name == "none" or name in available("gate"):
            continue  # a gate wraps a whole block: its cost depends on the block
        if name == "aw_conv":
            conv = nn.Conv2d(feature_map[0], feature_map[0], 3, padding=1, bias=False)
            plain, aw = _module_cost(conv, feature_map), _module_cost(AWConv2d.from_conv(conv), feature_map)
            row = {"name": name, "params": int(aw.params - plain.params), "macs": int(aw.macs - plain.macs),
                   "elementwise_ops": int(aw.elementwise_ops - plain.elementwise_ops),
                   "note": "extra over the 3x3 conv it replaces"}
        else:
            try:
                cost = _module_cost(create_attn(name, feature_map[0]), feature_map)
            except Exception as exc:  # a timm module that cannot run at this size: say so, do not hide it
                rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            row = {"name": name, "params": int(cost.params), "macs": int(cost.macs),
                   "elementwise_ops": int(cost.elementwise_ops)}
        if timing:
            row.update(time_overhead(name, feature_map, batch_size, repeats))
        rows.append(row)
    return rows


def format_module_table(rows, feature_map, batch_size: int = TIMING_BATCH_SIZE,
                        repeats: int = TIMING_REPEATS) -> str:
    c, h, w = feature_map
    timed = any("overhead_ms" in r for r in rows)
    time_head = f" {'fwd+bwd time added':>22}" if timed else ""
    lines = [f"Attention modules on a {c}x{h}x{w} feature map (one image)",
             f"  {'module':<10} {'params':>10} {'MACs':>14} {'element-wise ops':>18}{time_head}  note"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['name']:<10} {'-':>10} {'-':>14} {'-':>18}{' ' * len(time_head)}  {r['error']}")
            continue
        time_text = ""
        if timed:
            time_text = f" {r['overhead_ms']:>+10.2f} ms {r['overhead_pct']:>+7.1f}%"
        lines.append(f"  {r['name']:<10} {r['params']:>10,} {r['macs']:>14,} {r['elementwise_ops']:>18,}"
                     f"{time_text}  {r.get('note', '')}")
    if timed:
        block_ms = min(r["block_ms"] for r in rows if "block_ms" in r)
        lines.append(
            f"  (time added: forward+backward wall time of a timm ResNet BasicBlock {c}->{c} at "
            f"{h}x{w}, batch {batch_size}, train mode, with the module in its attention slot "
            f"(aw_conv: replacing its 3x3 conv2) minus without, fastest of {repeats} alternating "
            f"runs each, 1 torch thread; the block alone took {block_ms:.1f} ms. A quick figure: "
            f"other jobs on the machine move it; scripts/bench_modules.py measures properly)")
    return "\n".join(lines)
