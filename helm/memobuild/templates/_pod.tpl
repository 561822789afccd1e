{{/* Pieces every MemoBuild pod shares. */}}

{{- define "memobuild.scheme" -}}{{ ternary "grpcs" "grpc" .Values.tls.enabled }}{{- end -}}

{{- define "memobuild.casEndpoint" -}}
{{- printf "%s://%s:%d" (include "memobuild.scheme" .) (include "memobuild.name" (dict "root" . "component" "cas")) (int .Values.ports.cas) -}}
{{- end -}}

{{- define "memobuild.schedulerEndpoint" -}}
{{- printf "%s://%s:%d" (include "memobuild.scheme" .) (include "memobuild.name" (dict "root" . "component" "scheduler")) (int .Values.ports.scheduler) -}}
{{- end -}}

{{/* The flags of a role that calls another one (scheduler -> CAS, worker ->
     scheduler and CAS): the CA of the servers' certificate. */}}
{{- define "memobuild.clientArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-ca=/etc/memobuild/tls/ca.crt
{{- end }}
{{- end -}}

{{- define "memobuild.secretName" -}}
{{- include "memobuild.name" (dict "root" .root "component" .component) -}}
{{- end -}}

{{/* Environment: the store endpoints the config names as ${VAR}, and the
     client token. */}}
{{- define "memobuild.env" -}}
- name: MEMOBUILD_LOG
  value: info
{{- if .Values.postgresql.existingSecret.name }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.postgresql.existingSecret.name | quote }}, key: {{ .Values.postgresql.existingSecret.key | quote }}}
{{- else if .Values.postgresql.url }}
- name: DATABASE_URL
  value: {{ .Values.postgresql.url | quote }}
{{- else if .Values.postgresql.bundled.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "memobuild.secretName" (dict "root" . "component" "postgresql") }}, key: password}
- name: DATABASE_URL
  value: {{ printf "postgres://memobuild:$(POSTGRES_PASSWORD)@%s:5432/memobuild" (include "memobuild.name" (dict "root" . "component" "postgresql")) | quote }}
{{- end }}
{{- if .Values.redis.existingSecret.name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.existingSecret.name | quote }}, key: {{ .Values.redis.existingSecret.key | quote }}}
{{- else if .Values.redis.url }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- else if .Values.redis.bundled.enabled }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "memobuild.name" (dict "root" . "component" "redis")) | quote }}
{{- end }}
{{- if ne (include "memobuild.embedded" .) "true" }}
- name: S3_BUCKETS
  value: {{ join "," .Values.s3.buckets | quote }}
- name: S3_ENDPOINT
  value: {{ ternary (printf "http://%s:9000" (include "memobuild.name" (dict "root" . "component" "s3"))) .Values.s3.endpoint .Values.s3.bundled.enabled | quote }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- $s3secret := include "memobuild.s3SecretName" . }}
{{- if $s3secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $s3secret | quote }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $s3secret | quote }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- end }}
{{- $token := include "memobuild.clientTokenSecretName" . }}
{{- if $token }}
- name: MEMOBUILD_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $token | quote }}, key: token}
{{- end }}
{{- end -}}

{{- define "memobuild.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}{{ .Values.s3.existingSecret }}
{{- else if or .Values.s3.accessKeyId .Values.s3.bundled.enabled -}}{{ include "memobuild.secretName" (dict "root" . "component" "s3") }}
{{- end -}}
{{- end -}}

{{- define "memobuild.clientTokenSecretName" -}}
{{- if .Values.auth.enabled -}}
{{- if .Values.auth.clientTokenSecret -}}{{ .Values.auth.clientTokenSecret }}
{{- else if .Values.auth.clientToken -}}{{ include "memobuild.secretName" (dict "root" . "component" "client-token") }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "memobuild.volumes" -}}
- name: config
  configMap:
    name: {{ include "memobuild.fullname" . }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ .Values.auth.existingSecret | default (include "memobuild.secretName" (dict "root" . "component" "principals")) | quote }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret | default (include "memobuild.secretName" (dict "root" . "component" "tls")) | quote }}
{{- end }}
{{- end -}}

{{- define "memobuild.volumeMounts" -}}
- name: config
  mountPath: /etc/memobuild/memobuild.toml
  subPath: memobuild.toml
  readOnly: true
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/memobuild/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/memobuild/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod annotations: the config checksum rolls pods when the config changes. */}}
{{- define "memobuild.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "memobuild.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* nodeSelector, tolerations, affinity and resources of one component's values. */}}
{{- define "memobuild.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "memobuild.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A container's security context: non-root, read-only root filesystem. */}}
{{- define "memobuild.restrictedContainer" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "memobuild.listenPort" -}}{{ splitList ":" .Values.config.listen | last }}{{- end -}}
{{- define "memobuild.adminPort" -}}{{ splitList ":" .Values.config.admin_listen | last }}{{- end -}}
