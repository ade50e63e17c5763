"""The run namespace's name: a DNS-1123 label made from both names, hashed where too long."""

from __future__ import annotations

import hashlib

MAX_LABEL = 63


def run_namespace_name(namespace: str, name: str) -> str:
    """``<namespace>-<name>``, or a shortened form with a stable hash suffix when over 63 chars."""
    full = f"{namespace}-{name}"
    if len(full) <= MAX_LABEL:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    head = full[: MAX_LABEL - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"
