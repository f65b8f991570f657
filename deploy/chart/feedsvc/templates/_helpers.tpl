{{/* Names and labels shared by every object of the release. */}}
{{- define "feedsvc.name" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "feedsvc.labels" -}}
app.kubernetes.io/name: feedsvc
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: feedsvc
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (api, writer, setup, bot). */}}
{{- define "feedsvc.selector" -}}
app.kubernetes.io/name: feedsvc
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image by digest when one is given (a tag can move), else by tag. */}}
{{- define "feedsvc.image" -}}
{{- if .Values.image.digest -}}
{{ printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/*
The operator's public Service as its node certificates name it: `<name>-public`,
`<name>-public.<namespace>` and `<name>-public.<namespace>.svc.cluster.local`, not
`...svc` (pkg/actor/generate_cert.go), so verify-full needs one of those three forms.
https://github.com/cockroachdb/cockroach-operator/blob/v2.18.3/pkg/actor/generate_cert.go
*/}}
{{- define "feedsvc.cockroachHost" -}}
{{ printf "%s-public.%s" .Values.cockroach.cluster .Release.Namespace }}
{{- end -}}

{{- define "feedsvc.kafkaBootstrap" -}}
{{ printf "%s-kafka-bootstrap.%s.svc:%d" .Values.kafka.cluster .Release.Namespace (int .Values.kafka.port) }}
{{- end -}}

{{/*
The database URL: the operator's public Service, by a name in every node's certificate,
so verify-full holds; the root client's certificate
from the operator's Secret, mounted at /certs. libpq refuses a key readable by group
or others unless root owns it: a Secret volume's files are root's (mode 0440 here).
https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-CLIENTCERT
*/}}
{{- define "feedsvc.databaseUrl" -}}
{{ printf "postgresql://root@%s:26257/feedsvc?sslmode=verify-full&sslrootcert=/certs/ca.crt&sslcert=/certs/tls.crt&sslkey=/certs/tls.key" (include "feedsvc.cockroachHost" .) }}
{{- end -}}

{{/* The FEED_* environment every process shares. */}}
{{- define "feedsvc.env" -}}
- name: FEED_DATABASE_URL
  value: {{ include "feedsvc.databaseUrl" . | quote }}
- name: FEED_KAFKA_BOOTSTRAP
  value: {{ include "feedsvc.kafkaBootstrap" . | quote }}
- name: FEED_SUBMITTED_PARTITIONS
  value: {{ .Values.feed.submittedPartitions | quote }}
- name: FEED_TOPIC_REPLICATION_FACTOR
  value: {{ .Values.feed.topicReplicationFactor | quote }}
- name: FEED_TOPIC_MIN_INSYNC_REPLICAS
  value: {{ .Values.feed.topicMinInsyncReplicas | quote }}
- name: FEED_SHUTDOWN_GRACE_S
  value: {{ .Values.feed.shutdownGraceSeconds | quote }}
- name: FEED_LOG_LEVEL
  value: {{ .Values.feed.logLevel | quote }}
{{- range $name, $value := .Values.feed.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/*
PID 1 of the pod is the pause container, which reaps, as tini does in compose (`init:
true`). Were python PID 1, the kernel would drop a SIGTERM that comes before feedsvc
installs its handler (during start-up), and the pod would wait out its grace period.
https://man7.org/linux/man-pages/man7/pid_namespaces.7.html
*/}}
{{- define "feedsvc.init" -}}
shareProcessNamespace: true
{{- end -}}

{{/* Pod-level security: the image's numeric user, never root, the runtime's seccomp. */}}
{{- define "feedsvc.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: nothing to escalate to, no capabilities, read-only root. */}}
{{- define "feedsvc.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The CockroachDB client certificates, and /tmp (the api's metrics directory). */}}
{{- define "feedsvc.volumes" -}}
- name: certs
  secret:
    secretName: {{ printf "%s-root" .Values.cockroach.cluster }}
    defaultMode: 0440
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "feedsvc.volumeMounts" -}}
- name: certs
  mountPath: /certs
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}
