"""Two replicas with peering, as the chart runs them: only the active one acts, and it owns the webhook
configurations; killing it hands over to the other within the peering lifetime.

The session operator is stopped for the module; two operators with the chart's arguments (``--peering``)
and their own ports take its place, and it is started again afterwards.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .chart import free_port
from .conftest import Operator, agentrun, apply, get, kubectl, ready, simple_spec, wait_for
from .detect_support import Signals
from .test_detect import ssh_event

TOKEN = secrets.token_urlsafe(24)
LIFETIME = 15


def readiness(op: Operator) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.env['STOCKADE_READY_PORT']}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def webhook_urls() -> set[str]:
    urls: set[str] = set()
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        config = json.loads(kubectl("get", kind, "stockade", "-o", "json"))
        urls |= {hook["clientConfig"].get("url", "").rsplit("/", 1)[0] for hook in config.get("webhooks") or []}
    return urls


def own_url(op: Operator) -> str:
    return f"https://127.0.0.1:{op.env['STOCKADE_WEBHOOK_PORT']}"


class Pair:
    def __init__(self, first: Operator, second: Operator) -> None:
        self.first = first
        self.second = second


@pytest.fixture(scope="module")
def pair(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    assert any(a.startswith("--peering=") for a in operator.args), "the chart runs the operator with peering"
    operator.stop()
    made = []
    for index in range(2):
        env = {**operator.env, "STOCKADE_SIGNAL_HOST": "127.0.0.1", "STOCKADE_SIGNAL_TOKEN": TOKEN,
               "STOCKADE_SIGNAL_PORT": str(free_port()), "STOCKADE_METRICS_PORT": str(free_port()),
               "STOCKADE_WEBHOOK_PORT": str(free_port()), "STOCKADE_READY_PORT": str(free_port()),
               "POD_ID": f"stockade-replica-{index}"}  # kopf's peering identity: one per pod
        op = Operator(tmp_path_factory.mktemp(f"replica-{index}"), env, operator.args)
        op.start()
        made.append(op)
        time.sleep(1.1)  # the newer replica leads (priority: start time in ms)
    yield Pair(*made)
    for op in made:
        op.stop()
    operator.start()
    for op in made:
        op.assert_never_refused_by_rbac()


def test_only_the_newest_replica_acts_and_owns_the_webhooks(pair: Pair, team_namespace: str) -> None:
    standby, active = pair.first, pair.second
    wait_for(lambda: readiness(active) == 200 and readiness(standby) == 503, timeout=30,
             what="the newer replica to lead and the older one to stand by")
    wait_for(lambda: webhook_urls() == {own_url(active)}, timeout=30,
             what="the webhook configurations to point at the active replica only")

    apply(agentrun("twin", team_namespace, simple_spec()))
    wait_for(lambda: ready(team_namespace, "twin"), timeout=60, what="the run to be Ready")
    ns = get("agentrun", "twin", team_namespace)["status"]["runNamespace"]
    pod = get("pod", "twin", ns)

    # A signal that reaches the standby directly is refused as retryable; nothing is done.
    status, answer = Signals(int(standby.env["STOCKADE_SIGNAL_PORT"]), TOKEN).post("/falco", ssh_event(ns, "twin"))
    assert status == 503, answer
    time.sleep(2)
    run = get("agentrun", "twin", team_namespace)
    assert not run["status"].get("violations"), "a standby replica never acts"
    assert "stockade.io/quarantined" not in (get("pod", "twin", ns)["metadata"].get("labels") or {})
    assert get("pod", "twin", ns)["metadata"]["uid"] == pod["metadata"]["uid"]


def test_killing_the_active_replica_hands_over_within_the_lifetime(pair: Pair, team_namespace: str) -> None:
    survivor, leader = pair.first, pair.second
    wait_for(lambda: readiness(leader) == 200, timeout=30, what="the leader to be ready")
    leader.kill()
    killed = time.monotonic()
    wait_for(lambda: readiness(survivor) == 200, timeout=4 * LIFETIME, interval=0.2,
             what="the survivor to take over")
    took_over = time.monotonic() - killed
    wait_for(lambda: webhook_urls() == {own_url(survivor)}, timeout=20,
             what="the survivor to point the webhook configurations at itself")
    rewritten = time.monotonic() - killed
    print(f"\nhand-over: ready after {took_over:.1f} s, webhooks rewritten after {rewritten:.1f} s "
          f"(peering lifetime {LIFETIME} s)")

    # The survivor acts: a new run is fenced, a signal to it is acted on, and deletion is not stuck.
    apply(agentrun("heir", team_namespace, simple_spec()))
    wait_for(lambda: ready(team_namespace, "heir"), timeout=60, what="the survivor to fence a new run")
    ns = get("agentrun", "heir", team_namespace)["status"]["runNamespace"]
    status, answer = Signals(int(survivor.env["STOCKADE_SIGNAL_PORT"]), TOKEN).post("/falco", ssh_event(ns, "heir"))
    assert 200 <= status < 300, answer
    wait_for(lambda: (get("agentrun", "heir", team_namespace)["status"].get("quarantine") or {}).get("active"),
             timeout=20, what="the survivor to quarantine the run")
    kubectl("delete", "agentrun", "heir", "-n", team_namespace, "--wait=false")

    def gone() -> bool:
        found: Any = json.loads(kubectl("get", "agentruns", "-n", team_namespace, "-o", "json"))
        return not found["items"]

    wait_for(gone, timeout=60, what="the AgentRuns' deletion to complete")
