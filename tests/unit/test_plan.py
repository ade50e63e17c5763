from __future__ import annotations

import ipaddress

import pytest

from stockade import labels
from stockade.plan import PlanSettings, RunRef, build, parse_duration

from .fixtures import container, spec

RUN = RunRef("ml-research", "rome-42")
RESOLVED = {"api.example.com": ["203.0.113.7", "2001:db8::7"]}


def by_kind(plan, kind, name=None):
    found = [o for o in plan.guardrails if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def test_namespace_is_first_and_carries_the_contract_labels():
    plan = build(RUN, spec(), RESOLVED, PlanSettings())
    ns = plan.guardrails[0]
    assert ns["kind"] == "Namespace"
    assert ns["metadata"]["name"] == "ml-research-rome-42"
    assert ns["metadata"]["labels"][labels.AGENTRUN] == "rome-42"
    assert ns["metadata"]["labels"][labels.AGENTRUN_NAMESPACE] == "ml-research"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["metadata"]["labels"]["stockade.io/enforcement"] == "enforce"
    audit = build(RUN, spec(enforcement="audit"), RESOLVED, PlanSettings()).guardrails[0]
    assert audit["metadata"]["labels"]["stockade.io/enforcement"] == "audit"


def test_every_namespaced_guardrail_lives_in_the_run_namespace():
    plan = build(RUN, spec(grant_kubernetesAPI=[{"apiGroups": [""], "resources": ["configmaps"],
                                                  "verbs": ["get"]}]), RESOLVED, PlanSettings())
    for obj in [*plan.guardrails[1:], plan.workload]:
        assert obj["metadata"]["namespace"] == "ml-research-rome-42", obj["kind"]
        assert obj["metadata"]["labels"][labels.AGENTRUN] == "rome-42"


def test_quota_totals_gpus_and_zeros():
    quota = by_kind(build(RUN, spec(), RESOLVED, PlanSettings()), "ResourceQuota")["spec"]["hard"]
    assert quota["requests.cpu"] == quota["limits.cpu"] == "8"
    assert quota["requests.memory"] == quota["limits.memory"] == "32Gi"
    assert quota["requests.ephemeral-storage"] == "20Gi"
    assert quota["requests.nvidia.com/gpu"] == "1"
    assert quota["requests.amd.com/gpu"] == "0"
    assert quota["pods"] == "2"
    for key in ("services.loadbalancers", "services.nodeports", "persistentvolumeclaims", "requests.storage",
                "count/deployments.apps", "count/jobs.batch", "count/cronjobs.batch", "count/daemonsets.apps"):
        assert quota[key] == "0", key


def test_quota_without_gpu_grant_zeroes_gpus_and_counts_a_job():
    quota = by_kind(build(RUN, spec(grant_gpu=0, grant_gpuResource=None, workload="Job",
                                    template={"spec": {"containers": [container()]}}), {}, PlanSettings()),
                    "ResourceQuota")["spec"]["hard"]
    assert quota["requests.nvidia.com/gpu"] == "0"
    assert quota["count/jobs.batch"] == "1"


def test_mig_resource_quota():
    mig = "nvidia.com/mig-1g.10gb"
    tmpl = {"spec": {"containers": [container(resources={"limits": {mig: "1"}})]}}
    plan = build(RUN, spec(grant_gpuResource=mig, template=tmpl), {}, PlanSettings())
    quota = by_kind(plan, "ResourceQuota")["spec"]["hard"]
    assert quota[f"requests.{mig}"] == "1"
    assert quota["requests.nvidia.com/gpu"] == "0"
    assert plan.refusals == []


def test_limit_range_defaults_never_exceed_a_small_grant():
    lr = by_kind(build(RUN, spec(grant_cpu="500m", grant_memory="512Mi",
                                 template={"spec": {"containers": [container()]}}, grant_gpu=0,
                                 grant_gpuResource=None), {}, PlanSettings()), "LimitRange")
    container_limits = lr["spec"]["limits"][0]
    assert container_limits["type"] == "Container"
    assert container_limits["default"]["cpu"] == "500m"
    assert container_limits["default"]["memory"] == "512Mi"
    assert container_limits["defaultRequest"]["cpu"] == "100m"
    assert container_limits["max"]["cpu"] == "500m"


def test_network_policies_deny_all_then_allow_exactly_the_grant():
    plan = build(RUN, spec(), RESOLVED, PlanSettings())
    deny = by_kind(plan, "NetworkPolicy", labels.POLICY_DENY_ALL)["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress = by_kind(plan, "NetworkPolicy", labels.POLICY_EGRESS)["spec"]
    assert egress["policyTypes"] == ["Egress"]
    cidrs = [peer["ipBlock"]["cidr"] for rule in egress["egress"] for peer in rule["to"]]
    assert cidrs == ["10.42.0.0/16", "203.0.113.7/32", "2001:db8::7/128"]
    for rule in egress["egress"]:
        assert rule["to"], "an empty 'to' would allow every destination"
        assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    dns = by_kind(plan, "NetworkPolicy", labels.POLICY_DNS)["spec"]
    assert dns["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"}


def test_allow_policies_never_select_a_quarantined_pod():
    plan = build(RUN, spec(), RESOLVED, PlanSettings())
    for name in (labels.POLICY_EGRESS, labels.POLICY_DNS):
        selector = by_kind(plan, "NetworkPolicy", name)["spec"]["podSelector"]
        assert {"key": labels.QUARANTINED, "operator": "DoesNotExist"} in selector["matchExpressions"]


def test_unresolved_host_allows_nothing():
    egress = by_kind(build(RUN, spec(), {}, PlanSettings()), "NetworkPolicy", labels.POLICY_EGRESS)["spec"]
    assert [peer["ipBlock"]["cidr"] for rule in egress["egress"] for peer in rule["to"]] == ["10.42.0.0/16"]


def test_ipv6_cidr_grant_is_normalised():
    egress_rules = [{"cidr": "2001:DB8:0::/32", "ports": [443, 8443], "protocol": "TCP"}]
    egress = by_kind(build(RUN, spec(grant_egress=egress_rules), {}, PlanSettings()), "NetworkPolicy",
                     labels.POLICY_EGRESS)["spec"]
    assert egress["egress"][0]["to"] == [{"ipBlock": {"cidr": "2001:db8::/32"}}]
    assert ipaddress.ip_network(egress["egress"][0]["to"][0]["ipBlock"]["cidr"]).version == 6


def test_no_dns_and_no_api_grant_means_no_such_objects():
    plan = build(RUN, spec(grant_dns=False), RESOLVED, PlanSettings())
    kinds = {(o["kind"], o["metadata"]["name"]) for o in plan.guardrails}
    assert ("NetworkPolicy", labels.POLICY_DNS) not in kinds
    assert not any(kind in ("Role", "RoleBinding") for kind, _ in kinds)
    sa = by_kind(plan, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert plan.workload["spec"]["automountServiceAccountToken"] is False


def test_api_grant_becomes_exactly_that_role():
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"], "resourceNames": ["cfg"]}]
    plan = build(RUN, spec(grant_kubernetesAPI=rules), RESOLVED, PlanSettings())
    assert by_kind(plan, "Role")["rules"] == rules
    binding = by_kind(plan, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "agent", "namespace": "ml-research-rome-42"}]
    assert by_kind(plan, "ServiceAccount")["automountServiceAccountToken"] is True


def test_workload_is_hardened_and_tolerates_the_gpu_taint():
    pod = build(RUN, spec(), RESOLVED, PlanSettings()).workload
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "rome-42"
    body = pod["spec"]
    assert body["serviceAccountName"] == "agent"
    assert body["securityContext"]["runAsNonRoot"] is True
    assert body["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    agent = body["containers"][0]
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in body["tolerations"]
    assert body["activeDeadlineSeconds"] == 4 * 3600
    assert pod["metadata"]["labels"]["team"] == "research"


def test_container_without_gpu_gets_gpus_hidden():
    tmpl = {"spec": {"containers": [container(resources={"limits": {"nvidia.com/gpu": "1"}}),
                                    container(name="sidecar")]}}
    pod = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings()).workload
    gpu, sidecar = pod["spec"]["containers"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in sidecar["env"]
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in gpu.get("env", [])}


def test_request_without_limit_gets_limit_equal_to_request():
    tmpl = {"spec": {"containers": [container(resources={"requests": {"cpu": "2"}})]}}
    pod = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings()).workload
    assert pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"


def test_job_workload():
    job = build(RUN, spec(workload="Job"), RESOLVED, PlanSettings()).workload
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ({"spec": {"containers": [container(resources={"limits": {"cpu": "9"}})]}}, "ResourceExceedsGrant"),
        ({"spec": {"containers": [container(resources={"limits": {"nvidia.com/gpu": "2"}})]}},
         "ResourceExceedsGrant"),
        ({"spec": {"containers": [container(resources={"limits": {"amd.com/gpu": "1"}})]}}, "GPUNotGranted"),
        ({"spec": {"hostNetwork": True, "containers": [container()]}}, "HostAccess"),
        ({"spec": {"containers": [container(securityContext={"privileged": True})]}}, "PrivilegeNotAllowed"),
        ({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [container()]}},
         "VolumeNotAllowed"),
        ({"spec": {"runtimeClassName": "nvidia", "containers": [container()]}}, "RuntimeClassNotGranted"),
    ],
)
def test_template_beyond_the_grant_is_refused_with_no_workload(template, kind):
    plan = build(RUN, spec(template=template), RESOLVED, PlanSettings())
    assert plan.workload is None
    assert kind in {f.kind for f in plan.refusals}
    assert all(f.field.startswith("spec.template.spec") for f in plan.refusals)


def test_refusal_names_field_grant_and_remedy():
    tmpl = {"spec": {"containers": [container(resources={"limits": {"cpu": "9"}})]}}
    finding = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings()).refusals[0]
    text = finding.text()
    assert "limits.cpu" in text and "8" in text and "spec.grant.cpu" in text


@pytest.mark.parametrize(("text", "seconds"), [("4h", 14400), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "4", "h", "1d", "-1h", "1h 2m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_a_frozen_run_loses_its_api_access_but_keeps_its_fence():
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    plan = build(RUN, spec(grant_kubernetesAPI=rules), RESOLVED, PlanSettings(), frozen=True)
    kinds = {o["kind"] for o in plan.guardrails}
    assert "Role" not in kinds and "RoleBinding" not in kinds
    assert {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy"} <= kinds
