"""The webhook server's own thread (stockade.admission.server): the trivial /stockade-floor endpoint a benchmark
reads Stockade's handlers against is served only when asked for, and answers without reaching kopf."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from stockade.admission import server

REVIEW = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
          "request": {"uid": "u-1", "operation": "CREATE", "object": {"kind": "Pod"}}}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(floor: bool) -> tuple[server._ServerThread, list[str]]:
    reached: list[str] = []

    async def fn(data: dict[str, Any], *, webhook: str, **_: Any) -> dict[str, Any]:  # kopf's WebhookFn
        reached.append(webhook)
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": data["request"]["uid"], "allowed": False}}

    thread = server._ServerThread(fn, "127.0.0.1", _port(), None, floor=floor)
    thread.start()
    thread.ready.wait(10)
    assert thread.error is None
    return thread, reached


def _post(thread: server._ServerThread, path: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{thread.port}/{path}", data=json.dumps(REVIEW).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_the_floor_allows_without_reaching_kopf_and_the_real_webhooks_still_do() -> None:
    thread, reached = _serve(floor=True)
    try:
        assert _post(thread, f"{server.FLOOR_PATH}/allowlist")["response"] == {"uid": "u-1", "allowed": True}
        assert reached == []
        assert _post(thread, "allowlist")["response"]["allowed"] is False
        assert reached == ["allowlist"]
    finally:
        thread.stop()


def test_without_the_setting_the_floor_path_is_an_ordinary_webhook_id() -> None:
    thread, reached = _serve(floor=False)
    try:
        answer = _post(thread, f"{server.FLOOR_PATH}/allowlist")
    except urllib.error.HTTPError as err:  # pragma: no cover (kopf's handler decides)
        pytest.fail(f"unexpected {err}")
    finally:
        thread.stop()
    assert answer["response"]["allowed"] is False
    assert reached == [f"{server.FLOOR_PATH}/allowlist"]
