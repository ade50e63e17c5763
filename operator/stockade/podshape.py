"""The shape of a pod template: one table, the CRD's schema for ``spec.template`` and the operator's check.

A PodTemplateSpec stays open (unknown fields are kept, for the grant check to refuse by name), but
every field that Stockade reads or fills in is typed here. The CRD carries this as its OpenAPI
schema, so ``volumes: 5`` or ``dnsPolicy: []`` is refused by the API server with the field path;
``shape_findings`` applies the same table in the operator (a CRD installed before this table, or a
template stored before it), so a wrong type is a finding, never an exception.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from stockade import template_docs

MAX_INT32 = 2**31 - 1
_OPEN = {"x-kubernetes-preserve-unknown-fields": True}

STRING: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
INT: dict[str, Any] = {"type": "integer"}
INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STRING}
QUANTITY_MAP: dict[str, Any] = {"type": "object", "additionalProperties": INT_OR_STRING}


def obj(**properties: dict[str, Any]) -> dict[str, Any]:
    """An object with these typed fields; other fields are kept as they are (template_docs describes them)."""
    return {"type": "object", **_OPEN, "properties": properties}


def array(items: dict[str, Any], max_items: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if max_items is not None:
        out["maxItems"] = max_items
    return out


def integer(minimum: int, maximum: int = MAX_INT32) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


STRINGS = array(STRING)
SECCOMP = obj(type=STRING, localhostProfile=STRING)
SELINUX = obj(type=STRING, user=STRING, role=STRING, level=STRING)
APPARMOR = obj(type=STRING, localhostProfile=STRING)
WINDOWS = obj(hostProcess=BOOL, runAsUserName=STRING)
USER_ID = integer(0, 2**63 - 1)
POD_SECURITY = obj(
    runAsUser=USER_ID, runAsGroup=USER_ID, runAsNonRoot=BOOL, fsGroup=USER_ID, supplementalGroups=array(USER_ID),
    seccompProfile=SECCOMP, seLinuxOptions=SELINUX, appArmorProfile=APPARMOR, windowsOptions=WINDOWS,
    sysctls=array(obj(name=STRING, value=STRING)),
)
CONTAINER_SECURITY = obj(
    runAsUser=USER_ID, runAsGroup=USER_ID, runAsNonRoot=BOOL, privileged=BOOL, allowPrivilegeEscalation=BOOL,
    readOnlyRootFilesystem=BOOL, procMount=STRING, capabilities=obj(add=STRINGS, drop=STRINGS),
    seccompProfile=SECCOMP, seLinuxOptions=SELINUX, appArmorProfile=APPARMOR, windowsOptions=WINDOWS,
)
CONTAINER = obj(
    name=STRING, image=STRING, command=STRINGS, args=STRINGS, workingDir=STRING, imagePullPolicy=STRING,
    env=array(obj(name=STRING, value=STRING, valueFrom={"type": "object", **_OPEN})),
    envFrom=array(obj(prefix=STRING)),
    ports=array(obj(containerPort=integer(1, 65535), hostPort=integer(0, 65535), protocol=STRING, name=STRING)),
    resources=obj(limits=QUANTITY_MAP, requests=QUANTITY_MAP, claims=array(obj(name=STRING))),
    volumeMounts=array(obj(name=STRING, mountPath=STRING, readOnly=BOOL)),
    securityContext=CONTAINER_SECURITY, stdin=BOOL, tty=BOOL,
)
TOKEN_SOURCE = obj(audience=STRING, expirationSeconds=integer(600), path=STRING)
VOLUME = obj(name=STRING, projected=obj(sources=array(obj(serviceAccountToken=TOKEN_SOURCE))))
POD_SPEC = obj(
    containers=array(CONTAINER), initContainers=array(CONTAINER), volumes=array(VOLUME),
    restartPolicy=STRING, dnsPolicy=STRING, schedulerName=STRING, priority=INT, preemptionPolicy=STRING,
    priorityClassName=STRING, nodeName=STRING, nodeSelector=STRING_MAP, runtimeClassName=STRING,
    serviceAccountName=STRING, serviceAccount=STRING, automountServiceAccountToken=BOOL,
    hostNetwork=BOOL, hostPID=BOOL, hostIPC=BOOL, hostUsers=BOOL, shareProcessNamespace=BOOL,
    securityContext=POD_SECURITY, tolerations=array(obj(key=STRING, operator=STRING, value=STRING, effect=STRING)),
    activeDeadlineSeconds=integer(1), terminationGracePeriodSeconds=integer(0, 2**63 - 1),
    resourceClaims=array({"type": "object", **_OPEN}), enableServiceLinks=BOOL, hostname=STRING, subdomain=STRING,
)
POD_METADATA = obj(labels=STRING_MAP, annotations=STRING_MAP)


def template_schema() -> dict[str, Any]:
    """The CRD's OpenAPI schema for ``spec.template`` (a structural schema: every object typed)."""
    return copy.deepcopy(_template())


@functools.cache
def _template() -> dict[str, Any]:
    properties = POD_SPEC["properties"]
    spec = {**POD_SPEC, "required": ["containers"],
            "properties": {**properties, "containers": {**properties["containers"], "minItems": 1, "maxItems": 32},
                           "initContainers": {**properties["initContainers"], "maxItems": 32}}}
    return template_docs.describe({"type": "object", **_OPEN, "required": ["spec"],
                                   "properties": {"metadata": POD_METADATA, "spec": spec}})


# Mapping, not dict: the webhook gets kopf's read-only views of the request's objects.
_PY_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,),
                                          "object": (Mapping,), "array": (list, tuple)}
_SHOWN = {"string": "a string", "boolean": "true or false", "integer": "an integer", "object": "an object",
          "array": "a list"}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer" and isinstance(value, bool):
        return False
    return isinstance(value, _PY_TYPES[kind])


def shape_findings(value: Any, schema: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """(field, what is wrong) for every value that does not fit the schema; empty: it fits."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str | int) and not isinstance(value, bool)
        return [] if ok else [(path, f"must be a quantity (a string or an integer), not {_show(value)}")]
    kind = schema.get("type")
    if kind is None:
        return []
    if not _type_ok(value, kind):
        return [(path or "(the object)", f"must be {_SHOWN[kind]}, not {_show(value)}")]
    out: list[tuple[str, str]] = []
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            out.append((path, f"must be between {low} and {high}"))
    elif kind == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append((path, f"must have at most {schema['maxItems']} items"))
        for index, item in enumerate(value):
            out += shape_findings(item, schema["items"], f"{path}[{index}]")
    elif kind == "object":
        for key, prop in (schema.get("properties") or {}).items():
            if key in value and value[key] is not None:
                out += shape_findings(value[key], prop, _join(path, key))
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, item in value.items():
                out += shape_findings(item, extra, f"{path}[{key}]")
        for key in schema.get("required") or []:
            if key not in value:
                out.append((_join(path, key), "is required"))
    return out


def template_findings(template: Any, path: str = "spec.template") -> list[tuple[str, str]]:
    return shape_findings(template, _template(), path)


def pod_findings(pod: Any, path: str = "") -> list[tuple[str, str]]:
    """The same table applied to a pod ({metadata, spec}) or a template of one."""
    return shape_findings(pod, obj(metadata=POD_METADATA, spec=POD_SPEC), path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
