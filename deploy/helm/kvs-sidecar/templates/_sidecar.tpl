{{/*
kvs-sidecar as a native sidecar in another chart's pod (Kubernetes 1.29+):
one init container with restartPolicy: Always. It starts, and is ready,
before the app containers, stays up beside them, and is stopped after them.
The app calls it on 127.0.0.1:50051; gRPC never leaves the pod.

A chart that depends on kvs-sidecar (with kvs-sidecar.gateway.enabled: false
in its values) writes, in its pod spec:

      initContainers:
        {{- include "kvs-sidecar.nativeSidecar" . | nindent 8 }}

It is rendered in the including chart's context, so .Values is that chart's:
its settings come from .Values.kvsSidecar, every one optional:

  kvsSidecar:
    name: kvs-sidecar
    image: {repository, tag, pullPolicy}
    args: []            # extra flags
    env: []             # extra EnvVar objects
    resources: {}       # replaces the defaults whole
    ports: {grpc: 50051, admin: 9901}
    allowedChannels: [] # ARN patterns
    stateStore: {url: ""}
    shutdownGrace: 20s  # keep below the pod's terminationGracePeriodSeconds

The defaults are hard-coded here, not read from this chart's values.yaml,
which the including chart's context does not see; tests/helm_checks.py checks
that the image tag below is the chart's appVersion.
The pod also needs a service account with the AWS role (IRSA or Pod
Identity), and the pod-level hardening (runAsNonRoot, seccomp RuntimeDefault)
is the including chart's to set.
*/}}
{{- define "kvs-sidecar.nativeSidecar" -}}
{{- $s := get .Values "kvsSidecar" | default dict }}
{{- $grpcPort := dig "ports" "grpc" 50051 $s }}
{{- $adminPort := dig "ports" "admin" 9901 $s }}
{{- $resources := dig "resources" dict $s | default (dict "requests" (dict "cpu" "20m" "memory" "32Mi") "limits" (dict "memory" "96Mi")) -}}
- name: {{ dig "name" "kvs-sidecar" $s }}
  image: {{ printf "%s:%s" (dig "image" "repository" "ghcr.io/kvs-sidecar/kvs-sidecar" $s) (dig "image" "tag" "0.1.0" $s | default "0.1.0") | quote }}
  imagePullPolicy: {{ dig "image" "pullPolicy" "IfNotPresent" $s }}
  restartPolicy: Always
  {{- with dig "args" list $s }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    # The credential-bearing gRPC API stays on loopback: only this pod's
    # containers reach it.
    - name: KVS_SIDECAR_GRPC_LISTEN
      value: "127.0.0.1:{{ $grpcPort }}"
    # The admin port (metrics, health) carries no credentials; the kubelet
    # and Prometheus reach it on the pod IP.
    - name: KVS_SIDECAR_ADMIN_LISTEN
      value: "0.0.0.0:{{ $adminPort }}"
    {{- with dig "stateStore" "url" "" $s }}
    - name: KVS_SIDECAR_STATE_STORE
      value: {{ . | quote }}
    {{- end }}
    {{- with dig "allowedChannels" list $s }}
    - name: KVS_SIDECAR_ALLOWED_CHANNELS
      value: {{ join "," . | quote }}
    {{- end }}
    - name: KVS_SIDECAR_SHUTDOWN_GRACE
      value: {{ dig "shutdownGrace" "20s" $s | quote }}
    - name: KVS_SIDECAR_LOG_FORMAT
      value: json
    {{- with dig "env" list $s }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: kvs-admin
      containerPort: {{ $adminPort }}
  # Native gRPC probes on grpc.health.v1, served on the admin port.
  startupProbe:
    grpc:
      port: {{ $adminPort }}
    periodSeconds: 1
    failureThreshold: 30
  readinessProbe:
    grpc:
      port: {{ $adminPort }}
    periodSeconds: 5
  livenessProbe:
    grpc:
      port: {{ $adminPort }}
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
{{- end }}
