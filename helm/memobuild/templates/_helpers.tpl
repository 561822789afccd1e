{{/* Names and labels. */}}
{{- define "memobuild.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's name: fullname-component, at most 63 characters. */}}
{{- define "memobuild.name" -}}
{{- printf "%s-%s" (include "memobuild.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "memobuild.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "memobuild.labels" -}}
{{ include "memobuild.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "memobuild.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* TOML from a map (the config tree): scalars and arrays of scalars first,
     then sub-tables as [path.key] and lists of tables as [[path.key]].
     Helm reads YAML numbers as float64: whole numbers are written as
     integers, since the config's sizes and counts are integers. Null values
     are left out. */}}
{{- define "memobuild.tomlValue" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}[{{- range $i, $v := . -}}{{ if $i }}, {{ end }}{{ include "memobuild.tomlValue" $v }}{{- end -}}]
{{- else -}}{{ . }}
{{- end -}}
{{- end -}}

{{- define "memobuild.isTableList" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}{{- if kindIs "map" (first .) -}}true{{- end -}}{{- end -}}
{{- end -}}

{{- define "memobuild.tomlTable" -}}
{{- $path := .path -}}
{{- range $k, $v := .table -}}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "memobuild.isTableList" $v)) }}
{{ $k }} = {{ include "memobuild.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := .table -}}
{{- $sub := ternary $k (printf "%s.%s" $path $k) (eq $path "") -}}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "memobuild.tomlTable" (dict "path" $sub "table" $v) -}}
{{- else if include "memobuild.isTableList" $v -}}
{{- range $item := $v }}

[[{{ $sub }}]]
{{- include "memobuild.tomlTable" (dict "path" $sub "table" $item) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
