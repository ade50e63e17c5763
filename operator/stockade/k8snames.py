"""Kubernetes object names as the API server validates them (apimachinery's validation package).

Pure. Names that reach an API path from outside (a signal, a Falco event) are checked against these
before anything is looked up, and ``kube.object_path`` checks every segment it joins, so a name such
as ``../../kube-system/pods/x`` can never turn into another object's path.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# Anchored patterns, also used by the pydantic models (JSON Schema "pattern").
LABEL_PATTERN = rf"^{DNS1123_LABEL}$"
SUBDOMAIN_PATTERN = rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$"

_LABEL = re.compile(LABEL_PATTERN)
_SUBDOMAIN = re.compile(SUBDOMAIN_PATTERN)


def is_label(value: object) -> bool:
    """A DNS-1123 label: what namespace names are."""
    return isinstance(value, str) and len(value) <= DNS1123_LABEL_MAX and _LABEL.fullmatch(value) is not None


def is_subdomain(value: object) -> bool:
    """A DNS-1123 subdomain: what pod, Job, ServiceAccount, NetworkPolicy and AgentRun names are."""
    return isinstance(value, str) and len(value) <= DNS1123_SUBDOMAIN_MAX and \
        _SUBDOMAIN.fullmatch(value) is not None


def is_path_segment(value: object) -> bool:
    """What RBAC object names may be (apimachinery's IsValidPathSegmentName): anything that stays one
    path segment."""
    return isinstance(value, str) and 0 < len(value) <= DNS1123_SUBDOMAIN_MAX and value not in (".", "..") and \
        not any(c in value for c in "/%") and not any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)
