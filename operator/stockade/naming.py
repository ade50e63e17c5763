"""Names the operator derives from an AgentRun's: run namespace, label values, workload (pure).

An AgentRun name is a DNS-1123 subdomain (up to 253 characters, dots allowed); a namespace name and a
label value are at most 63 characters, and a namespace name has no dots. So the readable
``<namespace>-<name>`` is only the first choice: it is ambiguous (``col-a``/``b-x`` and ``col``/``a-b-x``
give the same string) and anyone who may create namespaces can take it first. The run namespace is
therefore *chosen* (the first candidate that nobody else holds), labelled with the AgentRun's uid, and
recorded in ``status.runNamespace``; a namespace is the run's only if it carries that uid. The later
candidates add a hash of namespace, name and uid: the uid is the API server's, so nobody can know
those names before the AgentRun exists.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LENGTH = 10
# How many hashed names to try after the readable one before the run reports NamespaceConflict.
HASHED_CANDIDATES = 4
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:HASH_LENGTH]


def _shortened(text: str, digest: str) -> str:
    """``text`` cut so that ``<text>-<digest>`` fits a label; dots (not allowed in a namespace) become dashes."""
    head = text.replace(".", "-")[: MAX_LABEL - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}" if head else digest


def run_namespace_name(namespace: str, name: str) -> str:
    """The readable first choice ``<namespace>-<name>`` (hashed when it is not a DNS label).

    Only a default for code that has no recorded name yet; the reconciler's choice (see
    :func:`run_namespace_candidates`) is what ``status.runNamespace`` holds.
    """
    full = f"{namespace}-{name}"
    if len(full) <= MAX_LABEL and DNS_LABEL.match(full):
        return full
    return _shortened(full, _digest(namespace, name))


def run_namespace_candidates(namespace: str, name: str, uid: str) -> list[str]:
    """The names a run namespace may get, in order of preference: readable first, then hashed with the uid."""
    first = f"{namespace}-{name}"
    out = [first] if len(first) <= MAX_LABEL and DNS_LABEL.match(first) else []
    for attempt in range(HASHED_CANDIDATES):
        salt = (str(attempt),) if attempt else ()
        out.append(_shortened(first, _digest(namespace, name, uid, *salt)))
    return out


def label_value(name: str) -> str:
    """An AgentRun name as a label value (at most 63 characters; longer names keep a head and a hash)."""
    if len(name) <= MAX_LABEL:
        return name
    digest = _digest(name)
    head = name[: MAX_LABEL - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"


def job_name(name: str) -> str:
    """A Job's name becomes a label value on its pods (``batch.kubernetes.io/job-name``): at most 63 characters."""
    return label_value(name)
