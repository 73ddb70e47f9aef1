"""What the search prints: one progress line per finished trial, and the Pareto table at the end."""
from __future__ import annotations

from typing import Any, Dict, List

from ..metrics import accuracy_text, is_number
from ..results import TRIALS_FILE
from ..units import format_count


def progress_line(record: Dict[str, Any], done: int, budget: int) -> str:
    m = record.get("metrics", {})
    acc = m.get("accuracy")
    acc_text = f"acc {acc:.3f}" if isinstance(acc, float) and is_number(acc) else "acc -"
    tail = ""
    if record["status"] == "failed":
        tail = f"  ({str(record.get('error', ''))[:80]})"
    elif record["status"] == "infeasible":
        tail = f"  (breaks {', '.join(record.get('violations') or {})})"
    elif record["status"] == "stopped":
        tail = f"  (stopped after epoch {m.get('epoch')})"
    from ..arch import arch_summary  # here: nas_attn.arch imports timm, which the driver loads late
    summary = arch_summary(record["arch"]) if record.get("arch") else "-"
    return (f"[{done:>3}/{budget}] trial {record['number']:>3}  {record['status']:<10} {acc_text}  "
            f"{format_count(m.get('macs'), 'MACs'):>14}  eff {format_count(m.get('effective_macs'), 'MACs'):>14}"
            f"  {summary}{tail}")


def pareto_table(records: List[Dict[str, Any]]) -> str:
    """A plain-text table of Pareto records (units in the header)."""
    from ..arch import arch_summary
    header = (f"{'trial':>5}  {'accuracy [95% interval]':>23}  {'MACs':>14}  {'eff. MACs':>14}  {'params':>10}"
              "  architecture")
    lines = [header, "-" * len(header)]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['number']:>5}  {accuracy_text(r, digits=3):>23}  "
                     f"{format_count(m.get('macs'), 'MACs'):>14}  {format_count(m.get('effective_macs'), 'MACs'):>14}  "
                     f"{format_count(m.get('params'), ''):>10}  {arch_summary(r['arch'])}")
    return "\n".join(lines)


def repeats_text(answered: int, set_aside: int) -> List[str]:
    """The summary lines for the sampler's repeated proposals (none when there were none).

    ``answered``: repeats of a trained architecture, told its values; ``set_aside``: repeats of
    an architecture being trained at the time, told FAIL.
    """
    lines = []
    if answered:
        lines.append(f"{answered} proposal{'s' if answered != 1 else ''} repeated a trained architecture and "
                     f"{'were' if answered != 1 else 'was'} answered from its record (not retrained)")
    if set_aside:
        lines.append(f"{set_aside} proposal{'s' if set_aside != 1 else ''} repeated an architecture being trained "
                     f"and {'were' if set_aside != 1 else 'was'} set aside (FAIL in the study, not trained)")
    if lines:
        lines.append(f"  (the study keeps them with user attribute repeat_of; {TRIALS_FILE} has no line for their "
                     f"trial numbers)")
    return lines
