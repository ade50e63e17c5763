"""Sample AgentRun specs for the unit tests."""

from __future__ import annotations

import copy
from typing import Any

from stockade.api.models import AgentRunSpec

GPU_RUN: dict[str, Any] = {
    "template": {
        "metadata": {"labels": {"team": "research"}},
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": "registry.example/agents/rome:1.4",
                    "resources": {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}},
                }
            ]
        },
    },
    "grant": {
        "cpu": "8",
        "memory": "32Gi",
        "gpu": 1,
        "gpuResource": "nvidia.com/gpu",
        "ephemeralStorage": "20Gi",
        "pods": 2,
        "egress": [
            {"cidr": "10.42.0.0/16", "ports": [443]},
            {"host": "api.example.com", "ports": [443]},
        ],
        "dns": True,
        "kubernetesAPI": [],
        "duration": "4h",
    },
    "enforcement": "enforce",
    "response": ["isolate", "evict"],
}


def spec(**changes: Any) -> AgentRunSpec:
    """GPU_RUN with top-level or grant-level changes (grant_<field>=value)."""
    raw = copy.deepcopy(GPU_RUN)
    for key, value in changes.items():
        if key.startswith("grant_"):
            raw["grant"][key[len("grant_"):]] = value
        else:
            raw[key] = value
    return AgentRunSpec.model_validate(raw)


def container(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "agent", "image": "agent:1"}
    base.update(fields)
    return base
