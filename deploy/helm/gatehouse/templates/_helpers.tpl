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
the mounted Secrets when tls.secretName / auth.secretName are set, and
storage and cluster from sharedStorage when it is enabled.
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
{{- if .Values.sharedStorage.enabled -}}
{{- $sh := include "gatehouse.sharedConfig" . | fromYaml -}}
{{- $_ := set $cfg "storage" (mergeOverwrite (deepCopy (default (dict) (index $cfg "storage"))) $sh.storage) -}}
{{- $_ := set $cfg "cluster" (mergeOverwrite (deepCopy (default (dict) (index $cfg "cluster"))) $sh.cluster) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
Where the Secrets of shared storage are mounted (one projected volume).
*/}}
{{- define "gatehouse.sharedSecretsDir" -}}/var/run/gatehouse/shared{{- end }}

{{/*
The Deployment's replica count: replicas, 3 when unset.
*/}}
{{- define "gatehouse.replicas" -}}
{{- if kindIs "invalid" .Values.replicas }}3{{ else }}{{ int .Values.replicas }}{{ end }}
{{- end }}

{{/*
The peer listener's port (shared storage).
*/}}
{{- define "gatehouse.peerPort" -}}
{{- int (default 5001 .Values.sharedStorage.cluster.peerPort) }}
{{- end }}

{{/*
Checks of the values that values.schema.json cannot express (or that hold
when schema validation is skipped); each message names the value to set.
*/}}
{{- define "gatehouse.validate" -}}
{{- $ss := .Values.sharedStorage }}
{{- if $ss.enabled }}
{{- if not $ss.s3.endpoint }}
{{- fail "sharedStorage.s3.endpoint is required with sharedStorage.enabled: the URL of the S3 API, e.g. https://s3.eu-west-1.amazonaws.com" }}
{{- end }}
{{- if not (regexMatch "^https?://[^/]+" $ss.s3.endpoint) }}
{{- fail (printf "sharedStorage.s3.endpoint: %q is not an http(s) URL" $ss.s3.endpoint) }}
{{- end }}
{{- if not $ss.s3.bucket }}
{{- fail "sharedStorage.s3.bucket is required with sharedStorage.enabled: the bucket holding the blobs (it must exist)" }}
{{- end }}
{{- if not $ss.s3.existingSecret }}
{{- fail "sharedStorage.s3.existingSecret is required with sharedStorage.enabled: a Secret holding the access key pair under sharedStorage.s3.accessKeyIdKey and sharedStorage.s3.secretAccessKeyKey" }}
{{- end }}
{{- if not (and $ss.s3.accessKeyIdKey $ss.s3.secretAccessKeyKey) }}
{{- fail "sharedStorage.s3.accessKeyIdKey and sharedStorage.s3.secretAccessKeyKey name the keys of sharedStorage.s3.existingSecret; neither may be empty" }}
{{- end }}
{{- if and $ss.s3.ca.secretName $ss.s3.ca.configMapName }}
{{- fail "sharedStorage.s3.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- if not $ss.postgres.existingSecret }}
{{- fail "sharedStorage.postgres.existingSecret is required with sharedStorage.enabled: a Secret whose key sharedStorage.postgres.dsnKey holds the PostgreSQL connection string" }}
{{- end }}
{{- if not $ss.postgres.dsnKey }}
{{- fail "sharedStorage.postgres.dsnKey names the key of sharedStorage.postgres.existingSecret; it may not be empty" }}
{{- end }}
{{- if not $ss.cluster.existingSecret }}
{{- fail "sharedStorage.cluster.existingSecret is required with sharedStorage.enabled: a Secret whose key sharedStorage.cluster.secretKey holds the secret (16 bytes or more) that authenticates requests between replicas" }}
{{- end }}
{{- if not $ss.cluster.secretKey }}
{{- fail "sharedStorage.cluster.secretKey names the key of sharedStorage.cluster.existingSecret; it may not be empty" }}
{{- end }}
{{- if eq (int (include "gatehouse.peerPort" .)) 5000 }}
{{- fail "sharedStorage.cluster.peerPort: 5000 is the client port; pick another (default 5001)" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both (set the other to null)" }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- else }}
{{- if and (not (kindIs "invalid" .Values.replicas)) (gt (int .Values.replicas) 1) }}
{{- fail (printf "replicas: %d replicas need sharedStorage.enabled (blobs in S3, records in PostgreSQL); without it gatehouse runs as one replica" (int .Values.replicas)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs sharedStorage.enabled: without shared storage gatehouse runs as one replica" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The storage and cluster sections of gatehouse.yaml with shared storage:
S3 and PostgreSQL, the credentials and the peer secret read from the
mounted Secret files.
*/}}
{{- define "gatehouse.sharedConfig" -}}
{{- $ss := .Values.sharedStorage -}}
{{- $dir := include "gatehouse.sharedSecretsDir" . -}}
{{- $s3 := dict "endpoint" $ss.s3.endpoint "bucket" $ss.s3.bucket "accessKeyIdFile" (printf "%s/s3/access-key-id" $dir) "secretAccessKeyFile" (printf "%s/s3/secret-access-key" $dir) -}}
{{- with $ss.s3.prefix }}{{ $_ := set $s3 "prefix" . }}{{ end -}}
{{- with $ss.s3.region }}{{ $_ := set $s3 "region" . }}{{ end -}}
{{- if $ss.s3.pathStyle }}{{ $_ := set $s3 "pathStyle" true }}{{ end -}}
{{- with $ss.s3.partSize }}{{ $_ := set $s3 "partSize" (toString .) }}{{ end -}}
{{- if or $ss.s3.ca.secretName $ss.s3.ca.configMapName }}{{ $_ := set $s3 "caFile" "/var/run/gatehouse/s3-ca/ca.crt" }}{{ end -}}
{{- $blobs := dict "type" "s3" "s3" $s3 -}}
{{- with $ss.localTier.maxSize }}{{ $_ := set $blobs "localTier" (dict "maxSize" (toString .)) }}{{ end -}}
{{- $pg := dict "dsnFile" (printf "%s/postgres/dsn" $dir) -}}
{{- with $ss.postgres.maxConns }}{{ $_ := set $pg "maxConns" (int .) }}{{ end -}}
{{- $port := int (include "gatehouse.peerPort" .) -}}
{{- $cluster := dict "peerListen" (printf ":%d" $port) "advertise" (default (printf "http://${POD_IP}:%d" $port) $ss.cluster.advertise) "secretFile" (printf "%s/cluster/secret" $dir) -}}
{{- with $ss.cluster.leaseTTL }}{{ $_ := set $cluster "leaseTTL" . }}{{ end -}}
{{- toYaml (dict "storage" (dict "blobs" $blobs "metadata" (dict "type" "postgres" "postgres" $pg)) "cluster" $cluster) -}}
{{- end -}}

{{/*
The pod template of the StatefulSet (one replica) and of the Deployment
(shared storage).
*/}}
{{- define "gatehouse.podTemplate" -}}
{{- $shared := .Values.sharedStorage.enabled -}}
{{- $ss := .Values.sharedStorage -}}
metadata:
  labels:
    {{- include "gatehouse.selectorLabels" . | nindent 4 }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: gatehouse
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve", "--config", "/etc/gatehouse/gatehouse.yaml"]
      env:
        - name: GATEHOUSE_DATA_DIR
          value: /var/lib/gatehouse
        # `kubectl exec ... gatehouse check|db|cache` reads the same file.
        - name: GATEHOUSE_CONFIG
          value: /etc/gatehouse/gatehouse.yaml
        {{- if $shared }}
        # cluster.advertise names it: the other replicas reach this pod's
        # peer listener at its own address.
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: 5000
          protocol: TCP
        {{- if $shared }}
        - name: peer
          containerPort: {{ include "gatehouse.peerPort" . }}
          protocol: TCP
        {{- end }}
      startupProbe:
        httpGet: {path: /healthz, port: http{{ if .Values.tls.secretName }}, scheme: HTTPS{{ end }}}
        periodSeconds: 5
        failureThreshold: 60
      livenessProbe:
        httpGet: {path: /healthz, port: http{{ if .Values.tls.secretName }}, scheme: HTTPS{{ end }}}
        periodSeconds: 20
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /readyz, port: http{{ if .Values.tls.secretName }}, scheme: HTTPS{{ end }}}
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /var/lib/gatehouse
        - name: config
          mountPath: /etc/gatehouse
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.secretName }}
        - name: tls
          mountPath: /var/run/gatehouse/tls
          readOnly: true
        {{- end }}
        {{- if .Values.auth.secretName }}
        - name: auth
          mountPath: /var/run/gatehouse/auth
          readOnly: true
        {{- end }}
        {{- if $shared }}
        - name: shared-secrets
          mountPath: {{ include "gatehouse.sharedSecretsDir" . }}
          readOnly: true
        {{- if or $ss.s3.ca.secretName $ss.s3.ca.configMapName }}
        - name: s3-ca
          mountPath: /var/run/gatehouse/s3-ca
          readOnly: true
        {{- end }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "gatehouse.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- with .Values.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ . }}
    {{- end }}
    {{- with .Values.auth.secretName }}
    - name: auth
      secret:
        secretName: {{ . }}
    {{- end }}
    {{- if $shared }}
    # The per-replica dataDir: vulnerability DB, Trivy cache, local tier,
    # spool of uploads in progress. Blobs and records are in S3 and PostgreSQL.
    {{- if $ss.dataVolume.ephemeral.enabled }}
    - name: data
      ephemeral:
        volumeClaimTemplate:
          metadata:
            labels:
              {{- include "gatehouse.selectorLabels" . | nindent 14 }}
          spec:
            accessModes: [ReadWriteOnce]
            {{- with $ss.dataVolume.ephemeral.storageClass }}
            storageClassName: {{ . | quote }}
            {{- end }}
            resources:
              requests:
                storage: {{ $ss.dataVolume.ephemeral.size }}
    {{- else }}
    - name: data
      emptyDir:
        {{- with $ss.dataVolume.sizeLimit }}
        sizeLimit: {{ . }}
        {{- else }}
        {}
        {{- end }}
    {{- end }}
    # The S3 key pair, the PostgreSQL DSN and the cluster secret, as files
    # that gatehouse.yaml names (readable by fsGroup only).
    - name: shared-secrets
      projected:
        defaultMode: 0440
        sources:
          - secret:
              name: {{ $ss.s3.existingSecret }}
              items:
                - key: {{ $ss.s3.accessKeyIdKey }}
                  path: s3/access-key-id
                - key: {{ $ss.s3.secretAccessKeyKey }}
                  path: s3/secret-access-key
          - secret:
              name: {{ $ss.postgres.existingSecret }}
              items:
                - key: {{ $ss.postgres.dsnKey }}
                  path: postgres/dsn
          - secret:
              name: {{ $ss.cluster.existingSecret }}
              items:
                - key: {{ $ss.cluster.secretKey }}
                  path: cluster/secret
    {{- with $ss.s3.ca.secretName }}
    - name: s3-ca
      secret:
        secretName: {{ . }}
        items:
          - key: {{ default "ca.crt" $ss.s3.ca.key }}
            path: ca.crt
    {{- end }}
    {{- with $ss.s3.ca.configMapName }}
    - name: s3-ca
      configMap:
        name: {{ . }}
        items:
          - key: {{ default "ca.crt" $ss.s3.ca.key }}
            path: ca.crt
    {{- end }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and $shared .Values.topologySpread.enabled }}
  {{- $ts := .Values.topologySpread }}
  topologySpreadConstraints:
    {{- if $ts.constraints }}
    {{- toYaml $ts.constraints | nindent 4 }}
    {{- else }}
    {{- range $ts.topologyKeys }}
    - maxSkew: {{ int $ts.maxSkew }}
      topologyKey: {{ . }}
      whenUnsatisfiable: {{ $ts.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "gatehouse.selectorLabels" $ | nindent 10 }}
    {{- end }}
    {{- end }}
  {{- end }}
{{- end }}
