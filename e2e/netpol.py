"""Ask an independent NetworkPolicy evaluator (cyclonus) what the live cluster's policies allow.

kwok runs no CNI, so nothing enforces NetworkPolicy here; cyclonus reads the policies from the API
server and answers, for each flow, whether Kubernetes semantics allow it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from .conftest import BIN, KUBECONFIG


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.244.0.10"

    def endpoint(self) -> dict[str, object]:
        return {"Internal": {"PodLabels": self.labels, "Namespace": self.namespace,
                             "NamespaceLabels": {"kubernetes.io/metadata.name": self.namespace}}, "IP": self.ip}


@dataclass(frozen=True)
class Flow:
    source: Pod | str
    destination: Pod | str
    port: int
    protocol: str = "TCP"

    def as_json(self) -> dict[str, object]:
        def end(e: Pod | str) -> dict[str, object]:
            return e.endpoint() if isinstance(e, Pod) else {"IP": e}

        return {"Source": end(self.source), "Destination": end(self.destination), "Protocol": self.protocol,
                "ResolvedPort": self.port}


_ALLOWED = re.compile(r"IS ALLOWED\?\s*\|\s*(TRUE|FALSE)")


def allowed(namespaces: list[str], flows: list[Flow]) -> list[bool]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as traffic:
        json.dump([f.as_json() for f in flows], traffic)
        traffic.flush()
        out = subprocess.run(
            [str(BIN / "cyclonus"), "analyze", "--mode", "query-traffic", "--traffic-path", traffic.name,
             *[arg for ns in namespaces for arg in ("-n", ns)]],
            capture_output=True, text=True, timeout=60, env={"KUBECONFIG": KUBECONFIG, "HOME": "/tmp"}, check=True,
        )
    answers = [m == "TRUE" for m in _ALLOWED.findall(out.stdout)]
    assert len(answers) == len(flows), out.stdout + out.stderr
    return answers
