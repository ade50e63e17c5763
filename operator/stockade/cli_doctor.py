"""``stockade doctor``: is the fence machinery in place? CRDs, the operator's liveness, its webhooks, the admission
policies, the DNS resolver for host grants. Each check is judged by a pure function from what was read, so the
judgement is unit-tested and the reads are e2e-tested against the real cluster."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import typer

from stockade import kinds
from stockade.cli_common import OUTPUT, Output, console, fail, print_json

CRDS = ("agentruns.stockade.io", "agentpolicies.stockade.io")
WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
POLICY_SELECTOR = "app.kubernetes.io/name=stockade"
REQUIRED_POLICIES = ("baseline", "run-namespace", "grant")  # operator-confinement: only for a ServiceAccount
TIMEOUT = 2.0
STOCKADE_WEBHOOKS = {"allowlist.stockade.io", "gpu-visibility.stockade.io"}
DEFAULT_NAME = "stockade-local"  # the local operator's (AdmissionSettings.webhook_configuration)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def crd_checks(found: Mapping[str, Mapping[str, Any] | None]) -> list[Check]:
    checks = []
    for name in CRDS:
        crd = found.get(name)
        if crd is None:
            checks.append(Check(f"CRD {name}", False, "missing: stockade crds | kubectl apply --server-side -f -"))
            continue
        established = next((c for c in (crd.get("status") or {}).get("conditions") or []
                            if c.get("type") == "Established"), None)
        ok = established is not None and established.get("status") == "True"
        checks.append(Check(f"CRD {name}", ok, "Established" if ok else
                            f"not Established: {(established or {}).get('message') or 'no status yet'}"))
    return checks


def webhook_checks(name: str, found: Mapping[str, Mapping[str, Any] | None],
                   reach: Callable[[Mapping[str, Any]], str | None]) -> list[Check]:
    """Each configuration present with webhooks, each webhook's endpoint live (``reach``: None when it answers,
    else why not)."""
    checks = []
    for kind in WEBHOOK_KINDS:
        config = found.get(kind)
        label = f"{kind} {name}"
        if config is None:
            checks.append(Check(label, False, "missing: admission is not enforced (a running local operator "
                                  "restores it within seconds; under the chart: helm upgrade)"))
            continue
        hooks = config.get("webhooks") or []
        if not hooks:
            checks.append(Check(label, False, "has no webhooks: the operator has not written them yet"))
            continue
        problems = [f"{hook.get('name')}: {why}" for hook in hooks
                    if (why := reach(hook.get("clientConfig") or {})) is not None]
        checks.append(Check(label, not problems, "; ".join(problems) if problems else
                            f"{len(hooks)} webhooks, endpoints live"))
    return checks


def policy_checks(policies: Sequence[Mapping[str, Any]], bindings: Sequence[Mapping[str, Any]],
                  prefixes: Sequence[str] = ()) -> list[Check]:
    """Every policy found bound, and each installation's own (``prefixes``: the configurations' names, which
    start their policies' names) present."""
    if not policies:
        return [Check("ValidatingAdmissionPolicies", False, "none found (label " + POLICY_SELECTOR + "): nothing "
                      "holds the fence while the operator is down")]
    names = {str(p["metadata"]["name"]) for p in policies}
    missing = sorted(f"{prefix}-{suffix}" for prefix in prefixes for suffix in REQUIRED_POLICIES
                     if f"{prefix}-{suffix}" not in names)
    bound = {str((b.get("spec") or {}).get("policyName")) for b in bindings}
    unbound = sorted(name for name in names if name not in bound)
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
        ([f"not bound: {', '.join(unbound)}"] if unbound else [])
    return [Check("ValidatingAdmissionPolicies", not problems,
                  "; ".join(problems) if problems else f"{len(policies)} present and bound")]


def admission_ready_check(agentruns: Sequence[Mapping[str, Any]]) -> Check:
    """What the operator itself says on the AgentRuns (AdmissionReady): it watches its admission objects."""
    broken = [run for run in agentruns if any(
        c.get("type") == "AdmissionReady" and c.get("status") == "False"
        for c in (run.get("status") or {}).get("conditions") or [])]
    if not broken:
        return Check("AdmissionReady on AgentRuns", True, f"{len(agentruns)} AgentRuns, none says admission is "
                     "missing" if agentruns else "no AgentRuns")
    first = broken[0]
    message = next(c.get("message") for c in first["status"]["conditions"] if c.get("type") == "AdmissionReady")
    return Check("AdmissionReady on AgentRuns", False, f"{len(broken)} AgentRuns say: {message}")


def discovered(configurations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the webhook configurations (validating or mutating: one of the pair may be gone) that hold
    Stockade's webhooks: the local operator's, a chart's."""
    return sorted({str(c["metadata"]["name"]) for c in configurations
                   if any(str(h.get("name")) in STOCKADE_WEBHOOKS for h in c.get("webhooks") or [])})


def _connect(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return None
    except OSError as err:
        return f"{host}:{port} does not answer ({err.strerror or err})"


def liveness_check(url: str) -> Check:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return Check("operator liveness", resp.status == 200, f"{url}: {resp.status}")
    except (urllib.error.URLError, OSError) as err:
        return Check("operator liveness", False, f"{url}: {getattr(err, 'reason', err)}")


def dns_check(servers: Sequence[str]) -> Check:
    """Each resolver for grant.egress[].host answers a query (NXDOMAIN is an answer)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.resolver

    targets = [(s.rpartition(":")[0] or s, int(s.rpartition(":")[2]) if ":" in s else 53) for s in servers]
    label = "DNS for host grants" + ("" if servers else " (system resolver)")
    if not targets:
        try:
            targets = [(str(ns), 53) for ns in dns.resolver.Resolver().nameservers]
        except dns.resolver.NoResolverConfiguration:
            return Check(label, False, "no resolver configured; set STOCKADE_DNS_SERVERS")
    silent = []
    for host, port in targets:
        try:
            dns.query.udp(dns.message.make_query("stockade-doctor.invalid.", "A"), host.strip("[]"), port=port,
                          timeout=TIMEOUT)
        except (OSError, dns.exception.DNSException) as err:
            silent.append(f"{host}:{port} ({type(err).__name__})")
    names = ", ".join(f"{h}:{p}" for h, p in targets)
    return Check(label, not silent, f"no answer from {', '.join(silent)}" if silent else f"{names} answer")


class _Cluster:
    """The reads, with the user's credentials."""

    def __init__(self) -> None:
        from stockade.kube import Kube

        self.kube = Kube.connect(workers=1)

    def get(self, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any] | None:
        from stockade.kube import KubeError

        try:
            return dict(self.kube.request("GET", path, query=query))
        except KubeError as err:
            if err.not_found:
                return None
            raise

    def reach(self, client: Mapping[str, Any]) -> str | None:
        if client.get("url"):
            parts = urlsplit(str(client["url"]))
            return _connect(parts.hostname or "", parts.port or 443)
        service = client.get("service") or {}
        namespace, name = service.get("namespace"), service.get("name")
        slices = self.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                          [("labelSelector", f"kubernetes.io/service-name={name}")]) or {}
        ready = [a for s in slices.get("items") or [] for e in s.get("endpoints") or []
                 if (e.get("conditions") or {}).get("ready") is not False for a in e.get("addresses") or []]
        return None if ready else f"Service {namespace}/{name} has no ready endpoints"


def run_checks(liveness: str, configuration: str | None, dns_servers: Sequence[str]) -> list[Check]:
    """``configuration`` None: every installation found (the local operator's and a chart's may both be there)."""
    from stockade.kube import KubeError

    cluster = _Cluster()
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
    checks = crd_checks({name: cluster.get(base + name) for name in CRDS})
    checks.append(liveness_check(liveness))
    paths = {kind.kind: kind.collection for kind in kinds.ADMISSION}
    found = [c for kind in WEBHOOK_KINDS for c in (cluster.get(paths[kind]) or {}).get("items") or []]
    names = [configuration] if configuration else discovered(found) or [DEFAULT_NAME]
    for name in names:
        configs = {kind: cluster.get(f"{paths[kind]}/{name}") for kind in WEBHOOK_KINDS}
        checks += webhook_checks(name, configs, cluster.reach)
    selector = [("labelSelector", POLICY_SELECTOR)]
    policies = (cluster.get(paths["ValidatingAdmissionPolicy"], selector) or {}).get("items") or []
    bindings = (cluster.get(paths["ValidatingAdmissionPolicyBinding"], selector) or {}).get("items") or []
    checks += policy_checks(policies, bindings, names)
    try:
        runs = (cluster.get("/apis/stockade.io/v1alpha1/agentruns") or {}).get("items") or []
        checks.append(admission_ready_check(runs))
    except KubeError as err:  # a user who may not list every namespace's AgentRuns
        checks.append(Check("AdmissionReady on AgentRuns", False, f"could not list AgentRuns: {err}"))
    checks.append(dns_check(dns_servers))
    return checks


def doctor(
    liveness: str = typer.Option("http://127.0.0.1:8081/healthz", help="The operator's liveness URL (in a "
                                 "cluster: kubectl port-forward to the operator's port 8081 first)."),
    webhook_configuration: str | None = typer.Option(
        None, help="Name of the webhook configurations (default: STOCKADE_WEBHOOK_CONFIGURATION, else every "
        "installation found: the local operator's stockade-local, a chart's release name)."),
    dns_server: list[str] = typer.Option(  # noqa: B008
        [], "--dns-server", help="host:port of a resolver for host grants (repeatable; default: "
        "STOCKADE_DNS_SERVERS, else the system resolver)."),
    output: Output = OUTPUT,
) -> None:
    """Check the fence machinery: CRDs Established, the operator live, its webhook configurations present with
    live endpoints, the admission policies present and bound, no AgentRun saying AdmissionReady=False, the DNS
    resolver answering. Exit 1 on a failure."""
    import os

    from stockade.admission.config import AdmissionSettings
    from stockade.kube import KubeError
    from stockade.kubeconn import NoCredentials
    from stockade.settings import Settings

    name = webhook_configuration or (AdmissionSettings().webhook_configuration
                                     if os.environ.get("STOCKADE_WEBHOOK_CONFIGURATION") else None)
    try:
        checks = run_checks(liveness, name, dns_server or Settings().dns_servers)
    except (KubeError, NoCredentials) as err:
        fail(output, f"doctor could not read the cluster: {err}", 1)
    healthy = all(c.ok for c in checks)
    if output is Output.json:
        print_json({"ok": healthy, "checks": [asdict(c) for c in checks]})
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold dim")
        for column in ("", "CHECK", "DETAIL"):
            table.add_column(column)
        for c in checks:
            table.add_row(Text("✓", style="green") if c.ok else Text("✗", style="bold red"), c.name, c.detail)
        console().print(table)
    if not healthy:
        raise typer.Exit(1)
