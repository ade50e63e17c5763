"""Is this AgentRun usable at all? Pure checks of user input, before any object is built from it.

A spec the CRD let through (an older CRD, or a value only the API server's later checks refuse)
must end in ``Ready=False`` with a reason the user can act on, never in an exception or a retry
loop. ``spec_problem`` is the pass before planning; ``api_refusal`` tells an API server answer that
no retry can change (the object is invalid) from one that passes (a conflict, a throttle, a quota
still being counted); ``admission_refusal`` one that only a change of someone's admission policy
passes (asked again with a growing delay); ``terminating_namespace`` one that only the namespace's
deletion ending passes (expected while a run or its namespace is deleted: not an error).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from stockade import apirules, podshape
from stockade.api.models import AgentRunSpec
from stockade.api.reasons import (
    ADMISSION_REFUSED,
    API_RULE_NOT_GRANTABLE,
    INVALID_TEMPLATE,
    POD_SECURITY_REFUSED,
    REFUSED_BY_API_SERVER,
    problem,
)

MAX_MESSAGE = 900  # status messages stay readable; the full text is in the Warning Event and the log


def _join(findings: list[tuple[str, str]]) -> str:
    text = "; ".join(f"{field}: {message}" for field, message in findings)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def spec_problem(spec: AgentRunSpec) -> str | None:
    """``"Reason: message"`` for a spec no fence can be built from, else None."""
    rules = [rule.model_dump(exclude_none=True) for rule in spec.grant.kubernetesAPI]
    not_grantable = apirules.rules_findings(rules, "spec.grant.kubernetesAPI")
    if not_grantable:
        return problem(API_RULE_NOT_GRANTABLE, _join(not_grantable))
    shape = podshape.template_findings(spec.template)
    if shape:
        return problem(INVALID_TEMPLATE, _join(shape))
    return None


# How the API server words a refusal by an admission webhook or a ValidatingAdmissionPolicy.
ADMISSION_DENIAL = re.compile(r'admission webhook "[^"]*" denied the request'
                              r"|ValidatingAdmissionPolicy '[^']*' with binding '[^']*' denied request")


def admission_refusal(status: int, message: str) -> str | None:
    """``"AdmissionRefused: message"`` when a webhook or an admission policy refused an object: the
    platform can change its policy at any time, so the operator asks again later rather than only
    when the spec changes."""
    if status in (400, 403, 422) and ADMISSION_DENIAL.search(message) and "violates PodSecurity" not in message:
        return problem(ADMISSION_REFUSED, message[:MAX_MESSAGE])
    return None


def api_refusal(status: int, message: str) -> str | None:
    """``"Reason: message"`` when the API server refused an object for what it is (retrying cannot help)."""
    if admission_refusal(status, message):
        return None
    if status in (400, 422):
        return problem(REFUSED_BY_API_SERVER, message[:MAX_MESSAGE])
    if status == 403 and "violates PodSecurity" in message:
        return problem(POD_SECURITY_REFUSED, message[:MAX_MESSAGE])
    return None


# The API server's NamespaceLifecycle admission: nothing new is created in a namespace being deleted.
# 403 Forbidden with the cause NamespaceTerminating ("unable to create new content in namespace X because
# it is being terminated"); also seen as 409 when a create races the deletion.
TERMINATING_CAUSE = "NamespaceTerminating"
_TERMINATING = re.compile(r"in namespace (\S+) because it is being terminated")


def terminating_namespace(status: int, message: str, causes: Sequence[str] = ()) -> str | None:
    """The namespace an answer says is being deleted ("" when only its cause says so), else None."""
    if status not in (403, 409):
        return None
    found = _TERMINATING.search(message)
    if found:
        return found.group(1)
    return "" if TERMINATING_CAUSE in causes else None
