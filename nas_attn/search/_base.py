"""What the search hands back and the error it raises (kept apart so every part can import them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from ..space import SearchSpace


class SearchError(ValueError):
    """A search that cannot start (bad flag, missing data, unreachable cluster)."""


@dataclass
class SearchResult:
    """What a search leaves: every finished trial, the Pareto set, and where the files are.

    ``interrupted`` is True when the search stopped before its budget (Ctrl+C, or Ray ended
    it): fewer records than ``space.search["trials"]``; ``--resume`` continues it.
    """
    run_dir: Path
    trials: List[Dict[str, Any]]
    pareto: List[Dict[str, Any]]
    space: SearchSpace
    interrupted: bool = False

    @property
    def finished(self) -> int:
        """Trials that trained to the end (status ``ok``)."""
        return sum(1 for record in self.trials if record.get("status") == "ok")
