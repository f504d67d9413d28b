{{/* Names and labels shared by every template. */}}

{{- define "lparkube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "lparkube.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lparkube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lparkube.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The selector labels as KEY=VALUE,... for --operator-pod-labels. */}}
{{- define "lparkube.selectorLabelsArg" -}}
{{- $pairs := list -}}
{{- range $key, $value := include "lparkube.selectorLabels" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "lparkube.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lparkube.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lparkube
{{- end -}}

{{- define "lparkube.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lparkube.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "lparkube.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lparkube.agentGatewayService" -}}
{{- printf "%s-agent-gateway" (include "lparkube.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lparkube.metricsService" -}}
{{- printf "%s-metrics" (include "lparkube.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The URL guest agents report to, as written into each Partition's agent config. */}}
{{- define "lparkube.agentGatewayURL" -}}
{{- if .Values.agentGateway.url -}}
{{- .Values.agentGateway.url -}}
{{- else -}}
{{- printf "https://%s.%s.svc.%s:%d" (include "lparkube.agentGatewayService" .) .Release.Namespace .Values.clusterDomain (int .Values.agentGateway.service.port) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the root every agent key and TLS identity derives from. */}}
{{- define "lparkube.identitySecret" -}}
{{- printf "%s-identity" (include "lparkube.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
