{{/*
The provisioning Job of one hub (a Helm hook after each install and upgrade): it creates the
hub's streams and the view buckets its services list, with the provisioner's credential, so
that service pods hold no right to create streams. Services started before it wait for it.
Context: dict with root, level (subsystem, hub, credentials, provisioning) and views (list).
*/}}
{{- define "fractal.provision" -}}
{{- $root := .root -}}
{{- $level := .level -}}
{{- $hub := $level.hub -}}
{{- $name := printf "%s-provision" (include "fractal.hubService" $hub.name) -}}
{{- $ctx := dict "root" $root "component" "provision" "name" $name "subsystem" $level.subsystem "hub" $hub.name "clientOf" (list $hub.name) -}}
{{- $urls := ternary $hub.externalUrls (list (include "fractal.hubUrl" $hub.name)) (eq $hub.mode "external") -}}
{{- $credential := $level.provisioning.credential -}}
{{- $args := list "hub" "provision" $hub.name "--replicas" (toString $hub.streamReplicas) -}}
{{- range $urls }}{{ $args = concat $args (list "--url" .) }}{{ end -}}
{{- range .views }}{{ $args = concat $args (list "--view" .) }}{{ end -}}
{{- if $credential }}{{ $args = concat $args (list "--seed-file" (printf "/etc/fractal/credentials/%s.nk" $credential)) }}{{ end }}
{{- $ca := ternary $hub.tls.secretName "" (($hub.tls | default dict).enabled | default false) -}}
{{- $cas := compact (list $ca) -}}
{{- if $ca }}{{ $args = concat $args (list "--ca-file" (printf "/etc/fractal/tls/%s/ca.crt" $ca)) }}{{ end }}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ $name }}
  labels:
    {{- include "fractal.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/hook: post-install,post-upgrade
    helm.sh/hook-delete-policy: before-hook-creation
spec:
  backoffLimit: 10
  template:
    metadata:
      labels:
        {{- include "fractal.labels" $ctx | nindent 8 }}
    spec:
      restartPolicy: OnFailure
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "fractal.podSecurityContext" . | nindent 8 }}
      containers:
        - name: provision
          image: {{ printf "%s:%s" $root.Values.image.repository ($root.Values.image.tag | default $root.Chart.AppVersion) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/local/bin/fractal"]
          args:
            {{- range $args }}
            - {{ . | quote }}
            {{- end }}
          resources:
            requests:
              cpu: 10m
              memory: 32Mi
            limits:
              memory: 128Mi
          securityContext:
            {{- include "fractal.containerSecurityContext" . | nindent 12 }}
          {{- if or $credential $ca }}
          volumeMounts:
            {{- if $credential }}
            - name: credentials
              mountPath: /etc/fractal/credentials
              readOnly: true
            {{- end }}
            {{- if $cas }}
            {{- include "fractal.caMounts" $cas | nindent 12 }}
            {{- end }}
          {{- end }}
      {{- if or $credential $ca }}
      volumes:
        {{- if $credential }}
        - name: credentials
          secret:
            secretName: {{ $level.credentials.secretName | quote }}
            defaultMode: 0400
            items:
              - key: {{ printf "%s.nk" $credential | quote }}
                path: {{ printf "%s.nk" $credential | quote }}
        {{- end }}
        {{- if $cas }}
        {{- include "fractal.caVolumes" $cas | nindent 8 }}
        {{- end }}
      {{- end }}
{{- end -}}
