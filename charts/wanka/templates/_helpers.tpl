{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "wanka.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: the release name, suffixed with the chart name unless it has it already. */}}
{{- define "wanka.fullname" -}}
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

{{- define "wanka.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "wanka.labels" -}}
helm.sh/chart: {{ include "wanka.chart" . }}
app.kubernetes.io/name: {{ include "wanka.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wanka
{{- end }}

{{/* Selector labels of the operator (immutable in a Deployment: never add to them). */}}
{{- define "wanka.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wanka.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "wanka.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "wanka.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "wanka.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wanka.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wanka.agentName" -}}
{{- printf "%s-agent" (include "wanka.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wanka.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- /* The admissionregistration version serving MutatingAdmissionPolicy (v1; v1beta1 behind the
feature gate of the same name in 1.34 and 1.35), or "" where the API server serves none. */ -}}
{{- define "wanka.mapVersion" -}}
{{- $found := "" }}
{{- range list "admissionregistration.k8s.io/v1" "admissionregistration.k8s.io/v1beta1" }}
{{- if and (not $found) ($.Capabilities.APIVersions.Has (printf "%s/MutatingAdmissionPolicy" .)) }}
{{- $found = . }}
{{- end }}
{{- end }}
{{- $found }}
{{- end }}
