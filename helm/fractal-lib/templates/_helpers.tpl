{{/*
Names, labels and the pieces every Fractal workload shares.
*/}}

{{/* A DNS-1123 name of at most 63 characters. */}}
{{- define "fractal.dnsName" -}}
{{- . | lower | replace "_" "-" | replace "/" "-" | replace "." "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The stable name of hub `name`'s client Service: `hub-<name>`, whatever the release. */}}
{{- define "fractal.hubService" -}}
{{- printf "hub-%s" . | include "fractal.dnsName" -}}
{{- end -}}

{{/*
Labels of a workload. Context: dict with root (the chart's root context), component (hub,
service, bridge, provision), name (the workload), subsystem, hub, and clientOf: the hubs it
connects to, each labelled `hub.fractal.dev/<hub>: client`, which a hub's NetworkPolicy admits.
*/}}
{{- define "fractal.labels" -}}
{{ include "fractal.selectorLabels" . }}
app.kubernetes.io/part-of: {{ .root.Values.system | default "fractal" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service | quote }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | default .root.Chart.Version | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | quote }}
fractal.dev/subsystem: {{ .subsystem | quote }}
fractal.dev/hub: {{ .hub | quote }}
{{- range .clientOf }}
{{ printf "hub.fractal.dev/%s" . }}: client
{{- end }}
{{- end -}}

{{/* Labels selectors use: only those that never change for a workload. */}}
{{- define "fractal.selectorLabels" -}}
app.kubernetes.io/name: {{ .name | include "fractal.dnsName" | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end -}}

{{/* The restricted pod security context. */}}
{{- define "fractal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted container security context. */}}
{{- define "fractal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The downward API variables the telemetry resource reads. */}}
{{- define "fractal.downwardEnv" -}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{/*
Telemetry: OTLP over gRPC to `telemetry.otlp.endpoint` with a parent-based ratio sampler, and
the resource attributes that say where each span ran. Context: dict with root, subsystem, hub,
serviceName (`OTEL_SERVICE_NAME`: `<subsystem>-<service>`, `bridge-<name>`, as `fractal up`
names them).
*/}}
{{- define "fractal.telemetryEnv" -}}
{{- $telemetry := .root.Values.telemetry | default dict -}}
{{- $otlp := $telemetry.otlp | default dict -}}
{{ include "fractal.downwardEnv" . }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.node.name=$(K8S_NODE_NAME),fractal.subsystem=%s,fractal.hub=%s" .subsystem .hub | quote }}
{{- if $otlp.endpoint }}
{{- if not (regexMatch "^https?://[^/]+" $otlp.endpoint) -}}
{{- fail (printf "telemetry.otlp.endpoint: `%s` has no scheme; write `http://…` or `https://…`" $otlp.endpoint) -}}
{{- end -}}
{{- if regexMatch ":4318/?$" $otlp.endpoint -}}
{{- fail (printf "telemetry.otlp.endpoint: `%s` is OTLP over HTTP (port 4318); the programs export OTLP over gRPC (port 4317)" $otlp.endpoint) -}}
{{- end }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otlp.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $telemetry.samplerRatio | default 1.0 | toString | quote }}
{{- end }}
{{- end -}}

{{/* Requests and limits; a memory limit always. Context: the resources values. */}}
{{- define "fractal.resources" -}}
requests:
  cpu: {{ .requests.cpu | quote }}
  memory: {{ .requests.memory | quote }}
limits:
  memory: {{ .limits.memory | quote }}
{{- end -}}

{{/* The sha256 of a rendered template, for a checksum annotation. */}}
{{- define "fractal.checksum" -}}
{{- . | sha256sum -}}
{{- end -}}

{{/*
A hub client's environment, under `prefix` (`ORDERING_HUB__`, `BRIDGE_SOURCE__`): the hub's
URLs, the CA that signs its certificate, the credential's seed file and inbox, and the
streams' replicas. Context: dict with prefix, urls (list), client (the credential id, or empty
for none), tls (the Secret holding the hub's `ca.crt`, or empty), replicas.
*/}}
{{- define "fractal.hubEnv" -}}
{{- if .name -}}
- name: {{ printf "%sNAME" .prefix }}
  value: {{ .name | quote }}
{{ end -}}
- name: {{ printf "%sURLS" .prefix }}
  value: {{ printf "[%s]" (include "fractal.quotedList" .urls) | quote }}
{{- if .client }}
- name: {{ printf "%sAUTH__TYPE" .prefix }}
  value: nkey
- name: {{ printf "%sAUTH__SEED_FILE" .prefix }}
  value: {{ printf "/etc/fractal/credentials/%s.nk" .client | quote }}
- name: {{ printf "%sINBOX_PREFIX" .prefix }}
  value: {{ printf "_INBOX.%s" .client | quote }}
{{- end }}
{{- if .tls }}
- name: {{ printf "%sTLS__CA_FILE" .prefix }}
  value: {{ printf "/etc/fractal/tls/%s/ca.crt" .tls | quote }}
{{- end }}
- name: {{ printf "%sEVENTS__REPLICAS" .prefix }}
  value: {{ .replicas | toString | quote }}
- name: {{ printf "%sFAULTS__REPLICAS" .prefix }}
  value: {{ .replicas | toString | quote }}
{{- end -}}

{{/*
A name under the system's `path` (`north.ordering` for `ordering` in `north`), as `fractal up`
names a hub or subsystem of an included system; the name itself without a path. Context: dict
with root and name.
*/}}
{{- define "fractal.pathName" -}}
{{- if .root.Values.path -}}
{{- printf "%s.%s" .root.Values.path .name -}}
{{- else -}}
{{- .name -}}
{{- end -}}
{{- end -}}

{{/* `"a","b"` from a list. */}}
{{- define "fractal.quotedList" -}}
{{- $quoted := list -}}
{{- range . }}{{ $quoted = append $quoted (. | quote) }}{{ end -}}
{{- join "," $quoted -}}
{{- end -}}

{{/* The environment variable prefix of a program (`ORDERING_` for `ordering`), by the rule of
`fractal::service::env_prefix`; helm/tests checks the two agree. */}}
{{- define "fractal.envPrefix" -}}
{{- printf "%s_" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/* The URL of hub `name` of this release's subsystem, through its stable Service. */}}
{{- define "fractal.hubUrl" -}}
{{- printf "nats://%s:4222" (include "fractal.hubService" .) -}}
{{- end -}}

{{/* A volume of the `ca.crt` of each hub Secret in `.` (a list), mounted at /etc/fractal/tls/<secret>. */}}
{{- define "fractal.caVolumes" -}}
{{- range . | uniq }}
- name: {{ printf "ca-%s" . | include "fractal.dnsName" }}
  secret:
    secretName: {{ . | quote }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "fractal.caMounts" -}}
{{- range . | uniq }}
- name: {{ printf "ca-%s" . | include "fractal.dnsName" }}
  mountPath: {{ printf "/etc/fractal/tls/%s" . | quote }}
  readOnly: true
{{- end }}
{{- end -}}
