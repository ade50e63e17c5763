"""One way to write status (stockade.kube.write_status): decide on what was read, write with its
resourceVersion, on a conflict read again and decide again; bounded, backed off, never retrying a refusal."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from stockade.kube import (
    RETRY_AFTER_TRIES,
    STATUS_ATTEMPTS,
    Kube,
    KubeError,
    StatusConflict,
    StatusWrite,
    object_path,
    status_backoff,
    write_status,
)

from .fakes import FakeKube, conflict, invalid, throttled

PATH = object_path("stockade.io/v1alpha1", "AgentRun", "team", "rome")
STATUS = PATH + "/status"


def agentrun(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": "rome", "namespace": "team", "uid": "u1", "generation": 1}, "status": status}


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def append(entry: str) -> Any:
    """A decision that appends ``entry`` to status.notes, and remembers every version it decided on."""
    seen: list[list[str]] = []

    def decide(current: dict[str, Any]) -> dict[str, Any]:
        notes = list((current.get("status") or {}).get("notes") or [])
        seen.append(notes)
        return {"notes": [*notes, entry]}

    decide.seen = seen  # type: ignore[attr-defined]
    return decide


def write(kube: FakeKube, decide: Any, current: dict[str, Any] | None, **kwargs: Any) -> StatusWrite:
    return asyncio.run(write_status(kube, PATH, decide, current=current, **kwargs))


def test_two_conflicts_then_success_reads_again_and_decides_again() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun(notes=["a"]))
    kube.fail("PATCH", STATUS, conflict(), conflict())
    decide, sleeps, remembered = append("b"), Sleeps(), []
    result = write(kube, decide, current, sleep=sleeps, remember=remembered.append)
    assert kube.verbs(skip_get=False) == [("PATCH", STATUS), ("GET", PATH)] * 2 + [("PATCH", STATUS)]
    assert decide.seen == [["a"]] * 3
    assert result.written is not None and result.written["status"]["notes"] == ["a", "b"]
    assert kube.live("stockade.io/v1alpha1", "AgentRun", "team", "rome")["status"]["notes"] == ["a", "b"]
    assert len(sleeps.slept) == 2 and all(0 < s <= 0.02 for s in sleeps.slept), "a conflict waits only moments"
    assert remembered[-1] == result.written, "every read and the answer are remembered (the store)"


def test_a_write_that_lost_a_race_merges_what_the_other_writer_wrote() -> None:
    """No injected error: another writer changes the status between our read and our write; the API
    server's precondition refuses ours, and the second decision keeps both entries."""
    kube = FakeKube()
    current = kube.seed(agentrun(notes=["a"]))
    inner = append("mine")
    raced = False

    def decide(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal raced
        if not raced:  # someone else's write lands right after our read
            raced = True
            live = kube.objects[PATH]
            kube.put(PATH, {**live, "status": {"notes": ["a", "theirs"]}})
        return inner(body)  # type: ignore[no-any-return]

    result = write(kube, decide, current, sleep=Sleeps())
    assert result.written is not None and result.written["status"]["notes"] == ["a", "theirs", "mine"]
    ours, again = kube.bodies("PATCH", "/status")
    assert ours["metadata"] == {"resourceVersion": current["metadata"]["resourceVersion"]}
    assert again["metadata"]["resourceVersion"] != ours["metadata"]["resourceVersion"], "the version read again"


def test_always_conflicting_gives_up_with_a_clear_error() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    kube.fail("PATCH", STATUS, *[conflict()] * (STATUS_ATTEMPTS + 3))
    sleeps = Sleeps()
    with pytest.raises(StatusConflict) as raised:
        write(kube, append("b"), current, sleep=sleeps)
    assert raised.value.status == 409 and raised.value.conflict
    assert f"gave up after {STATUS_ATTEMPTS} attempts" in str(raised.value) and PATH in str(raised.value)
    assert kube.verbs().count(("PATCH", STATUS)) == STATUS_ATTEMPTS
    assert len(sleeps.slept) == STATUS_ATTEMPTS - 1
    assert min(sleeps.slept) > 0 and max(sleeps.slept) <= 0.01 * 2 ** (STATUS_ATTEMPTS - 2), "backs off, boundedly"


def test_a_422_is_not_retried() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    kube.fail("PATCH", STATUS, invalid("AgentRun.stockade.io \"rome\" is invalid: status.phase: Unsupported value"))
    decide, sleeps = append("b"), Sleeps()
    with pytest.raises(KubeError) as raised:
        write(kube, decide, current, sleep=sleeps)
    assert raised.value.status == 422 and not isinstance(raised.value, StatusConflict)
    assert kube.verbs(skip_get=False) == [("PATCH", STATUS)]
    assert decide.seen == [[]] and sleeps.slept == []


def test_a_throttled_write_waits_as_long_as_the_api_server_asks_and_is_not_read_again() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    kube.fail("PATCH", STATUS, throttled(retry_after=3.0))
    sleeps = Sleeps()
    result = write(kube, append("b"), current, sleep=sleeps)
    assert result.written is not None
    assert sleeps.slept == [3.0]
    assert kube.verbs(skip_get=False) == [("PATCH", STATUS), ("PATCH", STATUS)], "same object, no re-read"


def test_nothing_to_write_and_gone_write_nothing() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    assert write(kube, lambda body: None, current) == StatusWrite(current, None)
    assert write(kube, append("b"), None) == StatusWrite(None, None)
    assert kube.calls == []
    gone = FakeKube()  # in the store, but deleted from the API server meanwhile
    assert write(gone, append("b"), current, sleep=Sleeps()) == StatusWrite(None, None)
    assert gone.verbs() == [("PATCH", STATUS)]


def test_a_conflict_read_that_finds_the_object_gone_stops() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    kube.fail("PATCH", STATUS, conflict())
    kube.objects.pop(PATH)  # deleted right after our read
    assert write(kube, append("b"), current, sleep=Sleeps()).seen is None


def test_an_async_decision_is_awaited() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())

    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"phase": "Running"}

    assert write(kube, decide, current).written["status"] == {"phase": "Running"}  # type: ignore[index]


def test_without_a_precondition_the_write_carries_no_resource_version_and_tries_once() -> None:
    kube = FakeKube()
    current = kube.seed(agentrun())
    write(kube, lambda body: {"phase": "Running"}, current, precondition=False, attempts=1)
    assert kube.bodies("PATCH", "/status") == [{"status": {"phase": "Running"}}]
    kube.fail("PATCH", STATUS, KubeError(503, "ServiceUnavailable", "etcd is away"))
    with pytest.raises(KubeError):
        write(kube, lambda body: {"phase": "Failed"}, current, precondition=False, attempts=1)


@pytest.mark.parametrize(("attempt", "err", "low", "high"), [
    (0, conflict(), 0.005, 0.01),
    (3, conflict(), 0.04, 0.08),
    (0, KubeError(500, "InternalError", "x"), 0.05, 0.1),
    (10, KubeError(0, "ConnectionError", "x"), 1.0, 2.0),
    (0, throttled(retry_after=7.0), 7.0, 7.0),
])
def test_backoff_doubles_with_jitter_and_honours_retry_after(attempt: int, err: KubeError, low: float,
                                                             high: float) -> None:
    assert status_backoff(attempt, err, jitter=lambda: 0.0) == pytest.approx(low)
    assert status_backoff(attempt, err, jitter=lambda: 1.0) == pytest.approx(high)


class _Response:
    """What urllib3 answers, as Kube reads it."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.status, self.reason, self.data, self.headers = status, "", json.dumps(body).encode(), headers


class _Connection:
    """stockade.kubeconn.Connection as Kube uses it, answering each call with the next of ``answers``."""

    def __init__(self, *answers: _Response, relogin: bool = True) -> None:
        self.answers, self.calls, self.relogins, self._relogin = list(answers), 0, 0, relogin
        self.info = object()

    def request(self, *args: Any, **kwargs: Any) -> _Response:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]

    def relogin(self, stale: object) -> bool:
        self.relogins += 1
        self.info = object()
        return self._relogin


def _throttled() -> _Response:
    return _Response(429, {"reason": "TooManyRequests", "message": "slow down"}, {"Retry-After": "0.01"})


def _unauthorized() -> _Response:
    return _Response(401, {"reason": "Unauthorized", "message": "Unauthorized"}, {})


def test_kube_says_how_long_the_api_server_still_asked_to_wait() -> None:
    api = _Connection(_throttled())
    kube = Kube(api, ThreadPoolExecutor(max_workers=1))  # type: ignore[arg-type]
    with pytest.raises(KubeError) as raised:
        kube.request("GET", PATH)
    assert api.calls == RETRY_AFTER_TRIES + 1
    assert (raised.value.status, raised.value.retry_after, raised.value.transient) == (429, 0.01, True)


def test_kube_logs_in_again_once_after_a_401_and_repeats_the_call() -> None:
    api = _Connection(_unauthorized(), _Response(200, {"kind": "AgentRun"}, {}))
    kube = Kube(api, ThreadPoolExecutor(max_workers=1))  # type: ignore[arg-type]
    assert kube.request("GET", PATH) == {"kind": "AgentRun"}
    assert (api.calls, api.relogins) == (2, 1)


def test_kube_gives_the_401_back_when_the_credentials_did_not_change() -> None:
    api = _Connection(_unauthorized(), relogin=False)
    kube = Kube(api, ThreadPoolExecutor(max_workers=1))  # type: ignore[arg-type]
    with pytest.raises(KubeError) as raised:
        kube.request("GET", PATH)
    assert (raised.value.status, api.calls, api.relogins) == (401, 1, 1)
