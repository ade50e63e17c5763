{{/* Names and labels shared by every template. */}}

{{- define "stockade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: "stockade" for a release called stockade, else <release>-stockade. */}}
{{- define "stockade.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stockade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stockade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stockade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stockade.labels" -}}
helm.sh/chart: {{ include "stockade.chart" . }}
{{ include "stockade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: stockade
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "stockade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stockade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The username the operator's API calls carry: the admission policy lets only it change fences. */}}
{{- define "stockade.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "stockade.serviceAccountName" .) }}
{{- end }}

{{- define "stockade.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "stockade.webhookService" -}}
{{- printf "%s-webhook" (include "stockade.fullname" .) }}
{{- end }}

{{- define "stockade.webhookCertSecret" -}}
{{- .Values.webhook.tls.secretName | default (printf "%s-webhook-tls" (include "stockade.fullname" .)) }}
{{- end }}

{{- define "stockade.signalTLSSecret" -}}
{{- default (printf "%s-signal-tls" (include "stockade.fullname" .)) .Values.signal.tls.secretName }}
{{- end }}

{{- define "stockade.signalTLS" -}}
{{- if and .Values.signal.enabled .Values.signal.tls.enabled }}true{{ end }}
{{- end }}

{{- define "stockade.signalTokenSecret" -}}
{{- default (printf "%s-signal-token" (include "stockade.fullname" .)) .Values.signal.token.secretName }}
{{- end }}
