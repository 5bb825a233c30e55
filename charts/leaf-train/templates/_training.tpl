{{/*
Labels of a training Job (not its pods): Kueue reads the queue and priority from the Job itself.
*/}}
{{- define "leaf-train.training.jobLabels" -}}
{{- with .Values.training.kueue.queueName }}
kueue.x-k8s.io/queue-name: {{ . | quote }}
{{- end }}
{{- with .Values.training.kueue.priorityClass }}
kueue.x-k8s.io/priority-class: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The training Job's spec, shared by the CronJob's jobTemplate and the optional one-off Job.
The CronJob passes the root context merged with runTrigger=scheduled: its pods are told they were
started by the schedule (the retrain policy's skipIfUnchanged=auto skips only those when nothing changed).
*/}}
{{- define "leaf-train.training.jobSpec" -}}
backoffLimit: {{ .Values.training.backoffLimit }}
activeDeadlineSeconds: {{ .Values.training.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ .Values.training.ttlSecondsAfterFinished }}
{{- with include "leaf-train.training.indexedJobSpec" . | trim }}
{{ . }}
{{- end }}
# Exit codes are leaf_train/errors.py's. Retrying cannot fix a configuration (2) or data (3)
# error: fail the Job at once. A preempted run that saved its checkpoint (75) and pods evicted
# by preemption or a node drain (DisruptionTarget) are retried without counting against
# backoffLimit; the retried pod resumes because LEAF_TRAIN_RUN_ID is the Job's name.
podFailurePolicy:
  rules:
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    - action: FailJob
      onExitCodes:
        containerName: train
        operator: In
        values: [2, 3]
    - action: Ignore
      onExitCodes:
        containerName: train
        operator: In
        values: [75]
template:
  metadata:
    labels:
      {{- include "leaf-train.labels" . | nindent 6 }}
      app.kubernetes.io/component: training
      {{- with .Values.training.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    annotations:
      checksum/config: {{ include (print $.Template.BasePath "/configmap-training.yaml") . | sha256sum }}
      {{- with .Values.training.podAnnotations }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  spec:
    # podFailurePolicy requires Never: a failed container makes a new pod, not a restart in place.
    restartPolicy: Never
    {{- with include "leaf-train.training.workerPodSpec" . | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    serviceAccountName: {{ include "leaf-train.serviceAccountName" . }}
    # The Kubernetes integration (Events, version annotation) calls the API with this token.
    automountServiceAccountToken: true
    terminationGracePeriodSeconds: {{ .Values.training.terminationGracePeriodSeconds }}
    {{- with .Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.training.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    securityContext:
      {{- toYaml .Values.podSecurityContext | nindent 6 }}
    containers:
      - name: train
        image: {{ include "leaf-train.image" (dict "image" .Values.training.image "root" .) }}
        imagePullPolicy: {{ .Values.training.image.pullPolicy }}
        args: ["train"]
        {{- with include "leaf-train.training.workerPorts" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        securityContext:
          {{- toYaml .Values.containerSecurityContext | nindent 10 }}
        envFrom:
          - configMapRef:
              name: {{ include "leaf-train.training.fullname" . }}
        env:
          # The Job's name: a retried pod of the same Job finds and resumes its checkpoints.
          - name: LEAF_TRAIN_RUN_ID
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/job-name']
          - name: LEAF_TRAIN_JOB_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/job-name']
          - name: LEAF_TRAIN_NAMESPACE
            valueFrom:
              fieldRef:
                fieldPath: metadata.namespace
          {{- with .runTrigger }}
          # An env entry, not the ConfigMap: `leaf-train submit` replaces it with "manual" in the Job it creates.
          - name: LEAF_TRAIN_RUN_TRIGGER
            value: {{ . | quote }}
          {{- end }}
          # The root filesystem is read-only: every writer gets an emptyDir.
          - name: HOME
            value: /home/leaf
          - name: TMPDIR
            value: /tmp
          - name: KERAS_HOME
            value: /cache/keras
          - name: MPLCONFIGDIR
            value: /tmp/matplotlib
          {{- with include "leaf-train.s3Env" (dict "root" . "creds" .Values.s3) | trim }}
          {{- . | nindent 10 }}
          {{- end }}
          {{- with include "leaf-train.training.workerEnv" . | trim }}
          {{- . | nindent 10 }}
          {{- end }}
          {{- with .Values.training.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        resources:
          {{- include "leaf-train.resources" .Values.training | nindent 10 }}
        volumeMounts:
          - name: scratch
            mountPath: /scratch
          - name: keras-cache
            mountPath: /cache/keras
          - name: home
            mountPath: /home/leaf
          - name: tmp
            mountPath: /tmp
    volumes:
      - name: scratch
        emptyDir:
          sizeLimit: {{ .Values.training.cacheSizeLimit }}
      - name: keras-cache
        emptyDir:
          sizeLimit: 2Gi
      - name: home
        emptyDir:
          sizeLimit: 1Gi
      - name: tmp
        emptyDir:
          sizeLimit: 4Gi
    {{- with .Values.training.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.training.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.training.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}

{{/* Checkov skips shared by the CronJob and the one-off Job. */}}
{{- define "leaf-train.training.checkovSkips" -}}
{{ include "leaf-train.checkovImageSkips" . }}
checkov.io/skip3: "CKV_K8S_38=The training pod mounts its token on purpose, to record Events on its Job and annotate it (RBAC in rbac.yaml)"
{{- include "leaf-train.checkovSecretEnvSkip" .Values.s3 }}
{{- end }}
