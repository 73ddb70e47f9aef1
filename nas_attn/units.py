"""How figures are printed: every number with its unit, SI prefixes spelt out."""
from __future__ import annotations

import math
from typing import Optional


def format_count(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    """``37215232, "MACs"`` -> ``37.22 M MACs``; ``-`` for a missing or non-finite value."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    suffix = f" {unit}" if unit else ""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f} {prefix}{suffix}"
    return f"{value:.0f}{suffix}"
