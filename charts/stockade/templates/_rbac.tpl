{{/* Generated from operator/stockade/rbac.py by `make manifests`. Do not edit by hand. */}}
{{- define "stockade.rules" -}}
# stockade.handlers:agentrun_event, stockade.app:App._start_store, stockade.handlers:release_requested, stockade.lifecycle:RunLifecycle.sweep
- apiGroups: ["stockade.io"]
  resources: ["agentruns"]
  verbs: ["list", "watch"]
# stockade.kube:write_status, stockade.detect.respond:Responder._record, stockade.detect.release:ReleaseMixin.release, stockade.admission.record:Recorder._write
- apiGroups: ["stockade.io"]
  resources: ["agentruns"]
  verbs: ["get"]
# stockade.lifecycle:RunLifecycle.add_finalizer, stockade.lifecycle:RunLifecycle.finalize, stockade.detect.release:ReleaseMixin._release
- apiGroups: ["stockade.io"]
  resources: ["agentruns"]
  verbs: ["patch"]
# stockade.kube:write_status, stockade.reconcile:Reconciler._write_status, stockade.detect.respond:Responder._record, stockade.detect.release:ReleaseMixin.release, stockade.admission.record:Recorder._write
- apiGroups: ["stockade.io"]
  resources: ["agentruns/status"]
  verbs: ["patch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.lifecycle:RunLifecycle.sweep, stockade.watch:WatchLayer.prime, stockade.admission.grant_policy:GrantPolicy.prime_index
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# stockade.admission.grant_policy:GrantPolicy._ensure_namespace, stockade.lifecycle:RunLifecycle.create_namespace
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
# stockade.handlers:agentpolicy_indexed, stockade.admission.grant_policy:GrantPolicy.prime_index, stockade.handlers:policy_event
- apiGroups: ["stockade.io"]
  resources: ["agentpolicies"]
  verbs: ["list", "watch"]
# stockade.kube:write_status, stockade.policy_status:PolicyStatusWriter._write
- apiGroups: ["stockade.io"]
  resources: ["agentpolicies/status"]
  verbs: ["patch"]
# stockade.reconcile:Reconciler._apply, stockade.lifecycle:RunLifecycle.create_namespace
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["create", "patch"]
# stockade.lifecycle:RunLifecycle.finalize, stockade.lifecycle:RunLifecycle.create_namespace, stockade.lifecycle:RunLifecycle.remove_orphan, stockade.lifecycle:RunLifecycle.sweep
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay, stockade.budget_watch:BudgetWatch.start
- apiGroups: [""]
  resources: ["resourcequotas"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply
- apiGroups: [""]
  resources: ["resourcequotas"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune
- apiGroups: [""]
  resources: ["resourcequotas"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: [""]
  resources: ["limitranges"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply
- apiGroups: [""]
  resources: ["limitranges"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune
- apiGroups: [""]
  resources: ["limitranges"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply, stockade.detect.rungs:RungsMixin._apply_policy
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune, stockade.detect.release:ReleaseMixin._release
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["list", "watch"]
# stockade.reconcile:Reconciler._apply
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["create", "patch"]
# stockade.reconcile:Reconciler._prune, stockade.detect.rungs:RungsMixin._act
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["delete"]
# stockade.reconcile:Reconciler._apply
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles"]
  verbs: ["escalate", "bind"]
  resourceNames: ["stockade-agent"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# stockade.detect.server:SignalServer._owner
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
# stockade.workload:ensure_workload
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create"]
# stockade.detect.rungs:RungsMixin._label, stockade.detect.release:ReleaseMixin._unlabel
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["patch"]
# stockade.workload:stop_workload, stockade.detect.rungs:RungsMixin._evict
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch"]
# stockade.workload:ensure_workload
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create"]
# stockade.detect.rungs:RungsMixin._suspend
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["patch"]
# stockade.workload:stop_workload
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["delete"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["apps"]
  resources: ["daemonsets"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.watch:WatchLayer.prime, stockade.watch:WatchLayer.replay
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list", "watch"]
# stockade.events:EventPoster.post, kopf._cogs.clients.events:post_event
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# stockade.detect.respond:Responder._pod_events
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
# stockade.watch:KindWatch.run, stockade.admission.guard:AdmissionGuard.start
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.admission.guard:AdmissionGuard.start
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.admission.guard:AdmissionGuard.start
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingadmissionpolicies"]
  verbs: ["list", "watch"]
# stockade.watch:KindWatch.run, stockade.admission.guard:AdmissionGuard.start
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingadmissionpolicybindings"]
  verbs: ["list", "watch"]
{{- if .Values.webhook.enabled }}
# stockade.admission.webhook:apply
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["patch"]
  resourceNames: ["{{ include "stockade.fullname" . }}"]
{{- end }}
{{- if .Values.webhook.enabled }}
# stockade.admission.webhook:apply
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations"]
  verbs: ["patch"]
  resourceNames: ["{{ include "stockade.fullname" . }}"]
{{- end }}
# stockade.admission.reviews:Reviews._may_release, stockade.admission.grant_policy:GrantPolicy._held
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
# kopf._core.reactor.observation:resource_observer
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.peering.enabled }}
# kopf._core.engines.peering:process_peering_event, stockade.cli_run:other_operator
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch"]
{{- end }}
{{- if .Values.peering.enabled }}
# stockade.leadership:Leadership._poll_once
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get"]
  resourceNames: ["{{ include "stockade.fullname" . }}"]
{{- end }}
{{- if .Values.peering.enabled }}
# kopf._core.engines.peering:touch, kopf._core.engines.peering:clean
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["patch"]
  resourceNames: ["{{ include "stockade.fullname" . }}"]
{{- end }}
{{- end }}
