"""kopf settings for an operator that uses only event handlers (no on.create/update/delete).

kopf computes a "diff base" (a deep copy of each object's essence) on every watch event, for
change-detecting handlers that this operator does not have. Under load that copy was about a tenth
of the operator's CPU (py-spy), so it is replaced by a storage that keeps and builds nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, cast

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """No change-detecting handlers, so no essence to keep: every build is empty, nothing is stored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


# kopf's default retries of an API call add up to about 54 s; then the error reaches the task, and for
# the peering keep-alive that ended the operator's work while the process stayed up (a 75 s API server
# outage left a zombie). An outage is waited out instead: the same back-off, then every 30 s, forever.
# kopf never retries sooner than a 429's Retry-After.
API_RETRY_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
API_RETRY_EVERY = 30.0


def api_backoffs() -> Iterable[float]:
    return itertools.chain(API_RETRY_BACKOFFS, itertools.repeat(API_RETRY_EVERY))


class _Backoffs:
    """A fresh infinite iterator for every request (kopf iterates the setting once per call)."""

    def __iter__(self) -> Any:
        return iter(api_backoffs())


def tune(settings: kopf.OperatorSettings) -> None:
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.networking.error_backoffs = _Backoffs()
