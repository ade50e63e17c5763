"""The /metrics endpoint: the per-run status gauge fed from the store, and a port in use stops the operator.

``stockade run`` checks its ports before kopf starts (stockade.ports); this covers the race in between and
any other caller: a PermanentError ends kopf's start-up (no "will try again in 60 seconds", no operator
running on without metrics), and ``stockade run`` then exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import kopf
from prometheus_client import start_http_server

from stockade import metrics
from stockade.store import Store


def run_phases(store: Store) -> Iterator[tuple[str, str, str]]:
    """(namespace, name, phase) of every AgentRun in the store; a run without a phase yet is Pending."""
    for attempt in range(3):
        try:
            # list() copies under the GIL; the event loop may still resize the dict between two scrapes' copies.
            runs = list(store.agentruns.items())
            break
        except RuntimeError:
            if attempt == 2:
                raise
    for (namespace, name), body in runs:
        phase = (body.get("status") or {}).get("phase") or "Pending"
        yield namespace, name, str(phase)


def serve(port: int, store: Store) -> None:
    metrics.RUN_STATUS.source = lambda: run_phases(store)
    try:
        start_http_server(port)
    except OSError as err:
        raise kopf.PermanentError(
            f"the metrics port {port} (STOCKADE_METRICS_PORT) cannot be used: {err.strerror or err}; "
            "set STOCKADE_METRICS_PORT to a free port (0 turns it off)") from None
