"""The admission decision for an AgentRun CREATE or UPDATE, from what the watches have stored.

Pure: the webhook hands in the request, the policy index and the store; it gets back the findings and,
when there are none, the API permissions the requester must hold (one SubjectAccessReview each).

Who asks matters. An AgentRun created in a run namespace, or by a ServiceAccount of a run namespace
anywhere, comes from that run: it is refused unless the run's grant has delegation, and carved out of it.
A run's ServiceAccount may create AgentRuns only in its own run namespace, where they are deleted with
it. The policies that bound a child run are those of the team namespace its chain of parents starts in.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.api.models import AgentRunSpec, Grant
from stockade.grantcheck import granted_amounts
from stockade.grantpolicy import carve, ceilings, rules
from stockade.grantpolicy.ceilings import Bound
from stockade.grantpolicy.findings import PolicyFinding
from stockade.grantpolicy.index import PolicyIndex
from stockade.store import RunKey, Store

SERVICE_ACCOUNT = re.compile(r"^system:serviceaccount:([^:]+):([^:]+)$")
ENDED = ("Succeeded", "Failed", "Expired")
MAX_DEPTH = 8  # parents followed up to the team namespace; deeper chains are refused


@dataclass(frozen=True)
class AgentRunRequest:
    operation: str  # CREATE | UPDATE
    namespace: str
    name: str
    obj: Mapping[str, Any]
    old: Mapping[str, Any] | None
    username: str


@dataclass
class Verdict:
    findings: list[PolicyFinding] = field(default_factory=list)
    permissions: list[rules.Permission] = field(default_factory=list)  # for SubjectAccessReviews
    policies: list[str] = field(default_factory=list)  # names of the policies that bound it
    parent: RunKey | None = None
    skipped: str = ""  # why nothing was checked (an unchanged spec, a deletion)

    @property
    def allowed(self) -> bool:
        return not self.findings


def _finding(kind: str, fld: str, message: str, limit: str, hint: str = "") -> PolicyFinding:
    return PolicyFinding(kind, fld, message, "Stockade", limit, hint)


def _from_run(req: AgentRunRequest, index: PolicyIndex, store: Store) -> tuple[str, str] | None:
    """(run namespace, how it was told) when a run asks; None for everyone else."""
    if index.is_run_namespace(req.namespace) or store.is_run_namespace(req.namespace):
        return req.namespace, f"created in run namespace {req.namespace}"
    match = SERVICE_ACCOUNT.match(req.username)
    if match and (index.is_run_namespace(match.group(1)) or store.is_run_namespace(match.group(1))):
        return match.group(1), f"created by {req.username}"
    return None


def _parent(store: Store, run_namespace: str) -> carve.Parent | None:
    key = store.run_of_namespace(run_namespace)
    body = store.agentruns.get(key) if key else None
    recorded = ((body or {}).get("status") or {}).get("runNamespace")
    if key is None or body is None or (recorded and recorded != run_namespace):
        return None
    spec = store.valid_spec(key)  # parsed once per generation, by the store
    if spec is None:
        return None
    return carve.Parent(key[0], key[1], spec, body.get("status") or {})


def _team_namespace(store: Store, index: PolicyIndex, parent: carve.Parent) -> str | None:
    namespace = parent.namespace
    for _ in range(MAX_DEPTH):
        if not (index.is_run_namespace(namespace) or store.is_run_namespace(namespace)):
            return namespace
        up = store.run_of_namespace(namespace)
        if up is None:
            return None
        namespace = up[0]
    return None


def _siblings(store: Store, run_namespace: str, name: str) -> list[Grant]:
    out = []
    # list() copies the keys at once: the webhook's thread reads while the watches write.
    for key in [k for k in list(store.agentruns) if k[0] == run_namespace and k[1] != name]:
        body = store.agentruns.get(key)
        if body is None:
            continue
        if (body.get("status") or {}).get("phase") in ENDED or (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        spec = store.valid_spec(key)
        if spec is not None:  # an invalid AgentRun holds nothing (the reconciler never builds it)
            out.append(spec.grant)
    return out


def decide(req: AgentRunRequest, *, index: PolicyIndex, store: Store, now: datetime.datetime) -> Verdict:
    meta = req.obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Verdict(skipped="being deleted")  # finalizers must come off whatever the policies say now
    if req.operation == "UPDATE" and req.old is not None and (req.old.get("spec") == req.obj.get("spec")):
        return Verdict(skipped="spec unchanged")  # labels, annotations, finalizers: nothing granted anew
    try:
        spec = AgentRunSpec.model_validate(req.obj.get("spec") or {})
    except ValueError as err:
        return Verdict([_finding("Invalid", "spec", " ".join(str(err).split())[:300], "a valid AgentRun only")])
    verdict = Verdict()
    team = req.namespace
    asker = _from_run(req, index, store)
    if asker is not None:
        run_namespace, how = asker
        parent = _parent(store, run_namespace)
        if parent is not None and run_namespace != req.namespace:
            verdict.findings.append(_finding(
                "OutsideRunNamespace", "metadata.namespace", f"an AgentRun in {req.namespace} {how}",
                f"a run's AgentRuns only inside its own run namespace {run_namespace}"))
            return verdict
        verdict.findings += carve.check(spec, parent, siblings=_siblings(store, run_namespace, req.name),
                                        used=carve.pods_usage(store.in_namespace(run_namespace, "Pod")),
                                        now=now, asked_by=how)
        if parent is None or any(f.kind == "DelegationNotGranted" for f in verdict.findings):
            return verdict  # nothing to carve from: the policies need not be asked
        verdict.parent = (parent.namespace, parent.name)
        found = _team_namespace(store, index, parent)
        if found is None:
            verdict.findings.append(_finding("NoParent", "metadata.namespace", f"an AgentRun {how}",
                                             f"nothing: the team namespace of {parent.label()} is not known"))
            return verdict
        team = found
    bounds: list[Bound] | None = index.bounding(team)
    if bounds is None:
        verdict.findings.append(_finding("NamespaceUnknown", "metadata.namespace", f"namespace {team} not seen yet",
                                         "nothing until it is", "retry in a moment"))
        return verdict
    verdict.policies = [b.name for b in bounds]
    verdict.findings += ceilings.check(spec, bounds, team)
    too_many = ceilings.too_many_permissions(spec.grant)
    if too_many is not None:
        verdict.findings.append(too_many)
    if not verdict.findings:
        verdict.permissions = [perm for rule in spec.grant.kubernetesAPI for perm in rules.permissions(rule)]
    return verdict


def default_ops(req: AgentRunRequest, *, index: PolicyIndex, store: Store) -> list[dict[str, Any]]:
    """JSON-patch operations filling the grant fields it omits from the defaults of the policies that bound
    it (those of the team namespace a child's chain of parents starts in). The validating webhook then
    checks the grant with them in place."""
    grant = (req.obj.get("spec") or {}).get("grant")
    if not isinstance(grant, Mapping) or (req.obj.get("metadata") or {}).get("deletionTimestamp"):
        return []
    team: str | None = req.namespace
    asker = _from_run(req, index, store)
    if asker is not None:
        parent = _parent(store, asker[0])
        team = _team_namespace(store, index, parent) if parent is not None else None
    bounds = index.bounding(team) if team else None
    filled = ceilings.defaults(grant, bounds or [])
    return [{"op": "add", "path": f"/spec/grant/{name}", "value": value} for name, value in sorted(filled.items())]


def review(perm: rules.Permission, namespace: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """The SubjectAccessReview asking whether the requesting user holds ``perm`` in ``namespace``."""
    resource, _, subresource = perm.resource.partition("/")
    attributes = {"namespace": namespace, "verb": perm.verb, "group": perm.group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if perm.name is not None:
        attributes["name"] = perm.name
    spec: dict[str, Any] = {"resourceAttributes": attributes, "user": str(user.get("username") or "")}
    if user.get("groups"):
        spec["groups"] = list(user["groups"])
    if user.get("uid"):
        spec["uid"] = str(user["uid"])
    if user.get("extra"):
        spec["extra"] = {k: list(v) for k, v in dict(user["extra"]).items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def not_held(perm: rules.Permission, namespace: str, username: str) -> PolicyFinding:
    return PolicyFinding("PermissionNotHeld", "spec.grant.kubernetesAPI", f"{perm.text()} granted", "RBAC",
                         f"only permissions {username} holds in {namespace} (like a Role, a grant cannot escalate)")


def children_to_quarantine(store: Store, parent: Mapping[str, Any]) -> list[RunKey]:
    """A quarantined run's children (the active AgentRuns in its run namespace) not quarantined yet."""
    status = parent.get("status") or {}
    run_namespace = status.get("runNamespace")
    if not (status.get("quarantine") or {}).get("active") or not run_namespace:
        return []
    out = []
    for key in [k for k in list(store.agentruns) if k[0] == run_namespace]:
        child = (store.agentruns.get(key) or {}).get("status") or {}
        if child.get("phase") in ENDED or (child.get("quarantine") or {}).get("active"):
            continue
        out.append(key)
    return out


def child_claims(store: Store, run_namespace: str) -> list[dict[str, Any]]:
    """The active children's grants as pods of the parent's run namespace (one pod holding the amounts, and
    one empty pod for each further pod a child may run), for the webhook's check of the parent's pods: what
    was carved out for a child stays out of the parent's reach."""
    out: list[dict[str, Any]] = []
    for grant in _siblings(store, run_namespace, ""):
        amounts = {name: str(amount) for name, amount in granted_amounts(grant).items()}
        resources = {"requests": amounts, "limits": amounts}
        out.append({"metadata": {"name": ""}, "spec": {"containers": [{"name": "claim", "resources": resources}]}})
        out.extend({"metadata": {"name": ""}, "spec": {"containers": []}} for _ in range(grant.pods - 1))
    return out
