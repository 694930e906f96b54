{{/*
One bridge: the bridge program's own TOML in a ConfigMap, unchanged, and a Deployment of 0 or 1
replica that never runs two at once (`Recreate`): a bridge must be a single process.
Context: dict with root (the chart's root), level (the subsystem's values) and bridge (its
values). The config is the bridge's `config`, or the chart file its `configFile` names.
*/}}
{{- define "fractal.bridge" -}}
{{- $root := .root -}}
{{- $level := .level -}}
{{- $bridge := .bridge -}}
{{- $config := $bridge.config | default ($root.Files.Get (printf "files/%s" ($bridge.configFile | default "-"))) -}}
{{- if not $config -}}
{{- fail (printf "bridges[%s]: give the bridge's TOML as `config`, or as a chart file named by `configFile`" $bridge.name) -}}
{{- end -}}
{{- if gt (int $bridge.replicas) 1 -}}
{{- fail (printf "bridges[%s].replicas: a bridge runs as one process (0 or 1 replica), not %v" $bridge.name $bridge.replicas) -}}
{{- end -}}
{{- $name := printf "bridge-%s" $bridge.name | include "fractal.dnsName" -}}
{{- $cas := compact (list $bridge.source.caSecretName $bridge.target.caSecretName) -}}
{{- $ctx := dict "root" $root "component" "bridge" "name" $name "subsystem" $level.subsystem "hub" $bridge.source.hub "clientOf" (list $bridge.source.hub $bridge.target.hub | uniq) -}}
{{- $contracts := include "fractal.contractsConfigMap" (dict "root" $root "level" $level) -}}
{{- if not $contracts -}}
{{- fail (printf "bridges[%s]: a bridge checks events against contracts: set `contracts.file` (a descriptor set among the chart's files) or `contracts.configMap`" $bridge.name) -}}
{{- end -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
data:
  bridge.toml: |
    {{- regexReplaceAll "(?m)^ +$" ($config | nindent 4) "" }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $bridge.replicas }}
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "fractal.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "fractal.labels" $ctx | nindent 8 }}
      annotations:
        checksum/config: {{ include "fractal.checksum" $config }}
        {{- if and $root.Values.contracts $root.Values.contracts.file }}
        checksum/contracts: {{ include "fractal.checksum" (include "fractal.contractsData" $root) }}
        {{- end }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "fractal.podSecurityContext" . | nindent 8 }}
      containers:
        - name: bridge
          image: {{ printf "%s:%s" $root.Values.image.repository ($root.Values.image.tag | default $root.Chart.AppVersion) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/local/bin/fractal-bridge", "--config", "/etc/fractal/bridge.toml"]
          env:
            {{- $named := not (empty $root.Values.path) }}
            {{- $sides := fromToml $config }}
            {{- $source := include "fractal.pathName" (dict "root" $root "name" (dig "source" "name" $bridge.source.hub $sides)) }}
            {{- $target := include "fractal.pathName" (dict "root" $root "name" (dig "target" "name" $bridge.target.hub $sides)) }}
            {{- include "fractal.hubEnv" (dict "prefix" "BRIDGE_SOURCE__" "name" (ternary $source "" $named) "urls" $bridge.source.urls "client" $bridge.source.credential "tls" $bridge.source.caSecretName "replicas" $bridge.source.replicas) | nindent 12 }}
            {{- include "fractal.hubEnv" (dict "prefix" "BRIDGE_TARGET__" "name" (ternary $target "" $named) "urls" $bridge.target.urls "client" $bridge.target.credential "tls" $bridge.target.caSecretName "replicas" $bridge.target.replicas) | nindent 12 }}
            {{- if $named }}
            - name: BRIDGE_NAME
              value: {{ printf "%s-%s" (replace "." "-" $root.Values.path) $bridge.name | quote }}
            {{- end }}
            - name: BRIDGE_ADMIN__LISTEN
              value: {{ printf "0.0.0.0:%d" (int $bridge.admin.port) | quote }}
            - name: BRIDGE_LOG__FORMAT
              value: json
            {{- $traced := ternary (printf "bridge-%s-%s" (replace "." "-" ($root.Values.path | default "")) $bridge.name) $name $named }}
            {{- include "fractal.telemetryEnv" (dict "root" $root "subsystem" (include "fractal.pathName" (dict "root" $root "name" $level.subsystem)) "hub" $source "serviceName" $traced) | nindent 12 }}
            {{- if $contracts }}
            - name: BRIDGE_CONTRACTS
              value: /etc/fractal/contracts/contracts.pb
            {{- end }}
          ports:
            - name: admin
              containerPort: {{ $bridge.admin.port }}
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
            {{- include "fractal.resources" $bridge.resources | nindent 12 }}
          securityContext:
            {{- include "fractal.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/fractal/bridge.toml
              subPath: bridge.toml
              readOnly: true
            {{- if $contracts }}
            - name: contracts
              mountPath: /etc/fractal/contracts
              readOnly: true
            {{- end }}
            {{- if or $bridge.source.credential $bridge.target.credential }}
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
        {{- if $contracts }}
        - name: contracts
          configMap:
            name: {{ $contracts }}
        {{- end }}
        {{- if or $bridge.source.credential $bridge.target.credential }}
        - name: credentials
          secret:
            secretName: {{ $level.credentials.secretName | quote }}
            defaultMode: 0400
            items:
              {{- range $side := list $bridge.source $bridge.target }}
              {{- if $side.credential }}
              - key: {{ printf "%s.nk" $side.credential | quote }}
                path: {{ printf "%s.nk" $side.credential | quote }}
              {{- end }}
              {{- end }}
        {{- end }}
        {{- if $cas }}
        {{- include "fractal.caVolumes" $cas | nindent 8 }}
        {{- end }}
{{- end -}}


{{/*
The ConfigMap holding the contracts' descriptor set for one level's bridges, when
`contracts.file` names a chart file: the bridges mount it and a change to it restarts them (a
bridge reads its descriptors once, at start, and its routes resume where they stopped).
Context: dict with root and level.
*/}}
{{- define "fractal.contracts" -}}
{{- $root := .root -}}
{{- if and $root.Values.contracts $root.Values.contracts.file }}
{{- $data := include "fractal.contractsData" $root }}
{{- if not $data }}
{{- fail (printf "contracts.file: no chart file files/%s" $root.Values.contracts.file) }}
{{- end }}
{{- $name := include "fractal.contractsConfigMap" . }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" (dict "root" $root "component" "contracts" "name" $name "subsystem" .level.subsystem "hub" .level.hub.name "clientOf" list) | nindent 4 }}
binaryData:
  contracts.pb: {{ $data }}
{{- end }}
{{- end -}}

{{/* The descriptor set of `contracts.file`, base64-encoded; empty if there is none. */}}
{{- define "fractal.contractsData" -}}
{{- if and .Values.contracts .Values.contracts.file -}}
{{- .Files.Get (printf "files/%s" .Values.contracts.file) | b64enc -}}
{{- end -}}
{{- end -}}

{{/*
The name of the ConfigMap a level's bridges mount their contracts from; empty if none.
Context: dict with root and level.
*/}}
{{- define "fractal.contractsConfigMap" -}}
{{- $contracts := .root.Values.contracts -}}
{{- if and $contracts $contracts.file $contracts.configMap -}}
{{- fail "contracts: give `file` or `configMap`, not both" -}}
{{- end -}}
{{- if $contracts -}}
{{- if $contracts.file -}}
{{- printf "%s-contracts" .level.subsystem | include "fractal.dnsName" -}}
{{- else if $contracts.configMap -}}
{{- $contracts.configMap -}}
{{- end -}}
{{- end -}}
{{- end -}}
