{{/*
Name helpers, as in `helm create`: names are truncated to 63 characters (DNS label limit).
*/}}
{{- define "leaf-train.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leaf-train.fullname" -}}
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

{{- define "leaf-train.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource names of the two components (Job names get a suffix: keep room for it). */}}
{{- define "leaf-train.serving.fullname" -}}
{{- printf "%s-serve" (include "leaf-train.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leaf-train.training.fullname" -}}
{{- /* CronJob names are limited to 52 characters: the controller appends an 11-character suffix. */ -}}
{{- printf "%s-train" (include "leaf-train.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* Common labels: the app.kubernetes.io/* recommended set. */}}
{{- define "leaf-train.labels" -}}
helm.sh/chart: {{ include "leaf-train.chart" . }}
{{ include "leaf-train.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: leaf-train
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "leaf-train.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leaf-train.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per-component labels; the selector labels of a component never change across upgrades. */}}
{{- define "leaf-train.serving.selectorLabels" -}}
{{ include "leaf-train.selectorLabels" . }}
app.kubernetes.io/component: serving
{{- end }}

{{- define "leaf-train.training.selectorLabels" -}}
{{ include "leaf-train.selectorLabels" . }}
app.kubernetes.io/component: training
{{- end }}

{{/* Training's ServiceAccount (the name it always had, so IRSA trust policies keep matching). */}}
{{- define "leaf-train.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "leaf-train.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Serving's own ServiceAccount: never training's, so it never gets training's IRSA role. */}}
{{- define "leaf-train.serving.serviceAccountName" -}}
{{- if .Values.serving.serviceAccount.create }}
{{- default (include "leaf-train.serving.fullname" .) .Values.serving.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serving.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
[registry/]repository:tag or @digest; the tag defaults to the chart's appVersion.
The images are built from this repository (`make images`) and pushed to the user's own registry, so
the chart has no default repositories (as `required` values in Helm's own guide): rendering without
them stops with one line naming what to set, instead of pods that end in ImagePullBackOff.
*/}}
{{- define "leaf-train.image" -}}
{{- include "leaf-train.requireImages" .root }}
{{- $ref := .image.repository }}
{{- if .image.registry }}
{{- $ref = printf "%s/%s" (trimSuffix "/" .image.registry) .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "leaf-train.requireImages" -}}
{{- $missing := list }}
{{- if and (or .Values.training.cronJob.enabled .Values.training.runOnInstall) (not .Values.training.image.repository) }}
{{- $missing = append $missing "training.image.repository" }}
{{- end }}
{{- if and .Values.serving.enabled (not .Values.serving.image.repository) }}
{{- $missing = append $missing "serving.image.repository" }}
{{- end }}
{{- if $missing }}
{{- fail (printf "set %s (and *.image.registry): the images you built with `make images` and pushed to your registry (README: On a cluster)" (join " and " $missing)) }}
{{- end }}
{{- end }}

{{/* The model URI the server loads: the registry pointer of modelName. */}}
{{- define "leaf-train.modelUri" -}}
{{- printf "%s/%s/latest.json" (trimSuffix "/" .Values.s3.output) .Values.modelName }}
{{- end }}

{{/* Where the server reads the review token: a read-only mount of serving.review.existingSecret. */}}
{{- define "leaf-train.reviewTokenDir" -}}
/etc/leaf-serve/review
{{- end }}

{{- define "leaf-train.reviewTokenFile" -}}
{{ include "leaf-train.reviewTokenDir" . }}/token
{{- end }}

{{/*
S3 environment of one component: endpoint and region are shared, credentials are the component's
own (`creds` is .Values.s3 for training, .Values.serving.s3 for serving). Static keys come only
from an existing Secret; without one the SDK's default chain applies (IRSA web identity, instance
profile).
*/}}
{{- define "leaf-train.s3Env" -}}
{{- $root := .root }}
{{- if $root.Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $root.Values.s3.endpoint | quote }}
{{- end }}
{{- if $root.Values.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ $root.Values.s3.region | quote }}
{{- end }}
{{- if .creds.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .creds.existingSecret }}
      key: {{ .creds.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .creds.existingSecret }}
      key: {{ .creds.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/*
Serving must not run with training's credentials: it faces the network, and training's may rewrite
latest.json, delete versions and read the photos. Refuse the settings that would silently leave it
with none, or with the node's, when training has its own.
*/}}
{{- define "leaf-train.validateServingCredentials" -}}
{{- if and .Values.serving.enabled .Values.s3.existingSecret (not .Values.serving.s3.existingSecret) }}
{{- fail (printf "serving.s3.existingSecret: expected the name of a Secret with read-only S3 keys for the server, because s3.existingSecret (%s) is set for training; received none. The server no longer shares training's keys (docs/kubernetes.md, Credentials)" .Values.s3.existingSecret) }}
{{- end }}
{{- if and .Values.serving.enabled .Values.serving.s3.existingSecret (eq .Values.serving.s3.existingSecret .Values.s3.existingSecret) }}
{{- fail (printf "serving.s3.existingSecret: expected a Secret other than training's s3.existingSecret; received the same one (%s)" .Values.s3.existingSecret) }}
{{- end }}
{{- $irsa := "eks.amazonaws.com/role-arn" }}
{{- if and .Values.serving.enabled (hasKey .Values.serviceAccount.annotations $irsa) (not (hasKey .Values.serving.serviceAccount.annotations $irsa)) }}
{{- fail (printf "serving.serviceAccount.annotations: expected %s naming the server's read-only role, because training's ServiceAccount has one; received none" $irsa) }}
{{- end }}
{{- end }}

{{/*
A config map (camelCase key -> value) as PREFIX_SNAKE_CASE environment entries of a ConfigMap's
data; null values are left out so the program's own default applies.
*/}}
{{- define "leaf-train.envData" -}}
{{- $prefix := .prefix }}
{{- range $key, $value := .config }}
{{- if not (kindIs "invalid" $value) }}
{{- /* YAML numbers from values files are float64: print 10000000 as such, not as 1e+07. */ -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
{{ printf "%s%s" $prefix (snakecase $key | upper) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* GPU requests/limits merged into a resources block. */}}
{{- define "leaf-train.resources" -}}
{{- $res := deepCopy .resources }}
{{- if .gpu.enabled }}
{{- $_ := set $res "limits" (merge (dict .gpu.resourceName (toString .gpu.count)) (default dict $res.limits)) }}
{{- $_ := set $res "requests" (merge (dict .gpu.resourceName (toString .gpu.count)) (default dict $res.requests)) }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
Checkov skips. Each names a check the chart fails on purpose and why; the policy test
accepts exactly these and nothing else.
*/}}
{{- define "leaf-train.checkovImageSkips" -}}
checkov.io/skip1: "CKV_K8S_43=Images are referenced by tag by default so the chart works before a digest is known; set *.image.digest to pin by digest"
checkov.io/skip2: "CKV_K8S_15=IfNotPresent is the right policy for immutable version tags and digests; Always adds a registry round-trip per pod start"
{{- end }}

{{/* `creds`: the component's S3 settings (.Values.s3 or .Values.serving.s3). */}}
{{- define "leaf-train.checkovSecretEnvSkip" -}}
{{- if .existingSecret }}
checkov.io/skip9: "CKV_K8S_35=botocore reads static S3 keys from AWS_* environment variables only; IRSA avoids static keys altogether"
{{- end }}
{{- end }}

{{/*
The object store's TCP port(s): networkPolicy.storagePorts, else the port of s3.endpoint (MinIO's
9000, say), else 443 (AWS S3).
*/}}
{{- define "leaf-train.storagePorts" -}}
{{- if .Values.networkPolicy.storagePorts }}
{{- toJson .Values.networkPolicy.storagePorts }}
{{- else if .Values.s3.endpoint }}
{{- $url := urlParse .Values.s3.endpoint }}
{{- $host := $url.host }}
{{- if and (contains ":" $host) (not (hasSuffix "]" $host)) }}
{{- toJson (list (atoi (last (splitList ":" $host)))) }}
{{- else }}
{{- toJson (list (ternary 443 80 (eq $url.scheme "https"))) }}
{{- end }}
{{- else }}
{{- toJson (list 443) }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress of a component (`component`: training or serving). Object stores and API
servers have no stable pod or namespace labels to select: by port, to anywhere unless
networkPolicy.storageTo / apiServerTo name them.
*/}}
{{- define "leaf-train.egressRules" -}}
{{- $np := .root.Values.networkPolicy -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $np.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The object store (S3 / MinIO)
- ports:
    {{- range include "leaf-train.storagePorts" .root | fromJsonArray }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if or $np.storageTo $np.storageCIDRs }}
  to:
    {{- with $np.storageTo }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- range $np.storageCIDRs }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
  {{- end }}
{{- if and (eq .component "training") (ne .root.Values.training.kubeIntegration "off") }}
# The Kubernetes API server (Events and annotations on the Job; the serving rollout)
- ports:
    {{- range $np.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.apiServerTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
