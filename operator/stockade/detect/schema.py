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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    namespace: str = Field(min_length=1, max_length=63, description="The pod's namespace (the run namespace).")
    pod: str = Field(min_length=1, max_length=253)
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{1,62}$",
                      description="Violation kind, CamelCase: UngrantedEgress, Connection, CryptoMiner, ...")
    severity: Literal["low", "medium", "high", "critical"] = "high"
    detail: str = Field(min_length=1, max_length=1024, description="What happened, for a human.")
    time: str | None = Field(default=None, max_length=64, description="When the detector saw it (RFC 3339).")
    destination: Destination | None = None
    evidence: dict[str, Any] | None = Field(default=None, description="Anything else; stored bounded.")


def json_schema() -> dict[str, Any]:
    return Signal.model_json_schema()
