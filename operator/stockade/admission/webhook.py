"""Stockade's own webhook configurations, and applying them and the policies.

kopf serves the endpoints, but the configuration it would manage by itself selects every
namespace and waits 30 s. These select run namespaces by label only (never the control plane's
or the operator's own), skip the operator's own requests, time out in 5 s and fail closed.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from stockade import kinds
from stockade.admission import vap
from stockade.kube import Kube

log = logging.getLogger("stockade.admission")

NAME = "stockade"
VALIDATE_ID = "allowlist"  # kopf handler ids: the path of each webhook's URL
MUTATE_ID = "gpu-visibility"
POLICY_ID = "agentrun-policy"  # AgentRuns against the AgentPolicies that bound them
POLICY_DEFAULTS_ID = "agentrun-policy-defaults"  # what a grant omits, from those policies' defaults
AGENTRUN_MUTATE_ID = "agentrun-defaults"
FIELD_MANAGER = "stockade-admission"

# Updates and deletions the webhook judges; every kind is judged on creation.
UPDATE_RULES: list[tuple[str, list[str]]] = kinds.rules(
    (kind for kind in kinds.KINDS if kind.judged_on_update),
    lambda kind: (kind.plural, *(f"{kind.plural}/{sub}" for sub in kind.update_subresources)))
NOT_EVENTS = {"name": "not-events",  # Events are written everywhere by the control plane and start nothing
              "expression": "request.resource.resource != 'events'"}


def client_config(ca_bundle: bytes, path: str, *, url: str | None = None,
                  service: tuple[str, str] | None = None, service_port: int = 443) -> dict[str, Any]:
    config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if service is not None:
        config["service"] = {"namespace": service[0], "name": service[1], "path": f"/{path}", "port": service_port}
    elif url is not None:
        config["url"] = f"{url.rstrip('/')}/{path}"
    else:
        raise ValueError("a webhook needs a URL or a Service")
    return config


def _rule(group: str, plurals: list[str], operations: list[str], scope: str = "Namespaced") -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": ["*"], "resources": plurals, "operations": operations,
            "scope": scope}


def validating(clients: Mapping[str, dict[str, Any]], usernames: Sequence[str], excluded: Sequence[str] = (),
               *, timeout: int = 5, name: str = NAME, exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    common = {
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        # Refusals are recorded on the AgentRun, but never for a dry run.
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": timeout,
        "admissionReviewVersions": ["v1"],
    }
    guardrails = [(group, plurals) for group, plurals in vap.GUARDRAIL_RULES]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "allowlist.stockade.io",
                "clientConfig": clients[VALIDATE_ID],
                "rules": [_rule("*", ["*"], ["CREATE"])]
                + [_rule(group, plurals, ["UPDATE"]) for group, plurals in UPDATE_RULES]
                + [_rule(group, plurals, ["DELETE"]) for group, plurals in guardrails],
                "namespaceSelector": vap.run_namespaces(excluded),
                "matchConditions": [vap.not_operator(usernames, exempt_groups), NOT_EVENTS],
                **common,
            },
            {
                "name": "run-namespace.stockade.io",
                "clientConfig": clients[VALIDATE_ID],
                "rules": [_rule("", ["namespaces"], ["UPDATE", "DELETE"], scope="Cluster")],
                # An objectSelector matches the old object too: removing the label is caught.
                "objectSelector": {"matchExpressions": [{"key": "stockade.io/agentrun", "operator": "Exists"}]},
                "namespaceSelector": {"matchExpressions": [vap.run_namespaces(excluded)["matchExpressions"][1]]},
                "matchConditions": [vap.not_operator(usernames, exempt_groups)],
                **common,
            },
            {
                # AgentRuns only, in every namespace (team namespaces hold them) but the control plane's
                # and the operator's: a grant must fit every AgentPolicy, and no policy means no run.
                "name": "agentrun-policy.stockade.io",
                "clientConfig": clients[POLICY_ID],
                "rules": [_rule("stockade.io", ["agentruns"], ["CREATE", "UPDATE"])],
                "namespaceSelector": {"matchExpressions": [vap.run_namespaces(excluded)["matchExpressions"][1]]},
                "matchConditions": [vap.not_operator(usernames, exempt_groups)],
                **common,
                "sideEffects": "None",  # SubjectAccessReviews change nothing
            },
        ],
    }


def mutating(clients: Mapping[str, dict[str, Any]], usernames: Sequence[str], excluded: Sequence[str] = (),
             *, timeout: int = 5, name: str = NAME, exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "gpu-visibility.stockade.io",
                "clientConfig": clients[MUTATE_ID],
                "rules": [_rule("", ["pods"], ["CREATE"])],
                "namespaceSelector": vap.run_namespaces(excluded),
                "matchConditions": [vap.not_operator(usernames, exempt_groups)],
                # Ignore is safe here: the validating webhook (Fail) refuses a pod whose containers
                # without a GPU request do not say NVIDIA_VISIBLE_DEVICES=void, so a skipped mutation
                # can only turn into a refusal, never into hidden GPU access. It also lets the
                # ValidatingAdmissionPolicies be the ones to answer while the operator is down.
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "IfNeeded",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": timeout,
                "admissionReviewVersions": ["v1"],
            },
            {
                # AgentRuns in every namespace (they live in team namespaces), never the excluded ones:
                # the finalizer on creation, and release only by those granted the verb.
                "name": "agentrun-defaults.stockade.io",
                "clientConfig": clients[AGENTRUN_MUTATE_ID],
                "rules": [_rule("stockade.io", ["agentruns"], ["CREATE", "UPDATE"])],
                "namespaceSelector": excluded_namespaces(excluded),
                "matchConditions": [vap.not_operator(usernames, exempt_groups)],
                # Fail: an AgentRun without its finalizer could outlive nothing, but a release that
                # skipped the permission check would be recorded under a name the caller chose.
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": timeout,
                "admissionReviewVersions": ["v1"],
            },
            policy_defaults_hook(clients, usernames, excluded, timeout=timeout, exempt_groups=exempt_groups),
        ],
    }


def excluded_namespaces(excluded: Sequence[str] = ()) -> dict[str, Any]:
    """Every namespace but the control plane's and the operator's own."""
    names = sorted({*vap.SYSTEM_NAMESPACES, *excluded})
    return {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": names}]}


def policy_defaults_hook(clients: Mapping[str, dict[str, Any]], usernames: Sequence[str],
                         excluded: Sequence[str] = (), *, timeout: int = 5,
                         exempt_groups: Sequence[str] = ()) -> dict[str, Any]:
    """AgentRuns in every namespace but the exempt ones: grant fields filled from the policies' defaults."""
    return {
        "name": "agentrun-policy-defaults.stockade.io",
        "clientConfig": clients[POLICY_DEFAULTS_ID],
        "rules": [_rule("stockade.io", ["agentruns"], ["CREATE", "UPDATE"])],
        "namespaceSelector": {"matchExpressions": [vap.run_namespaces(excluded)["matchExpressions"][1]]},
        "matchConditions": [vap.not_operator(usernames, exempt_groups)],
        # Ignore is safe: a default skipped leaves the field out, and the validating webhook (Fail) then
        # checks the grant as written (no duration under a maxDuration is refused, for one).
        "failurePolicy": "Ignore",
        "reinvocationPolicy": "Never",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": timeout,
        "admissionReviewVersions": ["v1"],
    }


# Applying -----------------------------------------------------------------------------------------------
PATHS = {kind.kind: kind.collection for kind in kinds.ADMISSION}


async def apply(kube: Kube, objects: Sequence[Mapping[str, Any]]) -> None:
    """Server-side apply, in order (policies before their bindings)."""
    for obj in objects:
        await apply_one(kube, obj)
        log.info("applied %s %s", obj["kind"], obj["metadata"]["name"])


async def apply_one(kube: Kube, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply with force from the one field manager: every field the operator set is its own again
    (a failurePolicy someone turned to Ignore, a webhook someone removed), whoever changed it."""
    path = f"{PATHS[obj['kind']]}/{obj['metadata']['name']}"
    return await kube.call("PATCH", path, dict(obj), query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                           content_type="application/apply-patch+yaml")


async def whoami(kube: Kube) -> str:
    """The operator's username as the API server sees it (impersonation included)."""
    review = await kube.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    username = ((review.get("status") or {}).get("userInfo") or {}).get("username")
    if not username:
        raise RuntimeError("the API server did not say who the operator is; set STOCKADE_OPERATOR_USERNAMES")
    return str(username)
