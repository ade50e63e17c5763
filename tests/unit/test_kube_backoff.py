"""Back-off that follows the API server: Retry-After honoured, outages waited out rather than given up on."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from stockade.kopf_tuning import API_RETRY_BACKOFFS, API_RETRY_EVERY, _Backoffs
from stockade.kube import RETRY_AFTER_MAX_SECONDS, Backoff, retry_after


@pytest.mark.parametrize(("status", "headers", "expected"), [
    (429, {"Retry-After": "2"}, 2.0),
    (503, {"retry-after": "0.5"}, 0.5),
    (429, {"Retry-After": "100000"}, RETRY_AFTER_MAX_SECONDS),
    (429, {}, None),
    (429, None, None),
    (500, {"Retry-After": "2"}, None),
    (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
    (429, {"Retry-After": "-1"}, None),
])
def test_retry_after_is_read_only_where_the_api_server_means_it(status: int, headers: dict[str, str] | None,
                                                                 expected: float | None) -> None:
    assert retry_after(status, headers) == expected


def test_a_pushed_backoff_holds_every_caller_until_it_passes() -> None:
    backoff = Backoff()
    backoff.push(0.3)
    started = time.monotonic()
    released: list[float] = []

    def call() -> None:
        backoff.wait()
        released.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(released) == 4 and min(released) - started >= 0.29, "no caller goes out before the moment"
    backoff.push(0.0)  # an earlier moment never shortens a later one
    later = time.monotonic()
    backoff.wait()
    assert time.monotonic() - later < 0.29


def test_kopf_retries_an_outage_forever_with_a_fresh_sequence_each_call() -> None:
    backoffs = _Backoffs()
    first = list(itertools.islice(iter(backoffs), 20))
    assert tuple(first[: len(API_RETRY_BACKOFFS)]) == API_RETRY_BACKOFFS
    assert first[len(API_RETRY_BACKOFFS):] == [API_RETRY_EVERY] * (20 - len(API_RETRY_BACKOFFS))
    assert list(itertools.islice(iter(backoffs), 3)) == list(API_RETRY_BACKOFFS[:3])
