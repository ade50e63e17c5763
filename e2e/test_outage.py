"""A long API server outage (75 s: longer than kopf's default retries, about 54 s) leaves no zombie: the
operator either recovers by itself or exits non-zero at once so that its pod restarts. It never stays up
with dead handlers.

The outage is the operator's alone: it reaches the API server through a loopback relay (e2e/apiproxy.py)
that refuses every connection for the outage, as a stopped API server does, while the API server itself
keeps running (and keeps its port: on a shared machine a stopped one can lose it). Slow
(``@pytest.mark.slow``); `make test` runs it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apiproxy import ApiProxy
from .conftest import (
    BREAK_GLASS,
    Operator,
    agentrun,
    answers_ok,
    apply,
    get,
    kubectl,
    operator_instead,
    simple_spec,
    wait_for,
)
from .test_faults import restored, run_namespace_of, wait_ready

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 75


@pytest.fixture(scope="module")
def relayed(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, ApiProxy]]:
    """The operator with the chart's identity and settings, its API server behind the relay."""
    source = Path(operator.env["KUBECONFIG"])
    proxy = ApiProxy(json.loads(source.read_text())["clusters"][0]["cluster"]["server"]).start()
    home = tmp_path_factory.mktemp("relayed-operator")
    try:
        with operator_instead(operator, home, KUBECONFIG=str(proxy.kubeconfig(source, home / "kubeconfig"))) as mine:
            yield mine, proxy
    finally:
        proxy.stop()


def test_a_75_second_api_server_outage_leaves_no_zombie(relayed: tuple[Operator, ApiProxy],
                                                        team_namespace: str) -> None:
    op, proxy = relayed
    apply(agentrun("outlast", team_namespace, simple_spec(duration="4h")))
    wait_ready(team_namespace, "outlast")
    ns = run_namespace_of(team_namespace, "outlast")
    assert op.proc is not None
    pid = op.proc.pid

    proxy.refuse()
    try:
        time.sleep(OUTAGE_SECONDS)
    finally:
        proxy.allow()
    back = time.monotonic()

    code = op.proc.poll() if op.proc is not None else None
    if code is not None:  # it chose to exit: then non-zero, so that its pod is restarted
        assert code != 0, "an operator that gave up must exit non-zero"
        op.start()
    else:
        assert op.proc is not None and op.proc.pid == pid
    # Working again (whichever it did): liveness answers, drift is repaired, a new run is fenced.
    wait_for(lambda: answers_ok(f"http://127.0.0.1:{op.health_port}/healthz"), timeout=30,
             what="the liveness endpoint")
    old = get("networkpolicy", "stockade-egress", ns)["metadata"]["uid"]
    kubectl("delete", "networkpolicy", "stockade-egress", "-n", ns, as_user=BREAK_GLASS)
    wait_for(lambda: restored("networkpolicy", "stockade-egress", ns, old), timeout=90,
             what="the deleted egress policy to be restored after the outage")
    apply(agentrun("after", team_namespace, simple_spec(duration="4h")))
    wait_ready(team_namespace, "after", timeout=90)
    # kopf's own part works too (not only the watch layer): a grant change is reconciled into the quota.
    kubectl("patch", "agentrun", "outlast", "-n", team_namespace, "--type=merge", "-p",
            json.dumps({"spec": {"grant": {"cpu": "3"}}}))
    wait_for(lambda: get("resourcequota", "stockade-grant", ns)["spec"]["hard"].get("requests.cpu") == "3",
             timeout=60, what="the grant change to reach the quota")
    time.sleep(3)
    assert op.proc is not None and op.proc.poll() is None, f"the operator exited later: {op.log_tail(20)}"
    assert answers_ok(f"http://127.0.0.1:{op.health_port}/healthz"), "liveness is dead: a zombie"
    print(f"\nafter a {OUTAGE_SECONDS} s outage: {'recovered in place' if code is None else f'exited {code}'}; "
          f"drift repaired and a new run fenced {time.monotonic() - back:.1f} s after the API server came back")
    gave_up = [line for line in op.logs() if "has failed" in line and "eep-alive" in line]
    assert not gave_up, f"the peering keep-alive gave up: {gave_up[:1]}"
