"""How figures are printed: every number with its unit, SI prefixes spelt out."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

#: The SI-prefix ladder every printed count and every plot axis uses.
SI_PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def si_scale(values: Iterable[float]) -> Tuple[float, str]:
    """(divisor, prefix) that brings the largest finite magnitude into [1, 1000): 1e6 -> (1e6, "M")."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    for scale, prefix in SI_PREFIXES:
        if largest >= scale:
            return scale, prefix
    return 1.0, ""


def format_count(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    """``37215232, "MACs"`` -> ``37.22 M MACs``; ``-`` for a missing or non-finite value."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    suffix = f" {unit}" if unit else ""
    scale, prefix = si_scale([value])
    if prefix:
        return f"{value / scale:.{digits}f} {prefix}{suffix}"
    return f"{value:.0f}{suffix}"
