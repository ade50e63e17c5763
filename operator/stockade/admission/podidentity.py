"""The agent's ServiceAccount for a pod that names none: the mutating webhook's second patch.

Pure. Most programs that start a helper pod leave ``serviceAccountName`` out. The API server's
ServiceAccount admission plugin runs before any mutating webhook and fills in ``default`` (and, since
the namespace's default ServiceAccount automounts, a ``kube-api-access-*`` token volume), so by the
time the webhook sees the pod "unset" and "default" look the same; they mean the same too: the
namespace's default identity. In a run namespace that is the agent's ServiceAccount, so both become
``agent``. Any other name is left alone, and the validating webhook refuses it.

The token then follows the agent's ServiceAccount, as for a pod that named it: without an API grant
(``grant.kubernetesAPI`` empty, the agent's ServiceAccount does not automount) the token volume the
plugin added for ``default`` is taken out again, unless the pod itself asked for a token
(``automountServiceAccountToken: true``, which the validating webhook then refuses as today).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stockade import labels
from stockade.api.models import Grant

DEFAULT = "default"
TOKEN_VOLUME_PREFIX = "kube-api-access-"  # the ServiceAccount admission plugin's name for the volume it adds


def _plugin_token_volume(volume: Mapping[str, Any]) -> bool:
    """The volume the ServiceAccount admission plugin adds: its name, a token and the cluster's CA."""
    if not str(volume.get("name") or "").startswith(TOKEN_VOLUME_PREFIX):
        return False
    sources = (volume.get("projected") or {}).get("sources") or []
    token = any((s.get("serviceAccountToken") or {}).get("path") == "token" for s in sources)
    ca = any((s.get("configMap") or {}).get("name") == "kube-root-ca.crt" for s in sources)
    return token and ca


def identity_patch(pod: Mapping[str, Any], grant: Grant) -> list[dict[str, Any]]:
    """JSON-patch operations that give a pod without a ServiceAccount of its own the agent's."""
    spec = pod.get("spec") or {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT
    if account != DEFAULT:
        return []  # the agent's already, or another one: the validating webhook judges it
    ops: list[dict[str, Any]] = [{"op": "add", "path": "/spec/serviceAccountName", "value": labels.SERVICE_ACCOUNT}]
    if "serviceAccount" in spec:  # the deprecated alias, which the API server keeps equal to the name
        ops.append({"op": "add", "path": "/spec/serviceAccount", "value": labels.SERVICE_ACCOUNT})
    if grant.kubernetesAPI or spec.get("automountServiceAccountToken") is True:
        return ops
    volumes = spec.get("volumes") or []
    doomed = {v.get("name") for v in volumes if _plugin_token_volume(v)}
    if not doomed:
        return ops
    ops.append({"op": "replace", "path": "/spec/volumes", "value": [v for v in volumes if v.get("name") not in doomed]})
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            mounts = container.get("volumeMounts")
            if mounts and any(m.get("name") in doomed for m in mounts):
                ops.append({"op": "replace", "path": f"/spec/{key}/{index}/volumeMounts",
                            "value": [m for m in mounts if m.get("name") not in doomed]})
    return ops
