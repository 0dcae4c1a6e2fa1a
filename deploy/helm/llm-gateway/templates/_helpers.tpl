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
# the gateway talks to no Kubernetes API; an identity webhook (IRSA) mounts its own token
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- with include "llm-gateway.serviceAccountName" . }}
serviceAccountName: {{ . }}
{{- end }}
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

{{/* The pods' service account: the one the chart creates, or an existing one by name. */}}
{{- define "llm-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "llm-gateway.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default .Values.serviceAccountName -}}
{{- end -}}
{{- end -}}

{{/* The root filesystem is read-only: every cache goes under the writable /tmp. The hub
     token (gated models) comes from a Secret, in every pod that loads weights. */}}
{{- define "llm-gateway.cacheEnv" -}}
- {name: HOME, value: /tmp/home}
- {name: XDG_CACHE_HOME, value: /tmp/cache}
- {name: VLLM_CACHE_ROOT, value: /tmp/cache/vllm}
- {name: TRITON_CACHE_DIR, value: /tmp/cache/triton}
- {name: VLLM_NO_USAGE_STATS, value: "1"}
{{- with .Values.hubToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.hubToken.key }}}
{{- end }}
{{- end -}}

{{/* The claim of the hub models' cache: an existing one, or the one the chart creates. */}}
{{- define "llm-gateway.modelCacheClaim" -}}
{{- if .Values.modelCache.create.enabled -}}
{{- include "llm-gateway.fullname" . }}-model-cache
{{- else -}}
{{- .Values.modelCache.persistentVolumeClaim -}}
{{- end -}}
{{- end -}}

{{/* Where the weights and caches are, the same in every pod that loads a model (the
     Deployment's, and the leader and workers of a LeaderWorkerSet). */}}
{{- define "llm-gateway.modelMounts" -}}
{{- if or .Values.modelVolume.persistentVolumeClaim .Values.modelVolume.hostPath }}
- {name: models, mountPath: /models, readOnly: true}
{{- end }}
- {name: tmp, mountPath: /tmp}
# hub models download here (Takeoff's mount point); a PVC keeps them across restarts
- {name: model-cache, mountPath: /code/models}
- {name: shm, mountPath: /dev/shm}
{{- end -}}

{{- define "llm-gateway.modelVolumes" -}}
{{- if .Values.modelVolume.persistentVolumeClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelVolume.persistentVolumeClaim }}
    readOnly: true
{{- else if .Values.modelVolume.hostPath }}
- name: models
  hostPath:
    path: {{ .Values.modelVolume.hostPath }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: model-cache
  {{- with include "llm-gateway.modelCacheClaim" . }}
  persistentVolumeClaim:
    claimName: {{ . }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
  {{- end }}
# vLLM's workers share tensors through /dev/shm; the container default (64 MiB) is too small
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSizeLimit }}
{{- end -}}

{{/* The pods' security context: the "restricted" Pod Security level. */}}
{{- define "llm-gateway.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "llm-gateway.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: ["ALL"]}
{{- end -}}

{{/* The gateway container's environment (the Deployment's, or the LeaderWorkerSet leader's). */}}
{{- define "llm-gateway.gatewayEnv" -}}
- name: GATEWAY_DRAIN_TIMEOUT_SECONDS
  value: {{ .Values.drainTimeoutSeconds | quote }}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
- name: GATEWAY_API_KEYS_FILE
  value: /etc/llm-gateway/keys/{{ .Values.apiKeys.key }}
# the format is said, never guessed: the chart's own Secret is one key per line
- name: GATEWAY_API_KEYS_FILE_FORMAT
  value: {{ ternary .Values.apiKeys.format "lines" (not (empty .Values.apiKeys.existingSecret)) | quote }}
{{- else }}
- name: GATEWAY_ALLOW_UNAUTHENTICATED
  value: "true"
{{- end }}
{{ include "llm-gateway.cacheEnv" . }}
{{- include "llm-gateway.tracingEnv" . }}
{{- include "llm-gateway.batchesEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The gateway container's ports and its mounts beside the model's. */}}
{{- define "llm-gateway.gatewayPorts" -}}
- {name: http, containerPort: {{ include "llm-gateway.port" . }}, protocol: TCP}
- {name: management, containerPort: {{ include "llm-gateway.managementPort" . }}, protocol: TCP}
- {name: openai, containerPort: {{ include "llm-gateway.openaiPort" . }}, protocol: TCP}
{{- with .Values.config.probe_port }}
- {name: probes, containerPort: {{ . }}, protocol: TCP}
{{- end }}
{{- end -}}

{{- define "llm-gateway.gatewayMounts" -}}
- {name: config, mountPath: /etc/llm-gateway/config, readOnly: true}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
- {name: keys, mountPath: /etc/llm-gateway/keys, readOnly: true}
{{- end }}
{{ include "llm-gateway.modelMounts" . }}
{{- include "llm-gateway.batchesMount" . }}
{{- end -}}

{{- define "llm-gateway.gatewayVolumes" -}}
- name: config
  configMap:
    name: {{ include "llm-gateway.fullname" . }}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
- name: keys
  secret:
    secretName: {{ include "llm-gateway.keysSecret" . }}
{{- end }}
{{ include "llm-gateway.modelVolumes" . }}
{{- include "llm-gateway.batchesVolume" . }}
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

{{/* A cache claim the chart creates is ReadWriteOnce unless said otherwise: refuse what
     would leave a second pod Pending on another node. */}}
{{- define "llm-gateway.checkModelCache" -}}
{{- if and .Values.modelCache.create.enabled .Values.modelCache.persistentVolumeClaim -}}
{{- fail "llm-gateway: modelCache.create.enabled and modelCache.persistentVolumeClaim are alternatives: create a claim, or name an existing one" -}}
{{- end -}}
{{- $shared := has "ReadWriteMany" .Values.modelCache.create.accessModes -}}
{{- $pods := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.autoscaling.keda.enabled .Values.multiNode.enabled -}}
{{- if and .Values.modelCache.create.enabled $pods (not $shared) -}}
{{- fail "llm-gateway: modelCache.create with more than one pod (replicas, autoscaling or multiNode) needs accessModes [ReadWriteMany]: a ReadWriteOnce claim holds every other node's pod in Pending" -}}
{{- end -}}
{{- end -}}

{{/* An HTTPRoute rule's timeouts: a stream lasts as long as its longest answer ("0s": none). */}}
{{- define "llm-gateway.routeTimeouts" -}}
{{- with .Values.httpRoute.timeouts }}
timeouts:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The `helm test` pod, admitted wherever the NetworkPolicy names peers. */}}
{{- define "llm-gateway.testPeer" -}}
{{- if .Values.helmTest.enabled }}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
      llm-gateway/role: helm-test
{{- end }}
{{- end -}}
