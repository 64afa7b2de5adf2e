{{/* Shared names, labels and pod building blocks. */}}

{{- define "grayroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "grayroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "grayroute.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects. Usage: include "grayroute.componentName" (list $ "router") */}}
{{- define "grayroute.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "grayroute.fullname" $ctx | trunc 48 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "grayroute.controlPlane.fullname" -}}
{{- include "grayroute.componentName" (list . "control-plane") -}}
{{- end -}}

{{- define "grayroute.router.fullname" -}}
{{- include "grayroute.componentName" (list . "router") -}}
{{- end -}}

{{- define "grayroute.reconciler.fullname" -}}
{{- include "grayroute.componentName" (list . "reconciler") -}}
{{- end -}}

{{- define "grayroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grayroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "grayroute.labels" -}}
helm.sh/chart: {{ include "grayroute.chart" . }}
{{ include "grayroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grayroute
{{- end -}}

{{/* Usage: include "grayroute.componentSelectorLabels" (list $ "router") */}}
{{- define "grayroute.componentSelectorLabels" -}}
{{ include "grayroute.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Usage: include "grayroute.componentLabels" (list $ "router") */}}
{{- define "grayroute.componentLabels" -}}
{{ include "grayroute.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "grayroute.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Namespaces the reconciler manages: the release namespace, the listed ones and
those of kubernetes pools, without duplicates. Returned as JSON; read it with
fromJsonArray.
*/}}
{{- define "grayroute.managedNamespaces" -}}
{{- $namespaces := list .Release.Namespace -}}
{{- range .Values.reconciler.managedNamespaces -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- range .Values.pools -}}
{{- if and (eq .kind "kubernetes") .namespace -}}
{{- $namespaces = append $namespaces .namespace -}}
{{- end -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/* Pools as `grayroute pools import` reads them (snake_case keys). */}}
{{- define "grayroute.poolsJson" -}}
{{- $pools := list -}}
{{- $names := dict -}}
{{- range .Values.pools -}}
{{- if hasKey $names .name -}}
{{- fail (printf "pools: the name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- $namespace := .namespace -}}
{{- if and (not $namespace) (eq .kind "kubernetes") -}}
{{- $namespace = $.Release.Namespace -}}
{{- end -}}
{{- $pool := dict
      "name" .name
      "gpu_arch" .gpuArch
      "kind" .kind
      "namespace" ($namespace | default nil)
      "node_selector" (.nodeSelector | default dict)
      "runtime_image" (.runtimeImage | default nil)
      "trt_version" (.trtVersion | default nil)
      "allowed_endpoints" (.allowedEndpoints | default list) -}}
{{- /* a string, so the API reads the exact decimal the values file wrote */ -}}
{{- if hasKey . "gpuHourlyPrice" }}{{ $_ := set $pool "gpu_hourly_price" (toString .gpuHourlyPrice) }}{{ end -}}
{{- with .currency }}{{ $_ := set $pool "currency" . }}{{ end -}}
{{- with .gpusPerReplica }}{{ $_ := set $pool "gpus_per_replica" . }}{{ end -}}
{{- with .engineCredentials -}}
{{- $credentials := dict -}}
{{- with .serviceAccount }}{{ $_ := set $credentials "service_account" . }}{{ end -}}
{{- with .secret }}{{ $_ := set $credentials "secret" . }}{{ end -}}
{{- $_ := set $pool "engine_credentials" $credentials -}}
{{- end -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{- toPrettyJson $pools -}}
{{- end -}}

{{/* One env var read from an existing Secret. Usage: include "grayroute.secretEnv" (list "GRAYROUTE_X" .Values.secrets.x "secrets.x") */}}
{{- define "grayroute.secretEnv" -}}
{{- $ref := index . 1 -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "Set %s.name to the name of an existing Secret (see the chart's README, Install)." (index . 2)) $ref.name | quote }}
      key: {{ $ref.key | quote }}
{{- end -}}

{{/*
The Secrets the chart reads but never creates; a missing name stops rendering
with one sentence naming every missing value (a JSON-schema "required" would
only say "missing property 'name'").
*/}}
{{- define "grayroute.checkSecrets" -}}
{{- $missing := list -}}
{{- range $key := list "database" "redis" "sessionKey" "routerToken" -}}
{{- if not (get (get $.Values.secrets $key | default dict) "name") -}}
{{- $missing = append $missing (printf "secrets.%s.name" $key) -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "Set %s to the names of existing Secrets in the release namespace: the chart reads credentials only from Secrets you create (see the chart's README, Install; ci/default-values.yaml holds names for linting)." (join ", " $missing)) -}}
{{- end -}}
{{- end -}}

{{- define "grayroute.env.logLevel" -}}
- name: GRAYROUTE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{- define "grayroute.env.database" -}}
{{ include "grayroute.secretEnv" (list "GRAYROUTE_DATABASE_URL" .Values.secrets.database "secrets.database") }}
{{- end -}}

{{- define "grayroute.env.redis" -}}
{{- include "grayroute.checkSecrets" . -}}
{{ include "grayroute.secretEnv" (list "GRAYROUTE_REDIS_URL" .Values.secrets.redis "secrets.redis") }}
{{- end -}}

{{- define "grayroute.env.sessionKey" -}}
{{ include "grayroute.secretEnv" (list "GRAYROUTE_SECRET_KEY" .Values.secrets.sessionKey "secrets.sessionKey") }}
{{- end -}}

{{/*
Environment of every process that opens the database (control plane, hook
Jobs, reconciler). The session key goes with the database URL because the
settings object refuses a default secret outside the embedded demo.
*/}}
{{- define "grayroute.env.backend" -}}
{{- include "grayroute.checkSecrets" . -}}
{{ include "grayroute.env.logLevel" . }}
{{ include "grayroute.env.database" . }}
{{ include "grayroute.env.redis" . }}
{{ include "grayroute.env.sessionKey" . }}
{{- end -}}

{{/* Session cookies are HTTPS-only when asked, or by default when the Ingress terminates TLS. */}}
{{- define "grayroute.cookieSecure" -}}
{{- if kindIs "bool" .Values.controlPlane.secureCookies -}}
{{- .Values.controlPlane.secureCookies -}}
{{- else -}}
{{- and .Values.ingress.enabled (gt (len .Values.ingress.tls) 0) -}}
{{- end -}}
{{- end -}}

{{/*
Service links would inject variables such as GRAYROUTE_CONTROL_PLANE_PORT
(from a release named "grayroute") into the GRAYROUTE_ settings namespace.
*/}}
{{- define "grayroute.podDefaults" -}}
enableServiceLinks: false
{{- end -}}

{{/* Pod-level hardening shared by every workload. */}}
{{- define "grayroute.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurity.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.podSecurity.runAsGroup }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level hardening shared by every container. */}}
{{- define "grayroute.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The writable scratch directory under a read-only root filesystem. */}}
{{- define "grayroute.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "grayroute.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}


{{/*
The pod template of a hook Job. Usage:
  include "grayroute.jobPodTemplate" (dict "ctx" $ "component" "db-upgrade" "args" (list …) "poolsConfigMap" "")
*/}}
{{- define "grayroute.jobPodTemplate" -}}
{{- $ := .ctx -}}
metadata:
  labels:
    {{- include "grayroute.componentLabels" (list $ .component) | nindent 4 }}
spec:
  restartPolicy: Never
  # Jobs talk to the database only, never to the Kubernetes API.
  automountServiceAccountToken: false
  {{- include "grayroute.podDefaults" $ | nindent 2 }}
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . | quote }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "grayroute.podSecurityContext" $ | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "grayroute.image" $ | quote }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "grayroute.env.backend" $ | nindent 8 }}
      resources:
        {{- toYaml $.Values.jobs.resources | nindent 8 }}
      securityContext:
        {{- include "grayroute.containerSecurityContext" $ | nindent 8 }}
      volumeMounts:
        {{- include "grayroute.tmpVolumeMount" $ | nindent 8 }}
        {{- if .poolsConfigMap }}
        - name: pools
          mountPath: /etc/grayroute
          readOnly: true
        {{- end }}
  volumes:
    {{- include "grayroute.tmpVolume" $ | nindent 4 }}
    {{- if .poolsConfigMap }}
    - name: pools
      configMap:
        name: {{ .poolsConfigMap }}
    {{- end }}
{{- end -}}
