"""Triggers for the same run coalesce: at most one reconcile of a run at a time, and a trigger that
arrives meanwhile makes it run once more (so the last state is always looked at)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class _Slot:
    running: bool = False
    dirty: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Coalescer:
    """At most one run per key at a time; triggers during a run make it run once more."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[None]]) -> None:
        slot = self._slots.setdefault(key, _Slot())
        if slot.running:
            slot.dirty = True
            return
        slot.running = True
        try:
            while True:
                slot.dirty = False
                await work()
                if not slot.dirty:
                    break
        finally:
            slot.running = False
            self._slots.pop(key, None)
