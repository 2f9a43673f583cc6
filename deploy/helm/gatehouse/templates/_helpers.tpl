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

{{/*
"true" when gatehouse serves HTTPS: tls.secretName, or server.tls set in
config directly.
*/}}
{{- define "gatehouse.tlsEnabled" -}}
{{- if or .Values.tls.secretName (dig "server" "tls" "certFile" "" .Values.config) }}true{{ end }}
{{- end }}

{{/*
"true" when pulls need credentials: auth.htpasswdKey / auth.tokensKey, or
server.auth.htpasswd / tokensFile set in config directly (apiTokenFile
guards only the API).
*/}}
{{- define "gatehouse.pullAuthEnabled" -}}
{{- if or (and .Values.auth.secretName (or .Values.auth.htpasswdKey .Values.auth.tokensKey)) (dig "server" "auth" "htpasswd" "" .Values.config) (dig "server" "auth" "tokensFile" "" .Values.config) }}true{{ end }}
{{- end }}

{{/*
The address nodes' containerd uses for gatehouse: nodeHostsDaemonSet.endpoint,
else the Service's fixed ClusterIP, over https when gatehouse serves HTTPS.
*/}}
{{- define "gatehouse.nodeHostsEndpoint" -}}
{{- if .Values.nodeHostsDaemonSet.endpoint }}
{{- .Values.nodeHostsDaemonSet.endpoint }}
{{- else }}
{{- printf "%s://%s:%v" (ternary "https" "http" (eq (include "gatehouse.tlsEnabled" .) "true")) (required "nodeHostsDaemonSet needs nodeHostsDaemonSet.endpoint or service.clusterIP: nodes do not resolve cluster DNS" .Values.service.clusterIP) .Values.service.port }}
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
