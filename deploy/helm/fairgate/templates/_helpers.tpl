{{/* Names, labels and the checks every template relies on. */}}

{{- define "fairgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fairgate.fullname" -}}
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

{{- define "fairgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of everything the release renders; the gateway's add its component. */}}
{{- define "fairgate.commonLabels" -}}
helm.sh/chart: {{ include "fairgate.chart" . }}
app.kubernetes.io/name: {{ include "fairgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fairgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fairgate.labels" -}}
{{ include "fairgate.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "fairgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fairgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "fairgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fairgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fairgate.secretName" -}}
{{- default (include "fairgate.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "fairgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The most gateway replicas that may run at once. */}}
{{- define "fairgate.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The fewest gateway replicas wanted (for the PodDisruptionBudget and topology spread). */}}
{{- define "fairgate.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* SIGTERM to exit: preStop + drain + ledger flush + 5 s margin, in whole seconds. */}}
{{- define "fairgate.minTerminationGrace" -}}
{{- $ms := add .Values.shutdown.graceMs .Values.shutdown.ledgerFlushMs 999 }}
{{- add .Values.shutdown.preStopSleepSeconds (div $ms 1000) 5 }}
{{- end }}

{{- define "fairgate.terminationGrace" -}}
{{- $min := include "fairgate.minTerminationGrace" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $min }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) $min }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least %d: preStop %vs + shutdown.graceMs %v + shutdown.ledgerFlushMs %v + 5 s, or the gateway is killed mid-drain" .Values.terminationGracePeriodSeconds $min .Values.shutdown.preStopSleepSeconds .Values.shutdown.graceMs .Values.shutdown.ledgerFlushMs) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Refuses value combinations that would render a gateway that cannot start or would split
     its state; called from the Deployment. */}}
{{- define "fairgate.validate" -}}
{{- if and (gt (include "fairgate.maxReplicas" . | int) 1) (not .Values.cluster.enabled) }}
{{- fail "more than one gateway replica (replicaCount or autoscaling.maxReplicas) needs cluster.enabled with postgresql.enabled: each replica would otherwise keep its own keys, budgets and queue" }}
{{- end }}
{{- if and .Values.cluster.enabled (not .Values.postgresql.enabled) }}
{{- fail "cluster.enabled needs postgresql.enabled: fairgate refuses SQLite under [cluster]" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.url) }}
{{- fail "postgresql.enabled needs postgresql.url (or secrets.existingSecret holding it)" }}
{{- end }}
{{- if and .Values.cluster.enabled (not .Values.cluster.redisUrl) }}
{{- fail "cluster.enabled needs cluster.redisUrl (or secrets.existingSecret holding it)" }}
{{- end }}
{{- if and .Values.secrets.adminToken (lt (len .Values.secrets.adminToken) 16) }}
{{- fail "secrets.adminToken must be at least 16 characters" }}
{{- end }}
{{- end }}
{{- if and .Values.persistence.enabled (gt (include "fairgate.maxReplicas" . | int) 1) (not (has "ReadWriteMany" .Values.persistence.accessModes)) }}
{{- fail "persistence with several replicas needs a ReadWriteMany claim (every pod mounts the same one); use emptyDir with PostgreSQL instead" }}
{{- end }}
{{- $owned := list }}
{{- range list "listen" "data_dir" "database" "admin_token" "metrics_token" "shutdown_grace_ms" }}
{{- if regexMatch (printf "(?m)^[ \\t]*%s[ \\t]*=" .) $.Values.config }}
{{- $owned = append $owned . }}
{{- end }}
{{- end }}
{{- if $owned }}
{{- fail (printf "config sets %s: the chart sets these (values listen, persistence, postgresql, secrets, shutdown); remove them from config" (join ", " $owned)) }}
{{- end }}
{{- if regexMatch "(?m)^[ \\t]*\\[cluster\\]" .Values.config }}
{{- fail "config has a [cluster] table: use cluster.enabled and cluster.settings instead" }}
{{- end }}
{{- if and .Values.oidc.enabled (not (regexMatch "(?m)^[ \\t]*\\[portal\\.oidc\\]" .Values.config)) }}
{{- fail "oidc.enabled needs a [portal.oidc] table (issuer, client_id, redirect_url) in config" }}
{{- end }}
{{- end }}

{{/* One NetworkPolicy egress rule: a comment, its ports (TCP, and UDP too with "udp") and,
     when given, its peers (none: any address). */}}
{{- define "fairgate.egressRule" -}}
# {{ .name }}
- ports:
    {{- range .rule.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- if $.udp }}
    - port: {{ . }}
      protocol: UDP
    {{- end }}
    {{- end }}
  {{- with .rule.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
