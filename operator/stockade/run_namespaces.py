"""Which namespace is an AgentRun's run namespace, from what the store holds (pure).

A namespace is a run's only if it carries the run's uid (``stockade.io/agentrun-uid``), or, for one made
before uids were recorded, if it is the recorded ``status.runNamespace`` and its name labels say so. Once
recorded, the name stays; a name someone else holds is never adopted: the run takes the next candidate
(see :mod:`stockade.naming`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade.naming import DNS_LABEL, MAX_LABEL, run_namespace_candidates
from stockade.store import RunKey, Store, owner_uid, run_of, uid_of


def owned(store: Store, key: RunKey, body: Mapping[str, Any]) -> str | None:
    """The existing namespace that is this run's, or None."""
    mine = store.namespace_of_uid(uid_of(body))
    if mine:
        return mine
    recorded = _recorded(body)
    live = store.get("Namespace", "", recorded) if recorded else None
    if live is not None and not owner_uid(live) and run_of(live) == key:
        return recorded
    return None


def _recorded(body: Mapping[str, Any]) -> str:
    """status.runNamespace if it is a usable name (the status is the operator's, but never trust a name blindly)."""
    recorded = (body.get("status") or {}).get("runNamespace")
    return recorded if isinstance(recorded, str) and len(recorded) <= MAX_LABEL and DNS_LABEL.match(recorded) \
        else ""


def choose(store: Store, key: RunKey, body: Mapping[str, Any]) -> str | None:
    """The run namespace to use: the run's own, else the recorded name while nobody holds it, else the first
    free candidate. None when every candidate is taken."""
    mine = owned(store, key, body)
    if mine:
        return mine
    recorded = _recorded(body)
    if recorded and store.get("Namespace", "", recorded) is None:
        return recorded
    for candidate in run_namespace_candidates(key[0], key[1], uid_of(body)):
        if candidate != recorded and store.get("Namespace", "", candidate) is None:
            return candidate
    return None
