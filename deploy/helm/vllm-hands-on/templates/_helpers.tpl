{{/* Names and labels shared by every template. */}}
{{- define "course.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "course.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: course.selector (list . "vllm") */}}
{{- define "course.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The router's workers: each replica's stable DNS name through the headless Service. */}}
{{- define "course.workerUrls" -}}
{{- $name := printf "%s-vllm" (include "course.fullname" .) -}}
{{- range $i, $_ := until (int .Values.vllm.replicas) }}
- http://{{ $name }}-{{ $i }}.{{ $name }}.{{ $.Release.Namespace }}.svc:{{ $.Values.vllm.port }}
{{- end }}
{{- end -}}
