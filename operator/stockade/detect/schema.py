"""The generic signal: what any detector (Hubble, Tetragon, a custom one) posts to ``/signal``.

``GET /signal/schema`` serves this model's JSON Schema. One signal names one pod of a run::

    {"detector": "hubble", "namespace": "team-a-rome-42", "pod": "rome-42",
     "kind": "UngrantedEgress", "severity": "high", "detail": "TCP SYN to 198.51.100.7:22 dropped",
     "destination": {"ip": "198.51.100.7", "port": 22, "protocol": "TCP"},
     "evidence": {"flow": {"verdict": "DROPPED"}}}

With a ``destination``, Stockade judges the connection against the run's egress grant itself: a
connection kind (``Connection`` or ``UngrantedEgress``) to a granted destination is no violation,
and any other kind is recorded with the grant's verdict alongside.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stockade.k8snames import LABEL_PATTERN, SUBDOMAIN_PATTERN

CONNECTION_KINDS = {"Connection", "UngrantedEgress"}


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ip: str = Field(max_length=64, description="IPv4 or IPv6 address the pod connected (or tried) to.")
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class Signal(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Stockade signal")

    detector: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                          description="Who reports: hubble, tetragon, my-detector.")
    # Validated as the names they are: a signal names one object, never a path to another one.
    namespace: str = Field(min_length=1, max_length=63, pattern=LABEL_PATTERN,
                           description="The pod's namespace (the run namespace): a DNS-1123 label.")
    pod: str = Field(min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN,
                     description="The pod's name: a DNS-1123 subdomain.")
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{1,62}$",
                      description="Violation kind, CamelCase: UngrantedEgress, Connection, CryptoMiner, ...")
    severity: Literal["low", "medium", "high", "critical"] = "high"
    detail: str = Field(min_length=1, max_length=1024, description="What happened, for a human.")
    time: str | None = Field(default=None, max_length=64, description="When the detector saw it (RFC 3339).")
    destination: Destination | None = None
    evidence: dict[str, Any] | None = Field(default=None, description="Anything else; stored bounded.")


def json_schema() -> dict[str, Any]:
    return Signal.model_json_schema()


# Bounded JSON ------------------------------------------------------------------------------------------
# json.loads recurses once per nesting level: 200,000 '[' would exhaust the stack. The depth is measured
# on the raw bytes first, at C speed: strings are cut out (a bracket inside one is no nesting), only
# the brackets are kept, and each pass removes the innermost pairs, so a document nested deeper than
# the limit (or unbalanced) still has brackets after ``limit`` passes.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


class JSONTooDeep(ValueError):
    """The document nests deeper than allowed (or its brackets do not balance)."""


def nesting_within(raw: bytes, limit: int) -> bool:
    """True when no array or object in ``raw`` is nested more than ``limit`` levels deep."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True
    brackets = _STRING.sub(b"", raw).translate(_ONE_KIND, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # no pair left to remove: unbalanced
        brackets = shorter
    return not brackets


def loads_bounded(raw: bytes, max_depth: int) -> Any:
    """json.loads, once the nesting is known to be within ``max_depth``; ValueError otherwise."""
    if not nesting_within(raw, max_depth):
        raise JSONTooDeep(f"nested deeper than {max_depth} levels, or unbalanced brackets")
    return json.loads(raw)
