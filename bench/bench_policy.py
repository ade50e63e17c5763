"""The AgentPolicy the benchmarks' team namespaces need (Stockade is closed by default: an AgentRun in a
namespace no policy selects is refused). Permissive: the benchmarks measure the fence, not the ceilings."""

from __future__ import annotations

from typing import Any

LABEL = {"stockade.io/bench": "true"}  # on every team namespace a benchmark makes
POLICY: dict[str, Any] = {
    "apiVersion": "stockade.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "stockade-bench"},
    "spec": {
        "namespaceSelector": {"matchLabels": LABEL},
        "egress": {"cidrs": ["0.0.0.0/0", "::/0"], "hosts": ["*"], "protocols": ["TCP", "UDP"], "dns": True},
        "kubernetesAPI": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch"]}],
    },
}
PATH = "/apis/stockade.io/v1alpha1/agentpolicies/stockade-bench"
