"""The local cluster is a real control plane: scheduler, quota, PodSecurity, namespace and GC controllers.

Each of these fails against a fake API: the scheduler must bind, the quota controller must fill in
status, the API server must refuse, the controllers must delete.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BIN, KUBECONFIG, ROOT, KubectlError, create, established, get, kubectl, wait_established, wait_for


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def gpu_pod(name: str, namespace: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "cuda:12",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    }


def test_gpu_pod_is_scheduled_to_a_gpu_node_and_runs(namespace: str) -> None:
    create(gpu_pod("one-gpu", namespace, 1))
    pod = wait_for(lambda: (p := get("pod", "one-gpu", namespace)) and p["status"].get("phase") == "Running" and p,
                   timeout=30, what="the GPU pod to run")
    node = get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_pod_asking_for_nine_gpus_stays_pending_unschedulable(namespace: str) -> None:
    create(gpu_pod("nine-gpus", namespace, 9))

    def unschedulable() -> dict | None:
        pod = get("pod", "nine-gpus", namespace)
        for cond in pod["status"].get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "False" and cond["reason"] == "Unschedulable":
                return pod
        return None

    pod = wait_for(unschedulable, timeout=30, what="the scheduler to mark the pod unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


def test_quota_status_is_filled_and_enforced(namespace: str) -> None:
    create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": namespace},
            "spec": {"hard": {"pods": "1", "requests.nvidia.com/gpu": "1"}}})
    quota = wait_for(lambda: (q := get("resourcequota", "q", namespace)) and q.get("status", {}).get("hard") and q,
                     timeout=30, what="the quota controller to fill status.hard")
    assert quota["status"]["hard"]["pods"] == "1"
    create(gpu_pod("first", namespace, 1))
    with pytest.raises(KubectlError, match="exceeded quota"):
        create(gpu_pod("second", namespace, 1))


def test_restricted_namespace_refuses_a_privileged_pod(namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]}}
    with pytest.raises(KubectlError, match="violates PodSecurity \"restricted"):
        create(pod)


def test_namespace_deletion_completes_and_owned_objects_are_collected() -> None:
    name = f"gc-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("create", "configmap", "owner", "-n", name)
    owner = get("configmap", "owner", name)
    create({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "owned", "namespace": name, "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}})
    kubectl("delete", "configmap", "owner", "-n", name)
    wait_for(lambda: get("configmap", "owned", name) is None, timeout=30, what="garbage collection")
    kubectl("delete", "namespace", name, "--wait=false")
    wait_for(lambda: get("namespace", name) is None, timeout=60, what="the namespace controller")


def _listening_inodes() -> dict[int, str]:
    """Listening TCP sockets (inode -> local address) from /proc/net/tcp and tcp6."""
    found: dict[int, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = str(ipaddress.ip_address(words if v6 else raw[::-1]))
    return found


def test_the_control_plane_listens_on_loopback_only() -> None:
    cluster = Path(KUBECONFIG).name.removesuffix(".kubeconfig")
    sockets = _listening_inodes()
    seen: list[tuple[str, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if f"clusters/{cluster}/" not in cmdline:
                continue
            inodes = [int(link.readlink().name[8:-1]) for link in (proc / "fd").iterdir()
                      if link.readlink().name.startswith("socket:[")]
        except OSError:
            continue
        seen += [(cmdline.split()[0].rsplit("/", 1)[-1], sockets[i]) for i in inodes if i in sockets]
    assert {name for name, _ in seen} >= {"kube-apiserver", "etcd"}, seen
    exposed = [(name, addr) for name, addr in seen if not ipaddress.ip_address(addr).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


# An object that looks like a CRD right after its apply: `status.conditions: null` (the apiextensions controller
# has not named it yet). The kind is ours and throwaway, so nothing but the test ever sets the condition.
LATE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "lateconditions.wait.stockade.test"},
    "spec": {"group": "wait.stockade.test", "scope": "Cluster",
             "names": {"plural": "lateconditions", "singular": "latecondition", "kind": "LateCondition"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"status": {"type": "object", "properties": {"conditions": {
                     "type": "array", "nullable": True, "items": {"type": "object", "properties": {
                         "type": {"type": "string"}, "status": {"type": "string"}}}}}}}}}}]},
}


@pytest.fixture
def late_object() -> Iterator[str]:
    create(LATE_CRD)
    established("crd/" + LATE_CRD["metadata"]["name"])
    name = f"late-{uuid.uuid4().hex[:6]}"
    create({"apiVersion": "wait.stockade.test/v1", "kind": "LateCondition", "metadata": {"name": name},
            "status": {"conditions": None}})
    yield f"latecondition/{name}"
    kubectl("delete", "crd", LATE_CRD["metadata"]["name"], "--wait=false", check=False)


def test_make_runs_crd_wait_tolerates_the_empty_status(late_object: str) -> None:
    """Issue 11: `kubectl wait --for=condition=Established` right after the CRD apply failed now and then with
    ".status.conditions accessor error". `make run` and `make bench` wait through e2e/cluster.sh established."""
    assert get(late_object)["status"] == {"conditions": None}  # what a fresh CRD looks like
    once = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", KUBECONFIG, "wait", "--for=condition=Established",
                           late_object, "--timeout=5s"], capture_output=True, text=True, check=False)
    assert once.returncode != 0 and "accessor error" in once.stderr, once.stderr  # the failure make run had
    waiter = subprocess.Popen([str(ROOT / "e2e/cluster.sh"), "established", str(BIN / "kubectl"), late_object],
                              env={**os.environ, "KUBECONFIG": KUBECONFIG}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert waiter.poll() is None, waiter.communicate()  # still waiting, not failed at once
    kubectl("patch", late_object, "--type=merge", "-p",
            json.dumps({"status": {"conditions": [{"type": "Established", "status": "True"}]}}))
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err


def test_the_crd_wait_gives_up_with_kubectls_error(late_object: str) -> None:
    done = wait_established(late_object, tries=2)
    assert done.returncode != 0 and "accessor error" in done.stderr, done.stderr
