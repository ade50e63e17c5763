"""`kubectl explain` against the real API server, and `stockade explain reasons` against what the operator wrote.

The descriptions are read back as the API server publishes them (its OpenAPI v3 document, which is what
kubectl explain reads) and as kubectl explain prints them; the reasons are those on a live AgentRun's
conditions and Events, written by the real operator.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from stockade.api.crd import schema_nodes

from .conftest import Operator, agentrun, apply, condition, get, kubectl, ready, simple_spec, wait_for
from .test_cli import stockade

OPENAPI = "/openapi/v3/apis/stockade.io/v1alpha1"
KINDS = {"agentrun": "io.stockade.v1alpha1.AgentRun", "agentpolicy": "io.stockade.v1alpha1.AgentPolicy"}
FIELD = re.compile(r"^  (\S+)\t<(.+?)>")  # a field's header in kubectl explain's FIELDS section


def published(kind: str) -> dict[str, Any]:
    doc = json.loads(kubectl("get", "--raw", OPENAPI))
    schema: dict[str, Any] = doc["components"]["schemas"][KINDS[kind]]
    return schema


def undescribed(kind: str) -> list[str]:
    schema = published(kind)
    return [path for path, node in schema_nodes(schema, kind)
            if not node.get("description") and not node.get("allOf") and "$ref" not in node]  # ObjectMeta: k8s'


def explain(path: str, *flags: str) -> str:
    return kubectl("explain", path, *flags)


def fields(text: str) -> dict[str, list[str]]:
    """kubectl explain's FIELDS section: each field and the description lines under it."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.partition("FIELDS:")[2].splitlines():
        header = FIELD.match(line)
        if header:
            current = out.setdefault(header.group(1), [])
        elif current is not None and line.startswith("    ") and line.strip():
            current.append(line.strip())
    return out


def description(text: str) -> str:
    return " ".join(text.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].split())


def object_paths(root: str) -> list[str]:
    """Every object field under ``root`` (``kubectl explain ROOT --recursive``), as explain paths."""
    paths, stack = [root], [root]
    for line in explain(root, "--recursive").split("FIELDS:", 1)[1].splitlines():
        match = re.match(r"^( +)(\S+)\t<(.+?)>", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        del stack[depth:]
        stack.append(f"{stack[-1]}.{match.group(2)}")
        if "Object" in match.group(3) and "map[" not in match.group(3):
            paths.append(stack[-1])
    return paths


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_api_server_publishes_a_description_for_every_field(kind: str) -> None:
    # Published a moment after the CRD is applied: read again until it settles rather than a stale document.
    deadline = time.monotonic() + 20
    while (missing := undescribed(kind)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not missing, f"{OPENAPI} has no description for {missing}"


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("root", ["agentrun.spec", "agentrun.status", "agentpolicy.spec", "agentpolicy.status"])
def test_kubectl_explain_describes_every_field(root: str) -> None:
    recursive = explain(root, "--recursive")
    assert "<empty>" not in recursive and description(recursive), recursive[:400]
    assert len(object_paths(root)) >= 3  # the walk reaches nested objects
    empty = {}
    for path in object_paths(root):
        text = explain(path)
        assert "<empty>" not in text, f"{path}: {text[:400]}"
        empty.update({f"{path}.{name}": lines for name, lines in fields(text).items()
                      if not [line for line in lines if not line.startswith("enum:")]})
    assert not empty, f"fields kubectl explain shows without a description: {sorted(empty)}"


@pytest.mark.usefixtures("crds")
def test_explain_spec_recursive_reaches_the_template_and_the_rbac_rules() -> None:
    text = explain("agentrun.spec", "--recursive")
    assert description(text).startswith("What the team asks for")
    for name in ("template", "grant", "kubernetesAPI", "resourceNames", "containers", "serviceAccountName"):
        assert re.search(rf"^ +{name}\t<", text, re.M), name
    template = explain("agentrun.spec.template.spec")
    assert "hostNetwork" in fields(template) and "never granted" in " ".join(fields(template)["hostNetwork"])
    image = " ".join(fields(explain("agentrun.spec.template.spec.containers"))["image"])
    assert "kubectl explain pod.spec.containers.image" in image


@pytest.mark.usefixtures("crds")
def test_explain_the_rbac_rules_and_the_conditions() -> None:
    rules = explain("agentrun.spec.grant.kubernetesAPI")
    assert "RBAC rules for the agent's ServiceAccount" in description(rules)
    assert set(fields(rules)) == {"apiGroups", "resources", "verbs", "resourceNames"}
    assert all(fields(rules).values())
    assert "pods/exec" in " ".join(fields(rules)["resources"])
    conditions = explain("agentrun.status.conditions")
    assert "stockade explain reasons" in description(conditions)
    assert set(fields(conditions)) >= {"type", "status", "reason", "message", "lastTransitionTime"}
    assert "stockade explain reasons" in " ".join(fields(conditions)["reason"])


def test_stockade_explain_reasons_lists_what_the_operator_writes(operator: Operator, team_namespace: str) -> None:
    listed = stockade("explain", "reasons", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    names = {r["name"] for r in json.loads(listed.stdout)["reasons"]}
    text = stockade("explain", "reasons")
    assert text.returncode == 0, text.stderr
    # The reasons other parts of the operator write, each with what to do.
    for name in ("AdmissionRefused", "HostUnresolved", "AdmissionMissing", "AdmissionRestored", "FenceComplete",
                 "TemplateExceedsGrant", "BudgetExhausted", "NarrowedBelowGrant", "GuardrailRestored"):
        assert name in names and f"{name}  (" in text.stdout, name

    spec = simple_spec()
    refused = simple_spec(cpu="1")
    refused["template"]["spec"]["hostNetwork"] = True
    apply([agentrun("fine", team_namespace, spec), agentrun("refused", team_namespace, refused)])
    wait_for(lambda: ready(team_namespace, "fine"), timeout=30, what="the run to be Ready")
    wait_for(lambda: condition(get("agentrun", "refused", team_namespace), "Ready").get("reason")
             == "TemplateExceedsGrant", timeout=30, what="the template to be refused")
    written: set[str] = set()
    for name in ("fine", "refused"):
        run = get("agentrun", name, team_namespace)
        written |= {c["reason"] for c in run["status"]["conditions"]}
    events = get("events", namespace=team_namespace)["items"]
    written |= {e["reason"] for e in events if e["involvedObject"].get("kind") == "AgentRun"}
    assert {"Running", "TemplateExceedsGrant"} <= written, written
    assert written <= names, f"reasons on the live runs that stockade explain reasons does not list: " \
                             f"{sorted(written - names)}"
