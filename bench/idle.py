"""With the AgentRuns present and nothing happening: the operator's CPU seconds (utime + stime from
/proc/<pid>/stat) and its API requests (the audit log, by its own user) over a measured idle window."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import stats
from api_requests import WRITES, AuditLog, Window, count
from operator_proc import Operator


def requests_by_operator(audit: AuditLog, offset: int, start: float, end: float, operator_user: str, *,
                         keep: Callable[[Mapping[str, Any]], bool] = lambda _: True) -> Counter[str]:
    """The operator's requests received in [start, end] (those ``keep`` keeps), by "verb resource", each once."""
    counts = count((e for e in audit.since(offset) if keep(e)), [Window(start, end, end)], operator_user)
    return Counter({what: n for (who, what), n in counts.to_ready.items() if who == "stockade"})


async def measure(op: Operator, audit: AuditLog | None, operator_user: str, seconds: float,
                  runs_present: int, *, quiet: float = 10) -> dict[str, Any]:
    await asyncio.sleep(quiet)  # what the last runs made settles first (their pods' events, status writes)
    offset = audit.mark() if audit else 0
    start, cpu = time.time(), op.cpu_seconds()
    await asyncio.sleep(seconds)
    end, used = time.time(), op.cpu_seconds() - cpu
    elapsed = end - start
    result: dict[str, Any] = {"runs_present": runs_present, "seconds": elapsed, "cpu_seconds": used,
                              "cpu_seconds_per_minute": stats.per_minute(used, elapsed),
                              "load_average": os.getloadavg()[0], "rss_mb_at_end": op.rss_mb(),
                              "writes_per_minute": None,
                              "requests_per_minute": None, "writes_by_request": {}}
    if audit is not None and operator_user:
        await asyncio.sleep(1)  # the window's last events written to the log
        requests = requests_by_operator(audit, offset, start, end, operator_user)
        writes = {what: n for what, n in requests.items() if what.split()[0] in WRITES}
        result.update(writes_per_minute=stats.per_minute(sum(writes.values()), elapsed),
                      requests_per_minute=stats.per_minute(sum(requests.values()), elapsed),
                      writes_by_request={w: stats.per_minute(n, elapsed) for w, n in writes.items()},
                      requests_by_request={w: stats.per_minute(n, elapsed) for w, n in requests.items()})
    return result


def line(row: dict[str, Any]) -> str:
    writes = row["writes_per_minute"]
    return (f"idle {row['seconds']:.0f} s with {row['runs_present']} AgentRuns present "
            f"(load {row['load_average']:.2f}): "
            f"{row['cpu_seconds_per_minute']:.3f} CPU s per minute, operator RSS at the end "
            f"{row.get('rss_mb_at_end', 0):.0f} MB; operator API writes per minute: "
            f"{'not counted (no audit log)' if writes is None else f'{writes:.1f}'}"
            + (f" ({', '.join(f'{k} {v:.1f}' for k, v in sorted(row['writes_by_request'].items()))})"
               if row["writes_by_request"] else "")
            + ("" if row["requests_per_minute"] is None else f"; all requests {row['requests_per_minute']:.1f}/min"))
