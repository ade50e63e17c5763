"""memtrim: libc's malloc_trim is found on glibc and called off the loop; 0 turns the task off."""

from __future__ import annotations

import asyncio
import platform

import pytest

from stockade import memtrim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_is_found_and_returns_a_flag() -> None:
    trim = memtrim.load_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory went back to the system, 0: none could


def test_zero_seconds_ends_at_once() -> None:
    asyncio.run(asyncio.wait_for(memtrim.trim_forever(0), timeout=1))


def test_a_trim_is_due_only_after_the_rss_grew() -> None:
    mb = 1 << 20
    assert memtrim.due(100 * mb, None)  # never trimmed yet
    assert not memtrim.due(102 * mb, 100 * mb)  # idle: no trim, no cost
    assert memtrim.due(104 * mb, 100 * mb)  # a burst: trim
    assert memtrim.due(None, 100 * mb)  # RSS unknown: trim as if it grew


def test_idle_rss_means_one_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    looks: list[int] = []

    def trim() -> int:
        calls.append(1)
        return 1

    async def run() -> None:
        tenth = asyncio.Event()

        def rss() -> int:  # on the loop: trim_forever reads the RSS there
            looks.append(1)
            if len(looks) == 10:
                tenth.set()
            return 100 << 20

        monkeypatch.setattr(memtrim, "load_trim", lambda: trim)
        task = asyncio.create_task(memtrim.trim_forever(0.005, rss=rss))
        await tenth.wait()
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=5))
    assert calls == [1]  # the first look trims; the RSS never grew after it


def test_trims_repeatedly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        third = asyncio.Event()

        def trim() -> int:  # runs on a thread
            calls.append(1)
            if len(calls) == 3:
                loop.call_soon_threadsafe(third.set)
            return 1

        monkeypatch.setattr(memtrim, "load_trim", lambda: trim)
        task = asyncio.create_task(memtrim.trim_forever(0.01, rss=lambda: None))
        await third.wait()
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=5))
    assert len(calls) >= 3
