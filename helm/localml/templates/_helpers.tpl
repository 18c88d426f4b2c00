{{- define "localml.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "localml.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "localml.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* etcd client endpoints (host:port), bundled or external; empty: embedded store. */}}
{{- define "localml.etcdEndpoints" -}}
{{- $full := include "localml.fullname" . -}}
{{- if .Values.etcd.external.endpoints -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else if .Values.etcd.enabled -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "%s-etcd-%d.%s-etcd-headless.%s.svc:2379" $full $i $full $.Release.Namespace) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}
{{- end -}}

{{- define "localml.store" -}}
{{- $eps := include "localml.etcdEndpoints" . -}}
{{- if $eps -}}
etcd://{{ $eps }}/{{ trimAll "/" .Values.etcd.prefix }}
{{- else -}}
embedded
{{- end -}}
{{- end -}}

{{- define "localml.image" -}}
{{ .repository }}:{{ .tag }}
{{- end -}}

{{/* Refuse settings that cannot work, with the reason. */}}
{{- define "localml.validate" -}}
{{- if and (gt (int .Values.scheduler.replicas) 1) (not (include "localml.etcdEndpoints" .)) -}}
{{- fail "scheduler.replicas > 1 needs etcd: set etcd.enabled=true or etcd.external.endpoints (the embedded store serves one scheduler)" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.etcd.external.endpoints -}}
{{- fail "set either etcd.enabled (bundled etcd) or etcd.external.endpoints, not both" -}}
{{- end -}}
{{- if and (not .Values.workers.cpu.enabled) (not .Values.workers.gpu.enabled) -}}
{{- fail "enable workers.cpu or workers.gpu: a cluster without workers cannot serve" -}}
{{- end -}}
{{- end -}}
