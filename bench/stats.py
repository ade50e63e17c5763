"""Pure helpers of the benchmarks: percentiles, ratios, CPU time from /proc/<pid>/stat (no I/O here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """n, p50 (the median), p90, p99 (nearest rank on the sorted values), max and mean; NaN for no values."""
    if not values:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99),
            "max": ordered[-1], "mean": statistics.fmean(ordered)}


def ratio(ours: float, floor: float) -> float:
    """ours / floor, NaN where either is missing or the floor is zero."""
    if not floor or math.isnan(ours) or math.isnan(floor):
        return float("nan")
    return ours / floor


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat. The command name (field 2) is in
    parentheses and may hold spaces and parentheses itself, so the fields are counted after its last ')'."""
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is the state (field 3 of the file): utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def per_minute(amount: float, seconds: float) -> float:
    return amount * 60.0 / seconds if seconds > 0 else float("nan")
