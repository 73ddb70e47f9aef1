"""The metrics a trial reports: each one's name, better direction, unit and labels, in one place.

Everything that names a metric (the space's ``objectives``, a trial's reports, trials.jsonl,
export's ``--best``, the plots' axes and legends, the report's tables) reads this table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

from .units import format_count


@dataclass(frozen=True)
class Metric:
    """One metric.

    ``kind`` says how its values print: ``fraction`` (accuracy, 4 decimals), ``count`` (an SI
    prefix and ``short`` as the unit: ``37.00 M MACs``) or ``ms`` (milliseconds). ``ideal`` is
    its best possible value when one exists without data (accuracy 1, a cost 0), used for the
    ref-to-ideal box of a hypervolume. ``axis`` is the plot's axis text, None for a metric the
    x axis cannot show.
    """
    name: str
    direction: str
    description: str
    short: str
    kind: str
    ideal: Optional[float] = None
    axis: Optional[str] = None

    @property
    def axis_unit(self) -> str:
        """What follows the SI prefix on an axis: ``ms`` for a time, nothing for a count."""
        return "ms" if self.kind == "ms" else ""


METRICS: Dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "maximize", "fraction of validation images classified right (top-1)", "acc",
           "fraction", ideal=1.0),
    Metric("macs", "minimize", "multiply-accumulates per image", "MACs", "count", ideal=0.0,
           axis="MACs per image"),
    Metric("effective_macs", "minimize", "MACs per image with DSA-pruned pixels skipped", "eff. MACs", "count",
           ideal=0.0, axis="effective MACs per image (DSA-pruned pixels skipped)"),
    Metric("params", "minimize", "parameters", "params", "count", ideal=0.0, axis="parameters"),
    Metric("elementwise_ops", "minimize", "element-wise/pooling/normalisation ops per image", "elem. ops",
           "count", ideal=0.0),
    Metric("latency_ms", "minimize", "median forward time of one batch, milliseconds", "latency", "ms",
           ideal=0.0, axis="forward latency of one batch"),
)}
#: Every trial report carries these (NaN when not measured): Ray Tune rejects results that
#: lack a metric its searcher or scheduler optimises.
REPORTED = tuple(METRICS)
#: What trials.jsonl keeps of a trial's last report besides the metrics above.
TRAINING_FIELDS = ("epoch", "train_time_s", "val_loss", "train_loss")
#: How far the accuracy can be trusted (nas_attn.intervals): the validation images it was
#: measured on and its 95% Wilson interval, fractions like the accuracy.
INTERVAL_FIELDS = ("val_images", "accuracy_low", "accuracy_high")
RECORDED = REPORTED + TRAINING_FIELDS + INTERVAL_FIELDS
#: Metrics a plot's x axis can show.
X_METRICS = tuple(name for name, m in METRICS.items() if m.axis)


def short_name(metric: str) -> str:
    """The metric's short label (``eff. MACs``), or its name if it is not in the table."""
    return METRICS[metric].short if metric in METRICS else metric


def is_number(value) -> bool:
    """A finite int or float (not a bool): a value that was measured."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_value(metric: str, value: Optional[float]) -> str:
    """A metric value with its unit: accuracy 4 decimals, counts with an SI prefix, latency in ms."""
    if not is_number(value):
        return "-"
    kind = METRICS[metric].kind if metric in METRICS else "count"
    if kind == "fraction":
        return f"{value:.4f}"
    if kind == "ms":
        return f"{value:.3g} ms"
    return format_count(value, short_name(metric))


def accuracy_text(record: Dict, digits: int = 4) -> str:
    """A record's accuracy with its 95% interval: ``0.8120 [0.7950, 0.8290]`` (Wilson over the
    validation images) or, once confirmed, ``0.8100 [0.7900, 0.8300] mean of 3 seeds``
    (Student's t over seeds); ``-`` when not measured."""
    confirmed = record.get("confirm")
    if isinstance(confirmed, dict) and is_number(confirmed.get("mean")):
        interval = (f" [{confirmed['low']:.{digits}f}, {confirmed['high']:.{digits}f}]"
                    if is_number(confirmed.get("low")) else "")
        return f"{confirmed['mean']:.{digits}f}{interval} mean of {len(confirmed['seeds'])} seeds"
    m = record.get("metrics") or {}
    if not is_number(m.get("accuracy")):
        return "-"
    text = f"{m['accuracy']:.{digits}f}"
    if is_number(m.get("accuracy_low")) and is_number(m.get("accuracy_high")):
        text += f" [{m['accuracy_low']:.{digits}f}, {m['accuracy_high']:.{digits}f}]"
    return text
