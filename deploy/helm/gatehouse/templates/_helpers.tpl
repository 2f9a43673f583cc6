{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gatehouse.fullname" -}}
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

{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gatehouse.labels" -}}
{{ include "gatehouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "gatehouse.nodeHostsEndpoint" -}}
{{- if .Values.nodeHostsDaemonSet.endpoint }}
{{- .Values.nodeHostsDaemonSet.endpoint }}
{{- else }}
{{- printf "http://%s:%v" (required "nodeHostsDaemonSet needs nodeHostsDaemonSet.endpoint or service.clusterIP: nodes do not resolve cluster DNS" .Values.service.clusterIP) .Values.service.port }}
{{- end }}
{{- end }}

{{/*
gatehouse.yaml: .Values.config with server.tls and server.auth pointing at
the mounted Secrets when tls.secretName / auth.secretName are set.
*/}}
{{- define "gatehouse.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := deepCopy (default (dict) (index $cfg "server")) -}}
{{- with .Values.tls.secretName -}}
{{- $_ := set $server "tls" (merge (dict "certFile" "/var/run/gatehouse/tls/tls.crt" "keyFile" "/var/run/gatehouse/tls/tls.key") (default (dict) (index $server "tls"))) -}}
{{- end -}}
{{- if .Values.auth.secretName -}}
{{- $auth := deepCopy (default (dict) (index $server "auth")) -}}
{{- with .Values.auth.htpasswdKey }}{{ $_ := set $auth "htpasswd" (printf "/var/run/gatehouse/auth/%s" .) }}{{ end -}}
{{- with .Values.auth.tokensKey }}{{ $_ := set $auth "tokensFile" (printf "/var/run/gatehouse/auth/%s" .) }}{{ end -}}
{{- with .Values.auth.apiTokensKey }}{{ $_ := set $auth "apiTokenFile" (printf "/var/run/gatehouse/auth/%s" .) }}{{ end -}}
{{- $_ := set $server "auth" $auth -}}
{{- end -}}
{{- $_ := set $cfg "server" $server -}}
{{- toYaml $cfg -}}
{{- end -}}
