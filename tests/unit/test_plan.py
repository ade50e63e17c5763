from __future__ import annotations

import copy
import ipaddress

import pytest

from stockade import labels
from stockade.admission.policy import Request, Run, decide
from stockade.inputcheck import spec_problem
from stockade.plan import PlanSettings, RunRef, build, parse_duration, workload

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


# Issue 14 -------------------------------------------------------------------------------------------
def test_a_mig_grant_tolerates_the_gpu_taint_its_nodes_carry():
    mig = "nvidia.com/mig-1g.10gb"
    tmpl = {"spec": {"containers": [container(resources={"limits": {mig: "1"}})]}}
    body = build(RUN, spec(grant_gpuResource=mig, template=tmpl), {}, PlanSettings()).workload["spec"]
    keys = [t["key"] for t in body["tolerations"]]
    assert keys == [mig, "nvidia.com/gpu"], keys


@pytest.mark.parametrize("annotation", ["cdi.k8s.io/gpu", "io.kubernetes.cri-o.Devices"])
def test_the_operator_refuses_device_annotations_on_its_own_workload(annotation):
    tmpl = {"metadata": {"annotations": {annotation: "nvidia.com/gpu=all"}},
            "spec": {"containers": [container(resources={"limits": {"nvidia.com/gpu": "1"}})]}}
    plan = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings())
    assert plan.workload is None
    assert [(f.kind, f.field) for f in plan.refusals] == [
        ("GPUNotGranted", f"spec.template.metadata.annotations[{annotation}]")]


def _token_volume(audience=None):
    token = {"path": "token", **({"audience": audience} if audience else {})}
    return {"name": "t", "projected": {"sources": [{"serviceAccountToken": token}]}}


@pytest.mark.parametrize(
    ("rules", "audience", "kind"),
    [([], None, "APIAccessNotGranted"), ([], "https://vault.example", "APIAccessNotGranted"),
     ([{"resources": ["configmaps"], "verbs": ["get"]}], "https://vault.example", "TokenNotGranted"),
     ([{"resources": ["configmaps"], "verbs": ["get"]}], None, None),
     ([{"resources": ["configmaps"], "verbs": ["get"]}], "https://kubernetes.default.svc.cluster.local", None)],
)
def test_no_api_grant_no_token_and_then_only_for_the_api_server(rules, audience, kind):
    tmpl = {"spec": {"volumes": [_token_volume(audience)], "containers": [container()]}}
    plan = build(RUN, spec(grant_kubernetesAPI=rules, grant_gpu=0, grant_gpuResource=None, template=tmpl),
                 {}, PlanSettings())
    kinds = [f.kind for f in plan.refusals]
    assert kinds == ([kind] if kind else []), plan.refusals
    assert (plan.workload is None) == bool(kind)


@pytest.mark.parametrize(
    ("template_spec", "field"),
    [({"volumes": 5}, "spec.template.spec.volumes"), ({"dnsPolicy": []}, "spec.template.spec.dnsPolicy"),
     ({"securityContext": "x"}, "spec.template.spec.securityContext"),
     ({"containers": [{"name": "a", "image": "i", "env": [1]}]}, "spec.template.spec.containers[0].env[0]"),
     ({"containers": [{"name": "a", "image": "i", "resources": {"limits": {"cpu": True}}}]},
      "spec.template.spec.containers[0].resources.limits[cpu]"),
     ({"containers": ["agent"]}, "spec.template.spec.containers[0]"),
     ({"activeDeadlineSeconds": 0}, "spec.template.spec.activeDeadlineSeconds")],
)
def test_a_template_of_the_wrong_shape_is_a_finding_not_an_exception(template_spec, field):
    tmpl = {"spec": {"containers": [container()], **template_spec}}
    plan = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings())
    assert plan.workload is None
    assert field in [f.field for f in plan.refusals if f.kind == "InvalidField"], plan.refusals
    problem = spec_problem(spec(template=tmpl))
    assert problem is not None and problem.startswith("InvalidTemplate: ") and field in problem


@pytest.mark.parametrize(
    ("security", "field"),
    [({"runAsNonRoot": False}, "spec.template.spec.securityContext.runAsNonRoot"),
     ({"runAsUser": 0}, "spec.template.spec.securityContext.runAsUser")],
)
def test_podsecurity_restricted_is_checked_before_the_api_server_refuses_it(security, field):
    tmpl = {"spec": {"securityContext": security, "containers": [container()]}}
    plan = build(RUN, spec(template=tmpl), RESOLVED, PlanSettings())
    assert field in [f.field for f in plan.refusals if f.kind == "PrivilegeNotAllowed"]


TEMPLATES_FOR_BOTH = [
    {"metadata": {"annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=0"}}, "spec": {"containers": [container()]}},
    {"spec": {"containers": [container(securityContext={"privileged": True})]}},
    {"spec": {"hostPID": True, "containers": [container()]}},
    {"spec": {"volumes": [_token_volume("https://vault.example")], "containers": [container()]}},
    {"spec": {"securityContext": {"runAsNonRoot": False}, "containers": [container()]}},
    {"spec": {"containers": [container(resources={"limits": {"cpu": "9"}})]}},
    {"spec": {"containers": [container(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])]}},
    {"spec": {"containers": [container()]}},
]


@pytest.mark.parametrize("template", TEMPLATES_FOR_BOTH)
def test_the_operator_and_the_webhook_refuse_the_same_pods(template):
    agentrun = spec(grant_gpu=0, grant_gpuResource=None, template=template)
    plan = build(RUN, agentrun, RESOLVED, PlanSettings())
    operator_says = {(f.kind, f.field.removeprefix("spec.template.")) for f in plan.refusals}
    pod = copy.deepcopy(plan.workload) if plan.workload else workload(RUN, agentrun)
    request = Request("CREATE", "", "pods", "Pod", RUN.run_namespace, "p", pod, None,
                      f"system:serviceaccount:{RUN.run_namespace}:agent")
    decision = decide(request, Run(RUN.namespace, RUN.name, agentrun), is_operator=False)
    webhook_says = {(f.kind, f.field) for f in decision.findings}
    assert operator_says == webhook_says
