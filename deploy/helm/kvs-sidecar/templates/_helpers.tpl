{{/* Names and labels of the gateway release's objects. */}}

{{- define "kvs-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name, with the chart name unless the
release name already contains it; 63 characters at most (DNS labels).
*/}}
{{- define "kvs-sidecar.fullname" -}}
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

{{- define "kvs-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvs-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvs-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "kvs-sidecar.labels" -}}
helm.sh/chart: {{ include "kvs-sidecar.chart" . }}
{{ include "kvs-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvs-sidecar
{{- end }}

{{- define "kvs-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvs-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvs-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The shutdown grace in whole seconds; the render fails unless the kubelet
waits longer than the drain.
*/}}
{{- define "kvs-sidecar.checkGrace" -}}
{{- $grace := .Values.shutdownGrace | trimSuffix "s" | atoi }}
{{- if le (int .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than shutdownGrace (%s): the kubelet would kill kvs-sidecar mid-drain" .Values.terminationGracePeriodSeconds .Values.shutdownGrace) }}
{{- end }}
{{- end }}
