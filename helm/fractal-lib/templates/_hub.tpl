{{/*
One hub: a JetStream cluster of 1, 3 or 5 nodes (a StatefulSet), its client Service under a
stable name (`hub-<name>`), a headless Service for the routes, its configuration, and a
disruption budget. Nothing in `mode: external`, where an existing NATS is the hub.
Context: dict with root (the chart's root) and level (the subsystem's values: subsystem, hub).
*/}}
{{- define "fractal.hub" -}}
{{- $root := .root -}}
{{- $hub := .level.hub -}}
{{- if eq $hub.mode "cluster" -}}
{{- if not (has (int $hub.nodes) (list 1 3 5)) -}}
{{- fail (printf "hub.nodes: a hub has 1, 3 or 5 nodes, not %v (a cluster needs a majority to elect a leader)" $hub.nodes) -}}
{{- end -}}
{{- if gt (int $hub.streamReplicas) (int $hub.nodes) -}}
{{- fail (printf "hub.streamReplicas: %v replicas need at least as many nodes; the hub has %v" $hub.streamReplicas $hub.nodes) -}}
{{- end -}}
{{- $name := include "fractal.hubService" $hub.name -}}
{{- $ctx := dict "root" $root "component" "hub" "name" $name "subsystem" .level.subsystem "hub" $hub.name -}}
{{- $config := include "fractal.hubConfig" (dict "root" $root "hub" $hub) -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ printf "%s-config" $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
data:
  nats.conf: |
    {{- regexReplaceAll "(?m)^ +$" ($config | nindent 4) "" }}
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
    - name: client
      port: 4222
      targetPort: client
---
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-headless" $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  # Routes between nodes must resolve before the nodes are ready.
  publishNotReadyAddresses: true
  selector:
    {{- include "fractal.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: client
      port: 4222
      targetPort: client
    - name: cluster
      port: 6222
      targetPort: cluster
    - name: monitor
      port: 8222
      targetPort: monitor
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  serviceName: {{ printf "%s-headless" $name }}
  replicas: {{ $hub.nodes }}
  podManagementPolicy: Parallel
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Retain
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
      terminationGracePeriodSeconds: {{ $hub.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "fractal.podSecurityContext" . | nindent 8 }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "fractal.selectorLabels" $ctx | nindent 14 }}
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "fractal.selectorLabels" $ctx | nindent 14 }}
      containers:
        - name: nats
          image: {{ printf "%s:%s" $hub.image.repository $hub.image.tag | quote }}
          imagePullPolicy: {{ $hub.image.pullPolicy }}
          command: ["nats-server", "--config", "/etc/nats/nats.conf"]
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          ports:
            - name: client
              containerPort: 4222
            - name: cluster
              containerPort: 6222
            - name: monitor
              containerPort: 8222
          startupProbe:
            httpGet:
              path: /healthz?js-enabled-only=true
              port: monitor
            periodSeconds: 10
            failureThreshold: 90
          livenessProbe:
            httpGet:
              path: /healthz?js-enabled-only=true
              port: monitor
            periodSeconds: 30
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /healthz?js-server-only=true
              port: monitor
            periodSeconds: 10
            failureThreshold: 3
          lifecycle:
            preStop:
              exec:
                # Lame duck: stop taking clients, hand leadership over, then leave.
                command: ["nats-server", "--signal", "ldm=/var/run/nats/nats.pid"]
          resources:
            {{- include "fractal.resources" $hub.resources | nindent 12 }}
          securityContext:
            {{- include "fractal.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/nats
              readOnly: true
            - name: run
              mountPath: /var/run/nats
            - name: data
              mountPath: /data
            {{- if ($hub.tls | default dict).enabled }}
            - name: tls
              mountPath: /etc/nats/tls
              readOnly: true
            {{- end }}
        {{- if ($root.Values.monitoring | default dict).enabled }}
        {{- include "fractal.hubExporter" $root | nindent 8 }}
        {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ printf "%s-config" $name }}
        - name: run
          emptyDir:
            sizeLimit: 1Mi
        {{- if ($hub.tls | default dict).enabled }}
        - name: tls
          secret:
            secretName: {{ $hub.tls.secretName | quote }}
            defaultMode: 0400
        {{- end }}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "fractal.selectorLabels" $ctx | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with $hub.storage.storageClassName }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ printf "%dGi" (int $hub.storage.sizeGi) | quote }}
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
{{- $policy := $root.Values.networkPolicy | default dict }}
{{- if $policy.enabled }}
---
# The client port admits only the hub's own clients (pods labelled
# `hub.fractal.dev/<hub>: client`, in any namespace: services, the provisioning Job, bridges
# from and to it); the cluster port only the hub's nodes; the monitoring port only the
# monitoring namespace.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "fractal.selectorLabels" $ctx | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - ports:
        - port: 4222
          protocol: TCP
      from:
        - namespaceSelector: {}
          podSelector:
            matchLabels:
              {{ printf "hub.fractal.dev/%s" $hub.name }}: client
    - ports:
        - port: 6222
          protocol: TCP
      from:
        - podSelector:
            matchLabels:
              {{- include "fractal.selectorLabels" $ctx | nindent 14 }}
    - ports:
        - port: 8222
          protocol: TCP
      from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $policy.monitoringNamespace | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
A hub node's `nats.conf`: JetStream on the node's volume, with `max_file_store` a tenth below
the volume's size; routes to every node; the authorization block `fractal hub config` prints
(public keys and permissions only: the seeds stay in Secrets).
*/}}
{{- define "fractal.hubConfig" -}}
{{- $hub := .hub -}}
{{- $name := include "fractal.hubService" $hub.name -}}
server_name: $POD_NAME
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
pid_file: /var/run/nats/nats.pid
lame_duck_duration: {{ $hub.lameDuckDuration }}
lame_duck_grace_period: 10s
jetstream {
  store_dir: /data
  max_memory_store: {{ $hub.maxMemoryStoreMi }}MB
  max_file_store: {{ div (mul (int $hub.storage.sizeGi) 1024 9) 10 }}MB
}
{{- $tls := $hub.tls | default dict }}
{{- if $tls.enabled }}
tls {
  cert_file: /etc/nats/tls/tls.crt
  key_file: /etc/nats/tls/tls.key
  ca_file: /etc/nats/tls/ca.crt
  timeout: 5
}
{{- end }}
{{- if gt (int $hub.nodes) 1 }}
cluster {
  name: {{ $hub.name }}
  listen: 0.0.0.0:6222
  {{- if $tls.enabled }}
  tls {
    cert_file: /etc/nats/tls/tls.crt
    key_file: /etc/nats/tls/tls.key
    ca_file: /etc/nats/tls/ca.crt
    timeout: 5
  }
  {{- end }}
  routes: [
{{- range $i := until (int $hub.nodes) }}
    nats://{{ $name }}-{{ $i }}.{{ $name }}-headless.{{ $.root.Release.Namespace }}.svc.cluster.local:6222
{{- end }}
  ]
}
{{- end }}
{{- with $hub.authorization }}
{{ . }}
{{- end }}
{{- end -}}
