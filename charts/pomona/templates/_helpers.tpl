{{/*
The chart name, or nameOverride.
*/}}
{{- define "pomona.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of the chart's resources: fullnameOverride, else "<release>-<name>", or the
release name alone when it already contains the chart name. At most 63 characters (DNS label);
the runner ServiceAccount appends "-runner" to a prefix trimmed to 56.
*/}}
{{- define "pomona.fullname" -}}
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

{{/*
"name-version" of the chart, for the helm.sh/chart label.
*/}}
{{- define "pomona.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "pomona.labels" -}}
helm.sh/chart: {{ include "pomona.chart" . }}
{{ include "pomona.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pomona
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator pods (stable across upgrades).
*/}}
{{- define "pomona.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pomona.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of the runner ServiceAccounts.
*/}}
{{- define "pomona.runnerLabels" -}}
helm.sh/chart: {{ include "pomona.chart" . }}
app.kubernetes.io/name: {{ include "pomona.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: runner
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pomona
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "pomona.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pomona.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The runner's ServiceAccount name; empty when none is created nor named (runner pods then use
their namespace's default ServiceAccount).
*/}}
{{- define "pomona.runnerServiceAccountName" -}}
{{- if .Values.runner.serviceAccount.create }}
{{- default (printf "%s-runner" (include "pomona.fullname" . | trunc 56 | trimSuffix "-")) .Values.runner.serviceAccount.name }}
{{- else }}
{{- .Values.runner.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespaces the runner ServiceAccount is created in: the release namespace, the watched
namespace when one is set, and runner.serviceAccount.namespaces, without duplicates.
*/}}
{{- define "pomona.runnerNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- with .Values.config.watchNamespace }}
{{- $namespaces = append $namespaces . }}
{{- end }}
{{- $namespaces = concat $namespaces .Values.runner.serviceAccount.namespaces }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: "repository:tag", or
"repository:tag@digest" when a digest is given. The tag defaults to the chart's appVersion.
Call with (dict "image" .Values.image "context" $).
*/}}
{{- define "pomona.imageRef" -}}
{{- $tag := default .context.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The Lease the replicas elect a leader on.
*/}}
{{- define "pomona.leaseName" -}}
{{- default (include "pomona.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
