{{/*
Monitoring, when `monitoring.enabled` (it needs the Prometheus Operator's CRDs): a PodMonitor
for the programs' `/metrics` and the hubs' exporter, and the alerts every level needs.
Context: dict with root and level.
*/}}
{{- define "fractal.monitoring" -}}
{{- $root := .root -}}
{{- $level := .level -}}
{{- $monitoring := $root.Values.monitoring | default dict -}}
{{- if $monitoring.enabled }}
{{- $name := printf "%s-monitoring" $level.subsystem | include "fractal.dnsName" -}}
{{- $ctx := dict "root" $root "component" "monitoring" "name" $name "subsystem" $level.subsystem "hub" $level.hub.name -}}
---
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ $root.Release.Name | quote }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: ["service", "bridge", "hub"]
  podMetricsEndpoints:
    - port: admin
      path: /metrics
      interval: {{ $monitoring.interval | quote }}
    - port: metrics
      path: /metrics
      interval: {{ $monitoring.interval | quote }}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  groups:
    - name: {{ printf "fractal-%s" $level.subsystem | quote }}
      rules:
        - alert: FractalBridgeStalled
          expr: max by (namespace, pod, route) (fractal_bridge_stalled{namespace="{{ $root.Release.Namespace }}"}) > 0
          for: 5m
          labels:
            severity: critical
          annotations:
            summary: "Bridge route {{ "{{ $labels.route }}" }} has events waiting and relays none."
        - alert: FractalFaultRateRising
          expr: sum by (namespace, service) (rate(fractal_events_faulted_total{namespace="{{ $root.Release.Namespace }}"}[10m])) > {{ $monitoring.faultsPerSecond }}
          for: 10m
          labels:
            severity: warning
          annotations:
            summary: "Service {{ "{{ $labels.service }}" }} records faults."
        - alert: FractalHubStorageNearlyFull
          expr: max by (namespace, pod) (nats_varz_jetstream_stats_storage{namespace="{{ $root.Release.Namespace }}"} / nats_varz_jetstream_config_max_storage{namespace="{{ $root.Release.Namespace }}"}) > 0.85
          for: 15m
          labels:
            severity: warning
          annotations:
            summary: "Hub node {{ "{{ $labels.pod }}" }} has used more than 85% of its JetStream storage."
{{- end }}
{{- end -}}

{{/* The exporter beside each hub node, when monitoring is on: NATS monitoring as Prometheus text. */}}
{{- define "fractal.hubExporter" -}}
{{- $monitoring := .Values.monitoring | default dict -}}
{{- if $monitoring.enabled }}
- name: exporter
  image: {{ printf "%s:%s" $monitoring.exporter.repository $monitoring.exporter.tag | quote }}
  imagePullPolicy: IfNotPresent
  args: ["-port", "7777", "-varz", "-jsz=all", "-routez", "-healthz", "http://localhost:8222"]
  ports:
    - name: metrics
      containerPort: 7777
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 64Mi
  securityContext:
    {{- include "fractal.containerSecurityContext" . | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
The dashboard of hubs, services and bridges, once per release when monitoring is on, for
Grafana's sidecar (it loads ConfigMaps labelled `grafana_dashboard`). Context: the root.
*/}}
{{- define "fractal.dashboard" -}}
{{- if (.Values.monitoring | default dict).enabled }}
{{- $name := printf "%s-dashboard" .Release.Name | include "fractal.dnsName" -}}
{{- $ctx := dict "root" . "component" "monitoring" "name" $name "subsystem" (.Values.subsystem | default .Values.system) "hub" "" -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
    grafana_dashboard: "1"
data:
  fractal.json: |
    {{- regexReplaceAll "(?m)^ +$" (.Files.Get "dashboards/fractal.json" | nindent 4) "" }}
{{- end }}
{{- end -}}
