{{/*
The chart name, or nameOverride.
*/}}
{{- define "downloader.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>" (or the release name alone when it already holds the chart name), or
fullnameOverride; 47 characters at most, so that suffixes up to "-test-connection" and
"-redis-headless" still fit in 63.
*/}}
{{- define "downloader.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "downloader.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "downloader.labels" -}}
helm.sh/chart: {{ include "downloader.chart" .ctx }}
{{ include "downloader.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: downloader
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "downloader.selectorLabels" -}}
app.kubernetes.io/name: {{ include "downloader.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
An image reference; call with (dict "ctx" $ "image" .Values.api.image). The tag defaults
to the chart's appVersion.
*/}}
{{- define "downloader.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Names of the shared objects.
*/}}
{{- define "downloader.configMapName" -}}
{{- printf "%s-config" (include "downloader.fullname" .) }}
{{- end }}

{{- define "downloader.secretName" -}}
{{- default (include "downloader.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "downloader.redisName" -}}
{{- printf "%s-redis" (include "downloader.fullname" .) }}
{{- end }}

{{/*
"true" when the chart deploys its own Redis: no external URL and no Sentinel.
*/}}
{{- define "downloader.redisBundled" -}}
{{- if not (or .Values.redis.external.url .Values.redis.external.sentinels) }}true{{ end }}
{{- end }}

{{/*
DOWNLOADER_REDIS_URL: the external URL, or the bundled Redis' Service.
*/}}
{{- define "downloader.redisUrl" -}}
{{- if .Values.redis.external.url }}
{{- .Values.redis.external.url }}
{{- else if .Values.redis.external.sentinels }}
{{- /* Sentinel names the host; the URL only carries the database number. */ -}}
redis://{{ .Values.redis.external.masterName | default "sentinel" }}/0
{{- else }}
{{- printf "redis://%s.%s.svc:6379/0" (include "downloader.redisName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
ServiceAccount names; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "downloader.serviceAccountName" -}}
{{- $values := index .ctx.Values .component }}
{{- if $values.serviceAccount.create }}
{{- default (printf "%s-%s" (include "downloader.fullname" .ctx) .component) $values.serviceAccount.name }}
{{- else }}
{{- default "default" $values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Whether the files live on a shared claim, and its name.
*/}}
{{- define "downloader.filesClaim" -}}
{{- $pvc := .Values.storage.filesystem.persistentVolumeClaim }}
{{- if and (eq .Values.storage.backend "filesystem") $pvc.enabled }}
{{- default (printf "%s-files" (include "downloader.fullname" .)) $pvc.existingClaim }}
{{- end }}
{{- end }}

{{/*
Annotations that roll pods when the settings change.
*/}}
{{- define "downloader.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/*
The environment of every downloader container: the ConfigMap, then the Secret.
*/}}
{{- define "downloader.envFrom" -}}
- configMapRef:
    name: {{ include "downloader.configMapName" . }}
- secretRef:
    name: {{ include "downloader.secretName" . }}
{{- end }}

{{/*
Writable paths of a downloader pod under its read-only root: /tmp and the tmp dir are
emptyDirs; the storage root is the shared claim, or an emptyDir.
*/}}
{{- define "downloader.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: downloads
  mountPath: {{ .Values.storage.tmpDir }}
{{- if eq .Values.storage.backend "filesystem" }}
- name: files
  mountPath: {{ .Values.storage.filesystem.root }}
{{- end }}
{{- end }}

{{- define "downloader.volumes" -}}
- name: tmp
  emptyDir: {}
- name: downloads
  emptyDir: {}
{{- if eq .Values.storage.backend "filesystem" }}
- name: files
{{- with include "downloader.filesClaim" . }}
  persistentVolumeClaim:
    claimName: {{ . }}
{{- else }}
  # Not shared between pods: use S3 (or storage.filesystem.persistentVolumeClaim) in production.
  emptyDir: {}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod-level fields shared by the chart's pods; call with (dict "ctx" $ "values" .Values.api).
hostNetwork puts the pod in the node's network namespace (no pod network needed); the pod
then still resolves cluster names first (ClusterFirstWithHostNet), as its other pods do.
*/}}
{{- define "downloader.podPlacement" -}}
{{- if .values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- /* The update strategy of the api and notifier Deployments: the user's `strategy`, else on
the host network replace pods one at a time without a surge: a surge pod would need the ports
its predecessor still holds on the node and stay Pending, and the rollout would never end. */}}
{{- define "downloader.strategy" -}}
{{- if .strategy }}
strategy:
  {{- toYaml .strategy | nindent 2 }}
{{- else if .hostNetwork }}
strategy:
  type: RollingUpdate
  rollingUpdate: {maxSurge: 0, maxUnavailable: 1}
{{- end }}
{{- end }}
