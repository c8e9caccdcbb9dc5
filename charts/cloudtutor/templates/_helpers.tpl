{{/* Names, labels and shared snippets. */}}

{{- define "cloudtutor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cloudtutor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cloudtutor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cloudtutor.labels" -}}
helm.sh/chart: {{ include "cloudtutor.chart" . }}
app.kubernetes.io/name: {{ include "cloudtutor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudtutor
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest") */}}
{{- define "cloudtutor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudtutor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cloudtutor.componentLabels" -}}
{{ include "cloudtutor.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cloudtutor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cloudtutor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest: (dict "image" .Values.image "root" $) */}}
{{- define "cloudtutor.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* The six services, in pipeline order. */}}
{{- define "cloudtutor.services" -}}
ingest superres labeler trainer publisher controller
{{- end }}

{{/* Services scaled by an HPA when enabled (brief §10.6). */}}
{{- define "cloudtutor.hpaServices" -}}
ingest superres
{{- end }}

{{/* Singletons: one owner of updates in flight (publisher) and of knobs (controller). */}}
{{- define "cloudtutor.singletons" -}}
publisher controller
{{- end }}

{{/* Never two at once, even during a rollout: the singletons, and the trainer,
     whose per-device state has one writer until device leases exist. */}}
{{- define "cloudtutor.recreate" -}}
trainer publisher controller
{{- end }}

{{- define "cloudtutor.mosquitto.fullname" -}}
{{ include "cloudtutor.fullname" . }}-mosquitto
{{- end }}

{{- define "cloudtutor.redis.fullname" -}}
{{ include "cloudtutor.fullname" . }}-redis
{{- end }}

{{/* Secret names: an existing one, else the chart's own. */}}
{{- define "cloudtutor.mqttSecret" -}}
{{- if .Values.mosquitto.enabled }}
{{- default (printf "%s-mqtt-services" (include "cloudtutor.fullname" .)) .Values.mosquitto.auth.existingSecret }}
{{- else }}
{{- required "externalMqtt.existingSecret is required when mosquitto.enabled is false" .Values.externalMqtt.existingSecret }}
{{- end }}
{{- end }}

{{- define "cloudtutor.devicesSecret" -}}
{{- default (printf "%s-mosquitto-devices" (include "cloudtutor.fullname" .)) .Values.mosquitto.auth.devicesSecret }}
{{- end }}

{{- define "cloudtutor.redisSecret" -}}
{{- if .Values.redis.enabled }}
{{- default (printf "%s-redis" (include "cloudtutor.fullname" .)) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{- define "cloudtutor.signingSecret" -}}
{{- default (printf "%s-signing-key" (include "cloudtutor.fullname" .)) .Values.signing.existingSecret }}
{{- end }}

{{- define "cloudtutor.modelsClaim" -}}
{{- default (printf "%s-models" (include "cloudtutor.fullname" .)) .Values.models.persistence.existingClaim }}
{{- end }}

{{/* A password kept across upgrades: the live Secret's value, else a new random one. (dict "root" $ "name" NAME "key" KEY) */}}
{{- define "cloudtutor.keptPassword" -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $live (index $live.data .key) }}
{{- index $live.data .key }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}

{{/* The connection part of config.yaml that the chart knows; .Values.config wins. */}}
{{- define "cloudtutor.connectionConfig" -}}
mqtt:
  {{- if .Values.mosquitto.enabled }}
  host: {{ include "cloudtutor.mosquitto.fullname" . }}
  port: {{ .Values.mosquitto.service.port }}
  username: {{ .Values.mosquitto.auth.servicesUsername }}
  {{- else }}
  host: {{ required "externalMqtt.host is required when mosquitto.enabled is false" .Values.externalMqtt.host }}
  port: {{ .Values.externalMqtt.port }}
  username: {{ .Values.externalMqtt.username }}
  {{- if .Values.externalMqtt.tls.enabled }}
  tls:
    ca_file: /etc/cloudtutor/mqtt-ca/ca.crt
  {{- end }}
  {{- end }}
redis:
  {{- if .Values.redis.enabled }}
  url: redis://{{ include "cloudtutor.redis.fullname" . }}:6379/0
  {{- else }}
  url: {{ required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url }}
  {{- end }}
metrics_port: {{ .Values.metrics.port }}
models:
  data_root: {{ .Values.models.mountPath }}
publisher:
  signing_key: /etc/cloudtutor/signing/{{ .Values.signing.key }}
{{- end }}
