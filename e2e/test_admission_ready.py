"""Admission lost is never silent: the operator watches its webhook configurations and admission policies,
restores what it may, and says it on every AgentRun (AdmissionReady, Ready, Events), in its metrics and in
``stockade status``. And the local operator (`make run`) shares no object name with the chart, so neither's
removal takes the other's admission with it.

Every assertion is on what the API server holds (the objects, their fields and uids, the AgentRun's
conditions, its Events) or on the operator's /metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import chart
from .conftest import (
    KUBECONFIG,
    ROOT,
    Dnsmasq,
    KubectlError,
    Operator,
    agentrun,
    apply,
    condition,
    free_port,
    get,
    helm,
    kubectl,
    ready,
    simple_spec,
    wait_for,
)
from .test_cli import stockade

VWC, MWC = "validatingwebhookconfiguration", "mutatingwebhookconfiguration"
VAP, VAPB = "validatingadmissionpolicy", "validatingadmissionpolicybinding"
KINDS = {VWC: "ValidatingWebhookConfiguration", MWC: "MutatingWebhookConfiguration",
         VAP: "ValidatingAdmissionPolicy", VAPB: "ValidatingAdmissionPolicyBinding"}
LOCAL = "stockade-local"  # the local operator's default name (STOCKADE_WEBHOOK_CONFIGURATION unset)


def metric(operator: Operator, name: str, /, **labels: str) -> float:
    """The sum of a metric's series whose labels include ``labels``."""
    total = 0.0
    for line in operator.metrics().splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def events(team: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in get("events", namespace=team)["items"]
            if e["involvedObject"].get("name") == name and e["involvedObject"]["kind"] == "AgentRun"
            and e["reason"] == reason]


def saved(kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = get(kind, name)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        obj["metadata"].pop(key, None)
    obj.pop("status", None)
    return obj


def uid(kind: str, name: str) -> str | None:
    obj = get(kind, name)
    return str(obj["metadata"]["uid"]) if obj else None


def wait_run_ready(team: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: ready(team, name), timeout=60, what=f"AgentRun {team}/{name} to be Ready")


def admission_ready(team: str, name: str) -> dict[str, Any]:
    return condition(get("agentrun", name, team), "AdmissionReady")


# The chart's operator (the session fixture: the chart's identity and settings) -------------------------------
def test_a_changed_webhook_configuration_is_restored(operator: Operator, team_namespace: str) -> None:
    apply(agentrun("watched", team_namespace, simple_spec()))
    wait_run_ready(team_namespace, "watched")
    assert admission_ready(team_namespace, "watched").get("status") == "True"
    name = chart.RELEASE
    before = get(VWC, name)["webhooks"][0]
    assert before["name"] == "allowlist.stockade.io" and before["failurePolicy"] == "Fail"
    restored = metric(operator, "stockade_admission_restored_total", kind="ValidatingWebhookConfiguration")
    # A cluster admin turns the fail-closed webhook off and widens it to every namespace.
    kubectl("patch", VWC, name, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"},
        {"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": {}}]))
    back = wait_for(lambda: (hook := get(VWC, name)["webhooks"][0])["failurePolicy"] == "Fail" and hook,
                    timeout=15, interval=0.05, what="failurePolicy Fail to be restored")
    assert back["namespaceSelector"] == before["namespaceSelector"]
    assert uid(VWC, name) is not None
    wait_for(lambda: metric(operator, "stockade_admission_restored_total", kind="ValidatingWebhookConfiguration")
             > restored, timeout=10, what="the restore to be counted")
    warning = wait_for(lambda: events(team_namespace, "watched", "AdmissionChanged"), timeout=15,
                       what="a Warning Event on the run")
    assert warning[0]["type"] == "Warning" and "failurePolicy" in warning[0]["message"], warning[0]
    wait_for(lambda: [e for e in events(team_namespace, "watched", "AdmissionRestored") if e["type"] == "Normal"],
             timeout=15, what="a Normal AdmissionRestored Event")
    assert metric(operator, "stockade_admission_ready", kind="ValidatingWebhookConfiguration", name=name) == 1
    wait_run_ready(team_namespace, "watched")


def test_what_the_chart_owns_and_is_gone_is_reported_on_every_run_until_it_is_back(
        operator: Operator, team_namespace: str, dnsmasq: Dnsmasq) -> None:
    """The chart's operator may not re-create the chart's objects (no fail-closed webhook may outlive `helm
    uninstall`): it says so, on every run, until they are back; then it fills in the configuration again."""
    for run in ("first", "second"):
        apply(agentrun(run, team_namespace, simple_spec()))
    for run in ("first", "second"):
        wait_run_ready(team_namespace, run)
    policy, config = f"{chart.RELEASE}-baseline", chart.RELEASE
    keep_policy, keep_config = saved(VAP, policy), saved(VWC, config)
    kubectl("delete", VAP, policy)
    kubectl("delete", VWC, config)
    try:
        for run in ("first", "second"):
            said = wait_for(lambda r=run: (c := admission_ready(team_namespace, r)).get("status") == "False"
                            and f"ValidatingWebhookConfiguration {config} was deleted" in c["message"]
                            and f"ValidatingAdmissionPolicy {policy} was deleted" in c["message"] and c,
                            timeout=20, what=f"AdmissionReady=False on {run}, naming both")
            assert said["reason"] == "AdmissionMissing", said
            status = condition(get("agentrun", run, team_namespace), "Ready")
            assert (status["status"], status["reason"]) == ("False", "AdmissionMissing"), status
            assert get("agentrun", run, team_namespace)["status"]["phase"] == "Running"
            warning = wait_for(lambda r=run: events(team_namespace, r, "AdmissionMissing"), timeout=10,
                               what=f"a Warning AdmissionMissing Event on {run}")
            assert warning[0]["type"] == "Warning", warning
        assert metric(operator, "stockade_admission_ready", kind="ValidatingAdmissionPolicy", name=policy) == 0
        assert get(VAP, policy) is None and get(VWC, config) is None  # reported, not re-created
        report = json.loads(stockade("status", "first", "-n", team_namespace, "-o", "json").stdout)
        assert report["admissionReady"] is False
        table = stockade("status", "first", "-n", team_namespace)
        assert "AdmissionReady" in table.stdout and "AdmissionMissing" in table.stdout, table.stdout
        assert "running inside its fence" not in table.stdout
        # doctor finds the chart's installation by its remaining (mutating) configuration and reads the runs.
        doctor = stockade("doctor", f"--liveness=http://127.0.0.1:{operator.health_port}/healthz",
                          f"--dns-server=127.0.0.1:{dnsmasq.port}", "-o", "json")
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert doctor.returncode == 1
        assert not checks[f"ValidatingWebhookConfiguration {config}"]["ok"]
        assert checks[f"MutatingWebhookConfiguration {config}"]["ok"]
        assert f"missing: {policy}" in checks["ValidatingAdmissionPolicies"]["detail"], checks
        assert not checks["AdmissionReady on AgentRuns"]["ok"]
        assert "AgentRuns say: admission is not whole" in checks["AdmissionReady on AgentRuns"]["detail"], checks
    finally:
        # As `helm upgrade` would: the policy as shipped, the configuration made again empty.
        if get(VAP, policy) is None:
            kubectl("create", "-f", "-", stdin=json.dumps(keep_policy))
        if get(VWC, config) is None:
            empty = {k: v for k, v in keep_config.items() if k != "webhooks"}
            kubectl("create", "-f", "-", stdin=json.dumps(empty))
    filled = wait_for(lambda: len(get(VWC, config).get("webhooks") or []) == 3 and get(VWC, config), timeout=15,
                      what="the operator to fill in the configuration made again")
    assert filled["webhooks"][0]["clientConfig"] == keep_config["webhooks"][0]["clientConfig"]
    for run in ("first", "second"):
        wait_run_ready(team_namespace, run)
        assert admission_ready(team_namespace, run)["reason"] == "AdmissionInPlace"
        wait_for(lambda r=run: events(team_namespace, r, "AdmissionRestored"), timeout=15,
                 what=f"a Normal AdmissionRestored Event on {run}")
    assert metric(operator, "stockade_admission_ready", kind="ValidatingAdmissionPolicy", name=policy) == 1


# The local operator (`make run`: the user's own identity, the default settings) -------------------------------
CHART_SETTINGS = ("STOCKADE_WEBHOOK_CONFIGURATION", "STOCKADE_ADMISSION_MANAGE_POLICY",
                  "STOCKADE_ADMISSION_WATCH_POLICY", "STOCKADE_ADMISSION_RECREATE_WEBHOOKS",
                  "STOCKADE_ADMISSION_MANAGE_WEBHOOKS")


def chart_admission() -> list[tuple[str, str]]:
    """(kubectl kind, name) of every admission object in the chart's release, as Helm recorded it."""
    docs = [d for d in yaml.safe_load_all(helm("get", "manifest", chart.RELEASE, "-n", chart.NAMESPACE)) if d]
    by_kind = {v: k for k, v in KINDS.items()}
    return [(by_kind[d["kind"]], d["metadata"]["name"]) for d in docs if d["kind"] in by_kind]


def local_admission() -> list[tuple[str, str]]:
    found = []
    for kind in KINDS:
        for obj in json.loads(kubectl("get", kind, "-o", "json"))["items"]:
            if obj["metadata"]["name"] == LOCAL or obj["metadata"]["name"].startswith(f"{LOCAL}-"):
                found.append((kind, obj["metadata"]["name"]))
    return found


@contextlib.contextmanager
def local_operator(operator: Operator, home: Path) -> Iterator[Operator]:
    """The session operator stopped, the chart's admission objects out of the way (as `helm uninstall` leaves
    a cluster: the chart's policies refuse anyone but its ServiceAccount, and its fail-closed webhooks point at
    the stopped operator), and the operator as `make run` starts it: the admin's kubeconfig, default settings.
    Afterwards the local operator's objects go and the chart's come back."""
    keep = [saved(kind, name) for kind, name in chart_admission()]
    operator.stop()
    env = {k: v for k, v in operator.env.items() if k not in CHART_SETTINGS}
    env["KUBECONFIG"] = KUBECONFIG
    local = Operator(home, env, operator.args)
    try:
        for obj in reversed(keep):  # bindings before their policies
            kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found")
        local.start()
        yield local
    finally:
        local.stop()
        for kind, name in local_admission():
            kubectl("delete", kind, name, "--ignore-not-found")
        for obj in keep:
            if get(obj["kind"].lower(), obj["metadata"]["name"]) is None:
                kubectl("create", "-f", "-", stdin=json.dumps(obj))
        operator.start()


def test_local_operator_names_are_its_own_and_it_restores_what_was_deleted_or_changed(
        operator: Operator, team_namespace: str, tmp_path: Path) -> None:
    shipped = chart_admission()
    assert (VWC, chart.RELEASE) in shipped and (VAP, f"{chart.RELEASE}-baseline") in shipped
    with local_operator(operator, tmp_path) as local:
        # `make run`'s identity (issue 11): a person's kubeconfig is said plainly at start; the chart's is not.
        said = [line for line in local.logs() if "not as a ServiceAccount" in line]
        assert said and "STOCKADE_IMPERSONATE" in said[0], local.log_tail(20)
        assert not any("not as a ServiceAccount" in line for line in operator.logs())
        mine = local_admission()
        assert {(VWC, LOCAL), (MWC, LOCAL), (VAP, f"{LOCAL}-baseline"), (VAPB, f"{LOCAL}-grant-audit")} <= set(mine)
        # `helm uninstall stockade` deletes the names in its release: none of them is the local operator's.
        assert not set(mine) & set(shipped), set(mine) & set(shipped)
        assert get(VAPB, f"{LOCAL}-baseline")["spec"]["policyName"] == f"{LOCAL}-baseline"

        apply(agentrun("local", team_namespace, simple_spec()))
        wait_run_ready(team_namespace, "local")
        assert admission_ready(team_namespace, "local").get("status") == "True"
        restored = {kind: metric(local, "stockade_admission_restored_total", kind=KINDS[kind]) for kind in (VWC, VAP)}
        before = {kind: uid(kind, name) for kind, name in ((VWC, LOCAL), (VAP, f"{LOCAL}-baseline"))}
        started = time.monotonic()
        kubectl("delete", VWC, LOCAL)
        kubectl("delete", VAP, f"{LOCAL}-baseline")
        for kind, name in ((VWC, LOCAL), (VAP, f"{LOCAL}-baseline")):
            wait_for(lambda k=kind, n=name: uid(k, n) not in (None, before[k]), timeout=15, interval=0.05,
                     what=f"{kind} {name} to be made again")
            assert metric(local, "stockade_admission_restored_total", kind=KINDS[kind]) > restored[kind]
        print(f"\ntwo deletions (kubectl, one after the other) to both objects made again: "
              f"{time.monotonic() - started:.2f} s")
        assert len(get(VWC, LOCAL)["webhooks"]) == 3
        assert get(VAP, f"{LOCAL}-baseline")["spec"]["validations"]
        warning = wait_for(lambda: events(team_namespace, "local", "AdmissionMissing"), timeout=15,
                           what="a Warning AdmissionMissing Event on the run")
        assert warning[0]["type"] == "Warning" and LOCAL in warning[0]["message"], warning[0]
        wait_for(lambda: events(team_namespace, "local", "AdmissionRestored"), timeout=15,
                 what="a Normal AdmissionRestored Event on the run")
        wait_run_ready(team_namespace, "local")
        assert admission_ready(team_namespace, "local").get("status") == "True"

        kubectl("patch", VWC, LOCAL, "--type=json",
                "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]))
        wait_for(lambda: get(VWC, LOCAL)["webhooks"][0]["failurePolicy"] == "Fail", timeout=15, interval=0.05,
                 what="failurePolicy Fail to be restored")
        wait_for(lambda: events(team_namespace, "local", "AdmissionChanged"), timeout=15,
                 what="a Warning AdmissionChanged Event")
        # Restored, it refuses again what the issue saw admitted: a cluster admin's Role in a run namespace.
        run_ns = get("agentrun", "local", team_namespace)["status"]["runNamespace"]
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "admin-made", "namespace": run_ns},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
        with pytest.raises(KubectlError, match=rf"ValidatingAdmissionPolicy '{LOCAL}-baseline'|allowlist.stockade.io"):
            kubectl("create", "--as=alice", "--as-group=system:masters", "--dry-run=server", "-f", "-",
                    stdin=json.dumps(role))
        kubectl("delete", "agentrun", "local", "-n", team_namespace, "--wait=true", "--timeout=60s")


def test_make_run_beside_a_live_chart_operator_refuses_to_start(operator: Operator, tmp_path: Path) -> None:
    """Issue 11: with the chart's operator running, `make run` (standalone: no peering) started a second
    operator, and each refused the other's writes in run namespaces. Now it says why and exits 1 before
    it writes anything; the chart's operator goes on."""
    assert any(a.startswith("--peering=") for a in operator.args), "the session operator runs as the chart's"
    env = {k: v for k, v in operator.env.items() if k not in CHART_SETTINGS}
    # Ports of its own (the session operator holds its ports): the refusal must be about the other operator.
    env.update({k: str(free_port()) for k, v in env.items() if k.endswith("_PORT") and v not in ("", "0")})
    env["KUBECONFIG"] = KUBECONFIG
    args = [a for a in operator.args if not a.startswith("--peering")]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stockade.cli", *args,
                           f"--liveness=http://127.0.0.1:{free_port()}/healthz"], env={**os.environ, **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    said = done.stdout + done.stderr
    print(f"\nrefused in {time.monotonic() - started:.1f} s: {said.strip().splitlines()[-1]}")
    assert done.returncode == 1, said
    assert "another Stockade operator is active" in said and f"peering {chart.RELEASE!r}" in said, said
    assert "--peering=stockade" in said, said
    assert not local_admission(), "it wrote nothing"
    assert operator.proc is not None and operator.proc.poll() is None
