"""The signal endpoint against hostile input, on the real cluster: names that are paths, pods outside the
run, nesting bombs, clear text, and an answered signal that must survive a SIGKILL.

The module runs its own operator (it kills it): the session operator is stopped for the module and
started again after it, so only one operator acts at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from . import chart
from .conftest import BIN, ROOT, Operator, agentrun, apply, get, helm, kubectl, ready, simple_spec, wait_for
from .detect_support import Signals, chart_signal_ca, falco_event

TOKEN = secrets.token_urlsafe(24)
EGRESS = [{"cidr": "10.42.0.0/16", "ports": [443]}]
CONFINED = "the Stockade operator acts on pods, Jobs and fences only in run namespaces"


def own_operator(operator: Operator, logdir: Path, **env: str) -> Operator:
    mine = Operator(logdir, {**operator.env, "STOCKADE_SIGNAL_PORT": str(chart.free_port()),
                             "STOCKADE_SIGNAL_TOKEN": TOKEN, **env}, operator.args)
    mine.start()
    return mine


@pytest.fixture(scope="module")
def sig(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Signals]]:
    """This module's operator, as the chart deploys it (HTTPS with the chart's certificate)."""
    operator.stop()
    mine = own_operator(operator, tmp_path_factory.mktemp("signal-operator"))
    client = Signals(int(mine.env["STOCKADE_SIGNAL_PORT"]), TOKEN)
    wait_for(client.healthy, timeout=30, what="the signal endpoint")
    yield mine, client
    mine.stop()
    operator.start()
    mine.assert_never_refused_by_rbac()


def start(team: str, name: str, response: list[str]) -> tuple[str, str]:
    """A Running AgentRun with the given ladder: (its run namespace, its pod)."""
    spec = simple_spec(egress=EGRESS, duration="2h")  # a policy may require a duration
    spec["response"] = response
    apply(agentrun(name, team, spec))
    run = wait_for(lambda: ready(team, name), timeout=60, what=f"AgentRun {team}/{name} to be Ready")
    return run["status"]["runNamespace"], name  # the workload pod is named after the AgentRun


def ssh_event(ns: str, pod: str) -> dict[str, Any]:
    return falco_event("Disallowed SSH Connection Non Standard Port", ns, pod, **{
        "fd.name": "10.0.0.9:40112->198.51.100.7:443", "fd.lport": 40112, "fd.rport": 443, "fd.l4proto": "tcp",
        "evt.type": "connect", "proc.name": "ssh", "proc.cmdline": "ssh -p 443 tunnel@198.51.100.7"})


def generic(ns: str, pod: str, detail: str = "setuid root") -> dict[str, Any]:
    return {"detector": "e2e", "namespace": ns, "pod": pod, "kind": "PrivilegeEscalation", "severity": "critical",
            "detail": detail}


def victim_pod(namespace: str, name: str) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "registry.example/victim:1"}]}}
    apply(pod)
    return wait_for(lambda: get("pod", name, namespace), timeout=20, what=f"pod {namespace}/{name}")


@pytest.fixture
def ordinary() -> Iterator[str]:
    name = f"ordinary-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_signals_naming_pods_outside_the_run_are_refused_and_change_nothing(
        sig: tuple[Operator, Signals], team_namespace: str, ordinary: str) -> None:
    _, client = sig
    run_ns, own_pod = start(team_namespace, "traversal", ["isolate", "evict"])
    neighbour_ns, neighbour_pod = start(team_namespace, "neighbour", ["isolate", "evict"])
    kube_victim = f"probe-victim-{uuid.uuid4().hex[:6]}"
    uids = {("kube-system", kube_victim): victim_pod("kube-system", kube_victim)["metadata"]["uid"],
            (ordinary, "victim"): victim_pod(ordinary, "victim")["metadata"]["uid"],
            (neighbour_ns, neighbour_pod): get("pod", neighbour_pod, neighbour_ns)["metadata"]["uid"]}

    hostile: list[tuple[str, dict[str, Any], set[int]]] = []
    for path in (f"../../kube-system/pods/{kube_victim}", f"../../{ordinary}/pods/victim",
                 f"../../{neighbour_ns}/pods/{neighbour_pod}", f"{own_pod}/../../../kube-system/pods/{kube_victim}",
                 f"..%2F..%2Fkube-system%2Fpods%2F{kube_victim}", f"../{kube_victim}"):
        hostile.append(("/signal", generic(run_ns, path), {400}))
        hostile.append(("/falco", ssh_event(run_ns, path), {400}))
    for namespace, pod in ((f"{run_ns}/pods/{own_pod}/../../../../kube-system", kube_victim),
                           ("kube-system", kube_victim), (ordinary, "victim"), (team_namespace, "victim")):
        hostile.append(("/signal", generic(namespace, pod), {400, 404}))
        hostile.append(("/falco", ssh_event(namespace, pod), {400, 404}))
    # The run's own namespace naming another namespace's pod by its plain name: no such pod here.
    for pod in (neighbour_pod, "victim", kube_victim):
        hostile.append(("/signal", generic(run_ns, pod), {404}))
        hostile.append(("/falco", ssh_event(run_ns, pod), {404}))

    for path, body, expected in hostile:
        status, answer = client.post(path, body)
        assert status in expected, (path, body.get("pod") or body["output_fields"], status, answer)

    for (namespace, name), uid in uids.items():
        live = get("pod", name, namespace)
        assert live is not None and live["metadata"]["uid"] == uid, f"{namespace}/{name} was deleted"
        assert "stockade.io/quarantined" not in (live["metadata"].get("labels") or {}), f"{namespace}/{name}"
    for name in ("traversal", "neighbour"):
        status = get("agentrun", name, team_namespace)["status"]
        assert not status.get("violations"), f"{name}: {status.get('violations')}"
        assert not (status.get("quarantine") or {}).get("active")
    assert get("networkpolicy", "stockade-quarantine", run_ns) is None

    # The endpoint does work: the run's own pod, by its own name, is isolated.
    status, answer = client.post("/signal", generic(run_ns, own_pod))
    assert status == 202, answer
    run = get("agentrun", "traversal", team_namespace)
    assert [v["pod"] for v in run["status"]["violations"]] == [own_pod], "recorded before the answer"
    wait_for(lambda: get("pod", own_pod, run_ns) is None, timeout=20, what="the run's own pod to be evicted")
    kubectl("delete", "pod", kube_victim, "-n", "kube-system", "--wait=false")


def test_the_api_server_refuses_the_operator_outside_run_namespaces(
        sig: tuple[Operator, Signals], team_namespace: str, ordinary: str) -> None:
    """The operator's own identity (its ServiceAccount token, as it runs here): the chart's RBAC lets it
    write pods cluster-wide, the chart's admission policy refuses it everywhere but run namespaces."""
    op, _ = sig
    tag = uuid.uuid4().hex[:6]
    kube_victim = victim_pod("kube-system", f"probe-victim-{tag}")
    victim = victim_pod(ordinary, "victim")

    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", op.env["KUBECONFIG"], *args],
                              capture_output=True, text=True, timeout=60, check=False)

    assert as_operator("auth", "can-i", "delete", "pods", "-n", ordinary).stdout.strip() == "yes", \
        "RBAC alone would let it (it cannot select namespaces by label)"
    for args in (("delete", "pod", "victim", "-n", ordinary),
                 ("label", "pod", "victim", "-n", ordinary, "stockade.io/quarantined=true"),
                 ("delete", "pod", kube_victim["metadata"]["name"], "-n", "kube-system"),
                 ("create", "serviceaccount", "intruder", "-n", ordinary),
                 ("create", "job", "intruder", "--image=registry.example/x:1", "-n", "default")):
        refused = as_operator(*args)
        assert refused.returncode != 0 and CONFINED in refused.stderr, (args, refused.stdout, refused.stderr)
    assert get("pod", "victim", ordinary)["metadata"]["uid"] == victim["metadata"]["uid"]
    live = get("pod", kube_victim["metadata"]["name"], "kube-system")
    assert live["metadata"]["uid"] == kube_victim["metadata"]["uid"]
    assert "stockade.io/quarantined" not in (get("pod", "victim", ordinary)["metadata"].get("labels") or {})

    # In a run namespace the same identity works (the operator builds fences there).
    run_ns, pod = start(team_namespace, "confined", ["isolate"])
    labelled = as_operator("label", "pod", pod, "-n", run_ns, "e2e-probe=yes")
    assert labelled.returncode == 0, labelled.stderr
    kubectl("delete", "pod", kube_victim["metadata"]["name"], "-n", "kube-system", "--wait=false")


# Evidence nested 5,000 levels inside an otherwise valid signal, and 200,000 '['.
def _deep(ns: str, pod: str) -> list[bytes]:
    signal = json.dumps(generic(ns, pod)).encode()[:-1]
    return [b"[" * 200_000, signal + b', "evidence": ' + b'{"x": ' * 5000 + b"{}" + b"}" * 5001]


def test_deeply_nested_json_is_refused_without_a_traceback(sig: tuple[Operator, Signals],
                                                           team_namespace: str) -> None:
    op, client = sig
    run_ns, pod = start(team_namespace, "nested", ["isolate"])
    for body in _deep(run_ns, pod):
        for path in ("/signal", "/falco"):
            status, _, raw = client.request("POST", path, body)
            assert status == 400, (path, status, raw[:200])
            assert b"nested deeper than" in raw
    # Too big is 413 before it is parsed.
    status, _, _ = client.request("POST", "/signal", b'{"detail": "' + b"x" * 300_000 + b'"}')
    assert status == 413
    assert client.healthy()
    tracebacks = [line for line in op.logs() if "Traceback" in line or "RecursionError" in line]
    assert not tracebacks, tracebacks[:5]
    assert not (get("agentrun", "nested", team_namespace)["status"].get("violations"))


def test_https_with_the_charts_certificate_verified_against_its_ca(sig: tuple[Operator, Signals]) -> None:
    _, client = sig
    ca = chart_signal_ca()
    assert ca is not None, "the chart made the signal endpoint's Secret"
    assert client.base.startswith("https://") and client.healthy()
    # The certificate is for the Service's name; under another name it does not verify.
    wrong = Signals(client.port, TOKEN, ca=ca, server_name="stockade-signal.elsewhere.svc")
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.request("GET", "/healthz")
    # Nor does another CA's client trust it, and plain HTTP gets no answer from a TLS port.
    stranger = Signals(client.port, TOKEN, ca=_self_signed_ca())
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.request("GET", "/healthz")
    plain = Signals(client.port, TOKEN, ca=None)
    assert not plain.healthy()


def test_an_upgrade_keeps_the_signal_certificate(sig: tuple[Operator, Signals]) -> None:
    """Callers trust the chart's CA: `helm upgrade` must not replace it (the chart looks the Secret up)."""
    _, client = sig
    before = get("secret", "stockade-signal-tls", chart.NAMESPACE)["data"]
    helm("upgrade", chart.RELEASE, str(ROOT / "charts/stockade"), "--namespace", chart.NAMESPACE, "--reuse-values")
    assert get("secret", "stockade-signal-tls", chart.NAMESPACE)["data"] == before
    assert client.healthy(), "the running endpoint still verifies against the CA callers hold"


def _self_signed_ca() -> bytes:
    from stockade.admission import certs

    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"stockade-e2e-ca-{uuid.uuid4().hex[:6]}"
    return certs.ensure(directory, ["stockade-signal.stockade-system.svc"], []).ca.read_bytes()


def test_plain_http_only_when_the_chart_opts_out(sig: tuple[Operator, Signals],
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The chart rendered with signal.tls.enabled=false: its environment says plain HTTP, and so the
    endpoint answers plain HTTP (and no TLS)."""
    op, client = sig
    rendered = helm("template", chart.RELEASE, str(ROOT / "charts/stockade"), "--namespace", chart.NAMESPACE,
                    "--kube-version", "1.30.0", "--set", "signal.tls.enabled=false")
    import yaml

    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STOCKADE_SIGNAL_TLS"] == "false" and "STOCKADE_SIGNAL_CERT_DIR" not in env
    op.stop()
    plain_env = {k: v for k, v in op.env.items() if k != "STOCKADE_SIGNAL_CERT_DIR"}
    plain_env["STOCKADE_SIGNAL_TLS"] = env["STOCKADE_SIGNAL_TLS"]
    plain = Operator(tmp_path_factory.mktemp("plain-operator"), plain_env, op.args)
    plain.start()
    try:
        http = Signals(client.port, TOKEN, ca=None)
        wait_for(http.healthy, timeout=30, what="the plain signal endpoint")
        assert not client.healthy(), "no TLS when opted out"
        assert any("plain HTTP" in line for line in plain.logs()), "the opt-out is logged as such"
    finally:
        plain.stop()
        op.start()
    wait_for(client.healthy, timeout=30, what="the HTTPS endpoint again")


def test_an_answered_signal_survives_sigkill(sig: tuple[Operator, Signals], team_namespace: str) -> None:
    """Signals for several runs at once; the operator is killed (SIGKILL) the moment the last answer
    arrives. Every signal answered 2xx is in its AgentRun's status as the API server holds it."""
    op, client = sig
    runs = [start(team_namespace, f"durable-{i}", ["isolate"]) for i in range(4)]
    with ThreadPoolExecutor(len(runs)) as pool:
        answers = list(pool.map(lambda r: client.post("/signal", generic(r[0], r[1], detail=f"kill test {r[0]}")),
                                runs))
    op.kill()
    try:
        answered = [run for run, (status, _) in zip(runs, answers, strict=True) if 200 <= status < 300]
        assert answered, answers
        for index, (run_ns, _) in enumerate(runs):
            if (run_ns, _) not in answered:
                continue
            status = get("agentrun", f"durable-{index}", team_namespace)["status"]
            details = [v.get("detail") for v in status.get("violations") or []]
            assert any(f"kill test {run_ns}" in (d or "") for d in details), (run_ns, details)
    finally:
        op.start()
        wait_for(client.healthy, timeout=30, what="the signal endpoint after the restart")
