{{/*
Multi-worker training (training.workers > 1): the training Job becomes an Indexed Job whose pods
find each other through a headless Service. Kubernetes names pod i of Job J "J-i" and sets
JOB_COMPLETION_INDEX=i in it; with `subdomain` set to the Service, "J-i.<service>" resolves to
that pod. leaf_train/distribute.py builds TF_CONFIG from exactly these names.
*/}}

{{- define "leaf-train.training.multiWorker" -}}
{{- gt (int .Values.training.workers) 1 -}}
{{- end }}

{{- define "leaf-train.training.workerService" -}}
{{- printf "%s-workers" (include "leaf-train.training.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Job spec fields of an Indexed multi-worker Job. */}}
{{- define "leaf-train.training.indexedJobSpec" -}}
{{- if eq (include "leaf-train.training.multiWorker" .) "true" }}
# One pod per worker, all running at once: MultiWorkerMirroredStrategy needs every worker up.
completionMode: Indexed
completions: {{ .Values.training.workers }}
parallelism: {{ .Values.training.workers }}
# Retries count per worker index; one index out of retries fails the whole Job at once
# (maxFailedIndexes 0): the other workers cannot finish without it.
backoffLimitPerIndex: {{ .Values.training.backoffLimitPerIndex }}
maxFailedIndexes: 0
# A replacement pod starts only once its predecessor has fully terminated, so two pods never
# hold the same hostname (J-i) and port at once; the new one resumes from the chief's checkpoint.
podReplacementPolicy: Failed
{{- end }}
{{- end }}

{{/* Pod spec fields of a worker: its DNS subdomain. */}}
{{- define "leaf-train.training.workerPodSpec" -}}
{{- if eq (include "leaf-train.training.multiWorker" .) "true" }}
subdomain: {{ include "leaf-train.training.workerService" . }}
{{- end }}
{{- end }}

{{/* Container env and port of a worker; JOB_COMPLETION_INDEX comes from Kubernetes itself. */}}
{{- define "leaf-train.training.workerEnv" -}}
{{- if eq (include "leaf-train.training.multiWorker" .) "true" }}
- name: LEAF_TRAIN_WORKERS
  value: {{ .Values.training.workers | quote }}
- name: LEAF_TRAIN_WORKER_SERVICE
  value: {{ include "leaf-train.training.workerService" . | quote }}
- name: LEAF_TRAIN_WORKER_PORT
  value: {{ .Values.training.workerPort | quote }}
{{- end }}
{{- end }}

{{- define "leaf-train.training.workerPorts" -}}
{{- if eq (include "leaf-train.training.multiWorker" .) "true" }}
ports:
  - name: collective
    containerPort: {{ .Values.training.workerPort }}
    protocol: TCP
{{- end }}
{{- end }}
