"""The ``stockade_agentruns`` gauge: how many of the runs this process reconciles are in each phase."""

from __future__ import annotations

from collections import Counter

from stockade import metrics
from stockade.store import RunKey

PHASES = ("Pending", "Queued", "Running", "Quarantined", "Succeeded", "Failed", "Expired")


class PhaseCount:
    def __init__(self) -> None:
        self._phases: dict[RunKey, str] = {}

    def note(self, key: RunKey, phase: str | None) -> None:
        """The run's phase now; None: the run is gone."""
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        counts = Counter(self._phases.values())
        for name in PHASES:  # every phase, so that a phase that emptied reads 0 rather than its last count
            metrics.RUNS.labels(phase=name).set(counts.get(name, 0))
