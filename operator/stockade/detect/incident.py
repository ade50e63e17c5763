"""A violation on its way to the AgentRun, and what its sender is told became of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.api.models import Violation

# What became of a submitted violation, as its acknowledgement says (the signal endpoint answers by it).
RECORDED = "recorded"  # in the AgentRun's status, as the API server returned it
DROPPED = "dropped"  # refused: too many distinct violations already wait for this run
GONE = "gone"  # the AgentRun no longer exists
FAILED = "failed"  # the status write failed; the sender should try again
Ack = asyncio.Future[str]


def settle(waiters: Iterable[Ack], outcome: str) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(outcome)


@dataclass
class Incident:
    """A violation on its way to the AgentRun, with what came with it."""

    violation: Violation
    signal: Any = None  # the payload as received (kept bounded in the evidence)
    received: float = field(default_factory=time.perf_counter)
    attributable: bool = True  # False: the agent cannot have done it; record, do not act
    force: bool = False  # act even on an already quarantined pod (its isolation was undone)
    count: int = 1
    pod: Mapping[str, Any] | None = None  # the pod as the signal endpoint found it in the run namespace
    waiters: list[Ack] = field(default_factory=list)  # resolved once the violation is recorded (or is not)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # in every log line about it

    @property
    def signature(self) -> tuple[str, str | None, str, str]:
        v = self.violation
        return v.kind, v.pod, v.detail, v.source
