{{/*
One service: its program's own TOML in a ConfigMap, unchanged; a Deployment whose environment
carries what is the cluster's (hub URLs, listen addresses, credential, telemetry); a gRPC
Service if it serves one; a disruption budget and an autoscaler if asked.
Context: dict with root (the chart's root), level (the subsystem's values: subsystem, hub,
credentials) and service (its values). The config is the service's `config`, or the chart file
its `configFile` names.
*/}}
{{- define "fractal.service" -}}
{{- $root := .root -}}
{{- $level := .level -}}
{{- $svc := .service -}}
{{- $hub := $level.hub -}}
{{- $name := printf "%s-%s" $level.subsystem $svc.name | include "fractal.dnsName" -}}
{{- $ctx := dict "root" $root "component" "service" "name" $name "subsystem" $level.subsystem "hub" $hub.name "clientOf" (list $hub.name) -}}
{{- $config := $svc.config | default ($root.Files.Get (printf "files/%s" ($svc.configFile | default "-"))) -}}
{{- if not $config -}}
{{- fail (printf "services[%s]: give its program's TOML as `config`, or as a chart file named by `configFile`" $svc.name) -}}
{{- end -}}
{{- $prefix := include "fractal.envPrefix" $svc.program -}}
{{- $urls := ternary $hub.externalUrls (list (include "fractal.hubUrl" $hub.name)) (eq $hub.mode "external") -}}
{{- $ca := ternary $hub.tls.secretName "" (($hub.tls | default dict).enabled | default false) -}}
{{- $cas := compact (list $ca) -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
data:
  config.toml: |
    {{- regexReplaceAll "(?m)^ +$" ($config | nindent 4) "" }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  {{- if not ($svc.autoscaling | default dict).enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "fractal.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "fractal.labels" $ctx | nindent 8 }}
      annotations:
        checksum/config: {{ include "fractal.checksum" $config }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "fractal.podSecurityContext" . | nindent 8 }}
      containers:
        - name: {{ $svc.program | include "fractal.dnsName" }}
          image: {{ printf "%s:%s" $root.Values.image.repository ($root.Values.image.tag | default $root.Chart.AppVersion) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ printf "/usr/local/bin/%s" $svc.program | quote }}, "--config", "/etc/fractal/config.toml"]
          env:
            {{- $path := dict "root" $root "name" $hub.name }}
            {{- include "fractal.hubEnv" (dict "prefix" (printf "%sHUB__" $prefix) "name" (ternary (include "fractal.pathName" $path) "" (not (empty $root.Values.path))) "urls" $urls "client" $svc.credential "tls" $ca "replicas" $hub.streamReplicas) | nindent 12 }}
            {{- if $root.Values.path }}
            - name: {{ printf "%sSUBSYSTEM" $prefix }}
              value: {{ include "fractal.pathName" (dict "root" $root "name" $level.subsystem) | quote }}
            {{- end }}
            - name: {{ printf "%sADMIN__LISTEN" $prefix }}
              value: {{ printf "0.0.0.0:%d" (int $svc.admin.port) | quote }}
            {{- with $svc.grpc }}
            - name: {{ printf "%sGRPC__LISTEN" $prefix }}
              value: {{ printf "0.0.0.0:%d" (int .port) | quote }}
            {{- end }}
            - name: {{ printf "%sLOG__FORMAT" $prefix }}
              value: json
            {{- $subsystem := include "fractal.pathName" (dict "root" $root "name" $level.subsystem) }}
            {{- include "fractal.telemetryEnv" (dict "root" $root "subsystem" $subsystem "hub" (include "fractal.pathName" $path) "serviceName" (printf "%s-%s" $subsystem $svc.name)) | nindent 12 }}
          ports:
            - name: admin
              containerPort: {{ $svc.admin.port }}
            {{- with $svc.grpc }}
            - name: grpc
              containerPort: {{ .port }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 10
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            periodSeconds: 5
          resources:
            {{- include "fractal.resources" $svc.resources | nindent 12 }}
          securityContext:
            {{- include "fractal.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/fractal/config.toml
              subPath: config.toml
              readOnly: true
            {{- if $svc.credential }}
            - name: credentials
              mountPath: /etc/fractal/credentials
              readOnly: true
            {{- end }}
            {{- if $cas }}
            {{- include "fractal.caMounts" $cas | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ $name }}
        {{- if $svc.credential }}
        - name: credentials
          secret:
            secretName: {{ $level.credentials.secretName | quote }}
            defaultMode: 0400
            items:
              - key: {{ printf "%s.nk" $svc.credential | quote }}
                path: {{ printf "%s.nk" $svc.credential | quote }}
        {{- end }}
        {{- if $cas }}
        {{- include "fractal.caVolumes" $cas | nindent 8 }}
        {{- end }}
{{- with $svc.grpc }}
{{- if .service }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  selector:
    {{- include "fractal.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .port }}
      targetPort: grpc
      appProtocol: grpc
{{- end }}
{{- end }}
{{- if gt (int $svc.replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "fractal.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- with $svc.autoscaling }}
{{- if .enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ .minReplicas }}
  maxReplicas: {{ .maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .cpuPercent }}
{{- end }}
{{- end }}
{{- end -}}
