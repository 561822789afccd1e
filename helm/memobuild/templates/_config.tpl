{{/* The whole config tree (YAML): values.config with the mode's default
     store trees, and the sections the chart owns ([auth], [tls], the
     scheduler's store, the worker's paths). */}}
{{- define "memobuild.embeddedStores" -}}
cas:
  type: evicting
  max_bytes: {{ int64 (ternary .Values.server.casMaxBytes .Values.cas.maxBytes (eq .Values.mode "allInOne")) }}
  metadata: {type: sqlite, path: /var/lib/memobuild/cas.db}
  inner: {type: filesystem, path: /var/lib/memobuild/cas, sync: true}
action_cache:
  type: filesystem
  path: /var/lib/memobuild/ac
{{- end -}}

{{- define "memobuild.postgresMetadata" -}}
{type: postgres, url: "${DATABASE_URL}", schema: {{ .Values.postgresql.schema | quote }}}
{{- end -}}

{{- define "memobuild.clusterStores" -}}
cas:
  type: metered
  name: cas
  inner:
    type: evicting
    max_bytes: {{ int64 .Values.cas.maxBytes }}
    metadata: {{ include "memobuild.postgresMetadata" . }}
    inner:
      type: existence_cached
      metadata: {{ include "memobuild.postgresMetadata" . }}
      {{- if include "memobuild.redisConfigured" . }}
      redis: {url: "${REDIS_URL}", key_prefix: {{ .Values.redis.keyPrefix | quote }}, ttl_seconds: {{ int64 .Values.redis.ttlSeconds }}}
      {{- end }}
      inner:
        type: tiered
        fast:
          type: evicting
          max_bytes: {{ int64 .Values.cas.localCache.maxBytes }}
          metadata: {type: sqlite, path: /var/cache/memobuild/local.db}
          inner: {type: filesystem, path: /var/cache/memobuild/blobs, sync: false}
        slow:
          type: metered
          name: s3
          inner:
            type: s3_shards
            buckets: "${S3_BUCKETS}"
            endpoint: "${S3_ENDPOINT:-}"
            region: {{ .Values.s3.region | quote }}
            path_style: {{ .Values.s3.pathStyle }}
            create_bucket: {{ .Values.s3.createBucket }}
action_cache:
  type: metered
  name: action_cache
  inner:
    type: action_index
    metadata: {{ include "memobuild.postgresMetadata" . }}
{{- end -}}

{{- define "memobuild.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret.name .Values.redis.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{- define "memobuild.embedded" -}}
{{- if or (eq .Values.mode "allInOne") (eq .Values.cas.storage "embedded") -}}true{{- end -}}
{{- end -}}

{{- define "memobuild.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $stores := ternary (include "memobuild.embeddedStores" .) (include "memobuild.clusterStores" .) (eq (include "memobuild.embedded" .) "true") | fromYaml -}}
{{- if empty $config.cas }}{{- $_ := set $config "cas" $stores.cas -}}{{- end -}}
{{- if empty $config.action_cache }}{{- $_ := set $config "action_cache" $stores.action_cache -}}{{- end -}}
{{- $scheduler := deepCopy $config.scheduler -}}
{{- if eq .Values.mode "allInOne" -}}
{{- $_ := set $scheduler "store" (dict "type" "sqlite" "path" "/var/lib/memobuild/scheduler.db") -}}
{{- else -}}
{{- $_ := set $scheduler "store" (dict "type" "postgres" "url" "${DATABASE_URL}" "schema" (printf "%s_scheduler" .Values.postgresql.schema)) -}}
{{- end -}}
{{- $_ := set $config "scheduler" $scheduler -}}
{{- $worker := deepCopy $config.worker -}}
{{- $_ := set $worker "work_dir" "/var/lib/memobuild/worker" -}}
{{- if eq .Values.workers.containerd.mode "host" -}}
{{- $_ := set $worker "containerd_address" "/run/containerd/containerd.sock" -}}
{{- end -}}
{{- $_ := set $config "worker" $worker -}}
{{- if .Values.auth.enabled -}}
{{- $_ := set $config "auth" (dict "principals_file" "/etc/memobuild/auth/principals.toml") -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" "/etc/memobuild/tls/tls.crt" "key" "/etc/memobuild/tls/tls.key" -}}
{{- if .Values.tls.clientCertificates -}}{{- $_ := set $tls "client_ca" "/etc/memobuild/tls/ca.crt" -}}{{- end -}}
{{- $_ := set $config "tls" $tls -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
