"""What the grant allows must work (issue 11, section 1), against the real API server.

* a pod the agent starts without ``serviceAccountName`` is admitted and stored with the agent's
  ServiceAccount (the mutating webhook sets it); another name stays refused;
* with ``services`` in ``grant.kubernetesAPI`` the agent's ClusterIP and headless Services are stored,
  and detection leaves them be; NodePort, LoadBalancer, ExternalName, external IPs and
  ``services/status`` stay refused;
* ``grant.podToPod``: the NetworkPolicies the API server holds let the run's non-quarantined pods
  reach each other (checked by an independent evaluator, cyclonus, and by label selection on the
  stored pods), a Falco event for such a connection is within the grant, and without the grant, or
  to a quarantined pod, it is a violation; an AgentPolicy refuses the field unless it allows it.

The module runs its own operator with the signal endpoint (as e2e/test_detect.py does).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from . import netpol
from .conftest import BREAK_GLASS, KubectlError, Operator, agentrun, apply, create, get, kubectl, simple_spec, wait_for
from .detect_support import Signals, falco_event, signal_operator
from .test_admission import ADMIN, GRANT_POLICY, WEBHOOK, agent, created, refused, sh
from .test_admission import pod as agent_pod
from .test_detect import quarantined, run_namespace, ssh_event, start, with_response
from .test_wire import EGRESS, Wire, fenced_sandbox, wire  # noqa: F401  (wire: the dataplane fixture)

TOKEN = secrets.token_urlsafe(24)
PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get"]}]
SERVICES = [{"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "update", "patch"]}]
POD_TO_POD = "stockade-pod-to-pod"
NOT_QUARANTINED = {"matchExpressions": [{"key": "stockade.io/quarantined", "operator": "DoesNotExist"}]}
POLICY_LABEL = "e2e.stockade.io/policy"


@pytest.fixture(scope="module")
def allows_operator(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Signals]]:
    with signal_operator(operator, tmp_path_factory.mktemp("allows-operator"), TOKEN) as pair:
        yield pair


@pytest.fixture
def team(allows_operator: tuple[Operator, Signals]) -> Iterator[str]:
    name = f"allow-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "agentruns", "--all", "-n", name, "--wait=false", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def webhook_ready(ns: str) -> None:
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": ns}}
    wait_for(lambda: sh("create", "--dry-run=server", "-f", "-", who=ADMIN, stdin=probe).returncode == 0,
             timeout=60, what="the webhook to know the run")


def unnamed_pod(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    """A helper pod as most programs write it: no serviceAccountName."""
    body = agent_pod(ns, name, **spec)
    body["spec"].pop("serviceAccountName")
    return body


def token_volumes(pod: dict[str, Any]) -> list[str]:
    return [v["name"] for v in pod["spec"].get("volumes") or []
            if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or [])]


def violations(team: str, name: str) -> list[dict[str, Any]]:
    return list(((get("agentrun", name, team) or {}).get("status") or {}).get("violations") or [])


# The agent's ServiceAccount ---------------------------------------------------------------------------
def test_a_pod_without_a_service_account_is_the_agents(team: str) -> None:
    start(team, "helpers", simple_spec(pods=4, kubernetesAPI=PODS))
    ns = run_namespace(team, "helpers")
    webhook_ready(ns)

    created(sh("create", "-f", "-", who=agent(ns), stdin=unnamed_pod(ns, "helper")))
    stored = get("pod", "helper", ns)
    assert stored["spec"]["serviceAccountName"] == "agent", stored["spec"]
    assert stored["spec"].get("serviceAccount") in (None, "agent")
    # With an API grant the agent's ServiceAccount mounts its token, exactly as for a pod that names it.
    created(sh("create", "-f", "-", who=agent(ns), stdin=agent_pod(ns, "named")))
    named = get("pod", "named", ns)
    assert len(token_volumes(stored)) == len(token_volumes(named)) == 1

    # "default" is what the API server fills in for an unset name: the same thing, the agent's.
    explicit = agent_pod(ns, "explicit-default", serviceAccountName="default")
    created(sh("create", "-f", "-", who=agent(ns), stdin=explicit))
    assert get("pod", "explicit-default", ns)["spec"]["serviceAccountName"] == "agent"

    # Any other name stays refused, and nothing is stored. (A name that does not exist the API server's
    # ServiceAccount plugin refuses first; break-glass makes one that does.)
    create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "other", "namespace": ns}},
           as_user=BREAK_GLASS)
    other = agent_pod(ns, "other", serviceAccountName="other")
    refused(sh("create", "-f", "-", who=agent(ns), stdin=other), WEBHOOK, "'other' is not the agent's ServiceAccount")
    assert get("pod", "other", ns) is None


def test_without_an_api_grant_the_pod_gets_the_agents_identity_and_no_token(team: str) -> None:
    start(team, "tokenless", simple_spec(pods=3))
    ns = run_namespace(team, "tokenless")
    webhook_ready(ns)
    # A cluster admin (not the operator) needs no RBAC: admission alone decides.
    created(sh("create", "-f", "-", who=ADMIN, stdin=unnamed_pod(ns, "helper")))
    stored = get("pod", "helper", ns)
    assert stored["spec"]["serviceAccountName"] == "agent"
    assert token_volumes(stored) == [], "the default ServiceAccount's token volume is taken out again"
    assert not any(m["name"].startswith("kube-api-access-") for c in stored["spec"]["containers"]
                   for m in c.get("volumeMounts") or [])
    # A pod that asks for a token without an API grant is refused, as before.
    asks = unnamed_pod(ns, "asks", automountServiceAccountToken=True)
    refused(sh("create", "-f", "-", who=ADMIN, stdin=asks), WEBHOOK, "automountServiceAccountToken")


# Services ---------------------------------------------------------------------------------------------
def service(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": "sandbox"}, "ports": [{"port": 8080}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": body}


def test_cluster_ip_and_headless_services_when_the_grant_names_services(team: str) -> None:
    start(team, "svc", with_response(simple_spec(pods=2, kubernetesAPI=SERVICES), "isolate"))
    ns = run_namespace(team, "svc")
    webhook_ready(ns)
    me = agent(ns)

    created(sh("create", "-f", "-", who=me, stdin=service(ns, "plain")))
    created(sh("create", "-f", "-", who=me, stdin=service(ns, "headless", clusterIP="None")))
    assert get("service", "plain", ns)["spec"]["type"] == "ClusterIP"
    assert get("service", "headless", ns)["spec"]["clusterIP"] == "None"
    # Changing the ports is the agent's business too.
    created(sh("patch", "service", "plain", "-n", ns, "--type=merge", "-p",
               '{"spec":{"ports":[{"port":9090}]}}', who=me))

    # Every shape that opens the run to outside traffic stays refused, by the policy that holds while the
    # operator is down as well as by the webhook.
    for name, fields, words in [
        ("np", {"type": "NodePort"}, ["only ClusterIP Services", "NodePort"]),
        ("lb", {"type": "LoadBalancer"}, ["only ClusterIP Services", "LoadBalancer"]),
        ("en", {"type": "ExternalName", "externalName": "evil.example.com", "selector": None, "ports": None},
         ["only ClusterIP Services", "ExternalName"]),
        ("eip", {"externalIPs": ["192.0.2.10"]}, ["external IPs"]),
    ]:
        body = service(ns, name, **fields)
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        refused(sh("create", "-f", "-", who=me, stdin=body), GRANT_POLICY, *words)
        assert get("service", name, ns) is None
    refused(sh("patch", "service", "plain", "-n", ns, "--type=merge", "-p", '{"spec":{"type":"NodePort"}}', who=me),
            "NodePort")
    # services/status (a LoadBalancer's addresses) is never grantable: RBAC refuses it.
    status = sh("patch", "service", "plain", "-n", ns, "--subresource=status", "--type=merge", "-p",
                '{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.20"}]}}}', who=me)
    refused(status, "forbidden")

    # Detection agrees: the granted Services are no violation. A ClusterIP Service that break-glass puts
    # into a run whose grant does not name services is one (the same rule, seen failing).
    start(team, "nosvc", with_response(simple_spec(pods=1), "isolate", enforcement="audit"))
    other = run_namespace(team, "nosvc")
    create(service(other, "slipped-in"), as_user=BREAK_GLASS)
    wait_for(lambda: any(v["kind"] == "ServiceNotGranted" and v["source"] == "api"
                         for v in violations(team, "nosvc")), timeout=20, what="ServiceNotGranted for slipped-in")
    # (The refusals above are recorded too, with source "admission".)
    assert not [v for v in violations(team, "svc") if v["kind"] == "ServiceNotGranted" and v["source"] == "api"], \
        violations(team, "svc")
    # Without the grant the webhook refuses a ClusterIP Service too (in this audit-mode run: warns that it
    # would), and says what would allow it.
    warning = created(sh("create", "-f", "-", who=ADMIN, stdin=service(other, "nope")))
    assert "would be refused" in warning and "does not name services" in warning, warning


# Pod to pod -------------------------------------------------------------------------------------------
def connection(ns: str, pod: str, source_ip: str, dest_ip: str, port: int = 8080) -> dict[str, Any]:
    return falco_event("Unexpected outbound connection destination", ns, pod, **{
        "fd.name": f"{source_ip}:40112->{dest_ip}:{port}", "fd.lport": 40112, "fd.rport": port, "fd.type": "ipv4",
        "fd.l4proto": "tcp", "evt.type": "connect", "proc.name": "python3", "proc.exepath": "/usr/bin/python3",
        "proc.cmdline": f"python3 client.py {dest_ip}", "user.name": "agent"})


def live_pod(ns: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: (p := get("pod", name, ns)) and p.get("status", {}).get("podIP") and p,
                    timeout=30, what=f"pod {ns}/{name} to have an address")


def endpoint(pod: dict[str, Any]) -> netpol.Pod:
    return netpol.Pod(pod["metadata"]["namespace"], dict(pod["metadata"].get("labels") or {}), pod["status"]["podIP"])


def selected(ns: str) -> set[str]:
    """The pods the API server selects with the pod-to-pod policy's own podSelector."""
    policy = get("networkpolicy", POD_TO_POD, ns)
    assert policy["spec"]["podSelector"] == NOT_QUARANTINED
    return {p["metadata"]["name"] for p in get("pods", namespace=ns, selector="!stockade.io/quarantined")["items"]}


def test_pod_to_pod_in_the_policies_and_in_detection(team: str, allows_operator: tuple[Operator, Signals]) -> None:
    _, client = allows_operator
    start(team, "mesh", with_response(simple_spec(pods=3, podToPod=True, kubernetesAPI=PODS), "isolate"))
    start(team, "apart", with_response(simple_spec(pods=2, kubernetesAPI=PODS), "isolate"))
    mesh, apart = run_namespace(team, "mesh"), run_namespace(team, "apart")
    for ns in (mesh, apart):
        webhook_ready(ns)
    for ns, names in ((mesh, ("sandbox", "third")), (apart, ("helper",))):
        for name in names:
            created(sh("create", "-f", "-", who=agent(ns), stdin=unnamed_pod(ns, name)))

    # The policy the API server holds: the run's non-quarantined pods, both ways, any port.
    policy = get("networkpolicy", POD_TO_POD, mesh)
    assert policy["spec"] == {"podSelector": NOT_QUARANTINED, "policyTypes": ["Ingress", "Egress"],
                              "ingress": [{"from": [{"podSelector": NOT_QUARANTINED}]}],
                              "egress": [{"to": [{"podSelector": NOT_QUARANTINED}]}]}
    assert get("networkpolicy", POD_TO_POD, apart) is None, "off by default"
    assert selected(mesh) == {"mesh", "sandbox", "third"}

    agent_m, sandbox, third = (live_pod(mesh, n) for n in ("mesh", "sandbox", "third"))
    agent_a, helper = live_pod(apart, "apart"), live_pod(apart, "helper")
    outsider = netpol.Pod(team, {"app": "x"}, "10.244.9.9")
    flows = [netpol.Flow(endpoint(agent_m), endpoint(sandbox), 8080),
             netpol.Flow(endpoint(sandbox), endpoint(agent_m), 5432),
             netpol.Flow(endpoint(agent_a), endpoint(helper), 8080),
             netpol.Flow(endpoint(agent_m), endpoint(agent_a), 8080),  # another run's pod
             netpol.Flow(outsider, endpoint(sandbox), 8080)]
    assert netpol.allowed([mesh, apart, team], flows) == [True, True, False, False, False]

    # Detection: a connection to another of the run's pods is within the grant with podToPod, and a
    # violation without it.
    ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in (agent_m, sandbox, third, agent_a, helper)}
    status, answer = client.post("/falco", connection(mesh, "mesh", ip["mesh"], ip["sandbox"]))
    assert status == 200 and answer["violation"] is None, answer
    status, answer = client.post("/falco", connection(apart, "apart", ip["apart"], ip["helper"]))
    assert status == 202 and answer["violation"]["kind"] == "UngrantedEgress", answer
    assert "is not in the egress grant" in answer["violation"]["detail"]

    # A quarantined pod is no peer: the stored policies no longer select it, the evaluator refuses it both
    # ways, and a connection to it is a violation. (The ladder then isolates the run's other pods too, as
    # pods found unquarantined in a quarantined run: the policy selects whichever remain unlabelled.)
    status, answer = client.post("/falco", ssh_event(mesh, "third"))
    assert status == 202, answer
    quarantined(team, "mesh")
    third = wait_for(lambda: (p := get("pod", "third", mesh)) and "stockade.io/quarantined" in p["metadata"]["labels"]
                     and p, timeout=20, what="the pod third to carry the quarantine label")
    pods = get("pods", namespace=mesh)["items"]
    unlabelled = {p["metadata"]["name"] for p in pods if "stockade.io/quarantined" not in p["metadata"]["labels"]}
    assert "third" in {p["metadata"]["name"] for p in pods} and "third" not in unlabelled
    assert selected(mesh) <= unlabelled and "third" not in selected(mesh)
    assert get("networkpolicy", POD_TO_POD, mesh)["spec"] == policy["spec"], "the policy itself is unchanged"
    # Pods still unquarantined, as the evaluator sees them: they reach each other, never the quarantined one.
    one, two = (netpol.Pod(mesh, {"stockade.io/agentrun": "mesh"}, ip) for ip in ("10.244.8.8", "10.244.8.9"))
    flows = [netpol.Flow(one, endpoint(third), 8080), netpol.Flow(endpoint(third), one, 8080),
             netpol.Flow(one, two, 8080)]
    assert netpol.allowed([mesh], flows) == [False, False, True]
    deadline = time.monotonic() + 20
    while True:  # the operator's store sees the label a moment after the API server
        status, answer = client.post("/falco", connection(mesh, "sandbox", ip["sandbox"], ip["third"]))
        if status == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 202 and answer["violation"]["kind"] == "UngrantedEgress", answer


def test_an_agent_policy_refuses_pod_to_pod_unless_it_allows_it(allows_operator: tuple[Operator, Signals]) -> None:
    value = uuid.uuid4().hex[:6]
    ns = f"pol-{value}"
    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {POLICY_LABEL: value}}})
    policy = {"apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": f"e2e-{value}"},
              "spec": {"namespaceSelector": {"matchLabels": {POLICY_LABEL: value}}}}
    apply(policy)
    try:
        run = agentrun("mesh", ns, simple_spec(pods=2, podToPod=True))
        with pytest.raises(KubectlError) as err:
            kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(run))
        assert "spec.grant.podToPod" in err.value.stderr and "allowPodToPod is false" in err.value.stderr
        policy["spec"]["ceilings"] = {"allowPodToPod": True}
        apply(policy)
        wait_for(lambda: _admitted(run), timeout=20, what="the policy allowing podToPod to be seen")
    finally:
        kubectl("delete", "agentpolicy", f"e2e-{value}", "--wait=false", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _admitted(run: dict[str, Any]) -> bool:
    try:
        kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(run))
    except KubectlError:
        return False
    return True


# On the wire (kube-router's NetworkPolicy enforcement, e2e/dataplane.py): last, since it brings the dataplane up.
def test_pod_to_pod_on_the_wire(team: str, allows_operator: tuple[Operator, Signals], wire: Wire) -> None:  # noqa: F811
    _, client = allows_operator
    start(team, "wired", with_response(simple_spec(pods=2, podToPod=True, dns=True, egress=EGRESS, kubernetesAPI=PODS),
                                       "isolate"))
    start(team, "alone", simple_spec(pods=2, egress=EGRESS, kubernetesAPI=PODS))
    ends = {}
    for run in ("wired", "alone"):
        ns = run_namespace(team, run)
        webhook_ready(ns)
        created(sh("create", "-f", "-", who=agent(ns), stdin=unnamed_pod(ns, "peer")))
        ends[run] = (fenced_sandbox(wire, ns, run), fenced_sandbox(wire, ns, "peer"))
    for agent_end, peer_end in ends.values():
        peer_end.listen(8080)
        agent_end.listen(5432)
    wired_agent, wired_peer = ends["wired"]
    wait_for(lambda: wired_agent.connect(wired_peer.addresses[0], 8080) == "open", timeout=30,
             what="the agent to reach its peer on the wire (grant.podToPod)")
    assert wired_peer.connect(wired_agent.addresses[0], 5432) == "open", "both ways, any port"
    wire.assert_fenced(wired_agent)  # the rest of the fence holds
    alone_agent, alone_peer = ends["alone"]
    assert wire.refused(alone_agent, alone_peer.addresses[0], 8080), "without grant.podToPod"
    assert wire.refused(wired_agent, alone_peer.addresses[0], 8080), "another run's pod is no peer"
    # Quarantined, the peer is cut off.
    status, answer = client.post("/falco", ssh_event(run_namespace(team, "wired"), "peer"))
    assert status == 202, answer
    quarantined(team, "wired")
    wait_for(lambda: wire.refused(wired_agent, wired_peer.addresses[0], 8080), timeout=30,
             what="the quarantined peer to be cut off on the wire")
