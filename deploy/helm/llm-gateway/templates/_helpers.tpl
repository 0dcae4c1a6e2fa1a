{{- define "llm-gateway.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "llm-gateway.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llm-gateway.labels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llm-gateway.selector" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* What every pod of the chart shares: where it may run, who pulls its image, and no
     service links (a Service named `gateway` or `vllm` in the namespace would otherwise
     inject GATEWAY_PORT or VLLM_PORT, which the gateway and vLLM read as settings). */}}
{{- define "llm-gateway.podCommon" -}}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The root filesystem is read-only: every cache goes under the writable /tmp. */}}
{{- define "llm-gateway.cacheEnv" -}}
- {name: HOME, value: /tmp/home}
- {name: XDG_CACHE_HOME, value: /tmp/cache}
- {name: VLLM_CACHE_ROOT, value: /tmp/cache/vllm}
- {name: TRITON_CACHE_DIR, value: /tmp/cache/triton}
- {name: VLLM_NO_USAGE_STATS, value: "1"}
{{- end -}}

{{/* The gateway container's probes (the probe port, or the http port). */}}
{{- define "llm-gateway.probes" -}}
startupProbe:
  httpGet: {path: /readyz, port: {{ include "llm-gateway.probePortName" . }}}
  periodSeconds: 10
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ div .Values.startupSeconds 10 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ include "llm-gateway.probePortName" . }}}
  periodSeconds: 10
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.livenessFailureThreshold }}
readinessProbe:
  # a busy event loop answers late, not wrongly: tolerate it so a pod does not
  # leave the Service exactly when it is busiest
  httpGet: {path: /readyz, port: {{ include "llm-gateway.probePortName" . }}}
  periodSeconds: 5
  timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readinessFailureThreshold }}
{{- end -}}

{{- define "llm-gateway.keysSecret" -}}
{{- if .Values.apiKeys.existingSecret -}}{{ .Values.apiKeys.existingSecret }}{{- else -}}{{ include "llm-gateway.fullname" . }}-keys{{- end -}}
{{- end -}}

{{/* The three ports, from the gateway's own settings so the config and the manifests agree. */}}
{{- define "llm-gateway.port" -}}{{ .Values.config.port | default 3000 }}{{- end -}}
{{- define "llm-gateway.managementPort" -}}{{ .Values.config.management_port | default 3001 }}{{- end -}}
{{- define "llm-gateway.openaiPort" -}}{{ .Values.config.openai_port | default 3003 }}{{- end -}}
{{/* The probes' port name: the thread-served probe port when configured, else the http port. */}}
{{- define "llm-gateway.probePortName" -}}{{ if .Values.config.probe_port }}probes{{ else }}http{{ end }}{{- end -}}

{{/* The image, which must be set: nothing is published under a default name. */}}
{{- define "llm-gateway.image" -}}
{{- $repo := required "llm-gateway: set image.repository to where you pushed the image built from deploy/docker (see deploy/README.md)" .Values.image.repository -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Whether an operator resource renders: "true", or "auto" and the cluster serves its API. */}}
{{- define "llm-gateway.wanted" -}}
{{- $ctx := index . 0 -}}{{- $setting := index . 1 -}}{{- $api := index . 2 -}}
{{- if or (eq (toString $setting) "true") (and (eq (toString $setting) "auto") ($ctx.Capabilities.APIVersions.Has $api)) -}}true{{- end -}}
{{- end -}}

{{/* Requests in flight per pod the autoscaler aims at: set, or half the first reader's max_in_flight. */}}
{{- define "llm-gateway.targetInFlight" -}}
{{- if .Values.autoscaling.targetRequestsInFlight -}}
{{- .Values.autoscaling.targetRequestsInFlight -}}
{{- else -}}
{{- $limit := 0 -}}
{{- range .Values.config.readers -}}{{- if and (not $limit) .max_in_flight -}}{{- $limit = .max_in_flight -}}{{- end -}}{{- end -}}
{{- $limit = $limit | default 64 -}}
{{- max 1 (div (mul $limit (.Values.autoscaling.targetUtilizationPercent | default 50)) 100) -}}
{{- end -}}
{{- end -}}

{{- define "llm-gateway.checkKeys" -}}
{{- $keys := or .Values.apiKeys.existingSecret .Values.apiKeys.keys -}}
{{- if and (not $keys) (not .Values.allowUnauthenticated) -}}
{{- fail "llm-gateway: set apiKeys.keys or apiKeys.existingSecret (an API keys file), or allowUnauthenticated=true for an open API behind your own authenticating proxy" -}}
{{- end -}}
{{- if and (not $keys) .Values.allowUnauthenticated (or (not .Values.networkPolicy.enabled) (not .Values.networkPolicy.inferenceFrom)) -}}
{{- fail "llm-gateway: allowUnauthenticated without keys is for a trusted network: set networkPolicy.inferenceFrom to who may connect (your proxy, the clients' namespaces), with networkPolicy.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* OpenTelemetry traces: the gateway's setting and the standard OTLP variables */}}
{{- define "llm-gateway.tracingEnv" -}}
{{- if .Values.tracing.enabled }}
- {name: GATEWAY_TRACING, value: "true"}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "llm-gateway: tracing.enabled needs tracing.endpoint (the OTLP collector)" .Values.tracing.endpoint | quote }}
- {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: {{ .Values.tracing.protocol | quote }}}
- {name: OTEL_SERVICE_NAME, value: {{ .Values.tracing.serviceName | quote }}}
{{- end }}
{{- end -}}

{{/* OpenAI's Files and Batch APIs: the settings, the files' volume and its mount */}}
{{- define "llm-gateway.batchesEnv" -}}
{{- if .Values.batches.enabled }}
- {name: GATEWAY_BATCHES__ENABLED, value: "true"}
- {name: GATEWAY_BATCHES__DIRECTORY, value: /var/lib/llm-gateway/batches}
{{- end }}
{{- end -}}

{{- define "llm-gateway.batchesMount" -}}
{{- if .Values.batches.enabled }}
- {name: batch-files, mountPath: /var/lib/llm-gateway/batches}
{{- end }}
{{- end -}}

{{- define "llm-gateway.batchesVolume" -}}
{{- if .Values.batches.enabled }}
{{- $replicas := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $replicas (not .Values.batches.persistentVolumeClaim) }}
{{- fail "llm-gateway: batches on more than one replica need batches.persistentVolumeClaim, a ReadWriteMany claim the replicas share" }}
{{- end }}
{{- if and $replicas (ne ((.Values.config.continuation | default dict).backend | default "memory") "redis") }}
{{- fail "llm-gateway: batches on more than one replica need config.continuation.backend: redis (the replicas share the work there)" }}
{{- end }}
- name: batch-files
  {{- if .Values.batches.persistentVolumeClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.batches.persistentVolumeClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.batches.sizeLimit }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* What the autoscalers scale: the Deployment, or the LeaderWorkerSet on the multi-node path. */}}
{{- define "llm-gateway.scaleTarget" -}}
{{- if .Values.multiNode.enabled }}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
{{- else }}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "llm-gateway.fullname" . }}
{{- end -}}
