{{- define "merpati.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "merpati.fullname" -}}
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

{{- define "merpati.headless" -}}
{{- printf "%s-headless" (include "merpati.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "merpati.selectorLabels" -}}
app.kubernetes.io/name: {{ include "merpati.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "merpati.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "merpati.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "merpati.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "merpati.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "merpati.secretName" -}}
{{- include "merpati.fullname" . -}}
{{- end -}}

{{- define "merpati.clusterSecretName" -}}
{{- default (include "merpati.secretName" .) .Values.clusterSecret.existingSecret -}}
{{- end -}}

{{- define "merpati.authSecretName" -}}
{{- default (include "merpati.secretName" .) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The --peers value: every pod of the StatefulSet through the headless service. */}}
{{- define "merpati.peers" -}}
{{- printf "dns:%s.%s.svc.%s:%d" (include "merpati.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.cluster) -}}
{{- end -}}

{{- define "merpati.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
