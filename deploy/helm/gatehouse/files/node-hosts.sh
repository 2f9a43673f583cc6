# Writes every <dir>.hosts.toml of the ConfigMap to <certs.d>/<dir>/hosts.toml
# on the node, then again every RESYNC_SECONDS. Each file is written to a
# temporary name and renamed, so containerd never reads half a file. A CA
# the file names (gatehouse-ca.crt) is copied next to it first. A line
# holding only the Authorization marker becomes the header read from the
# mounted Secret: the credential reaches the node's hosts.toml (mode 0600)
# and nothing else. Bad input stops the container and leaves the files on
# the node as they were.
set -eu
src=/gatehouse/hosts
ca=/gatehouse/ca/ca.crt
auth=/gatehouse/auth
certs=/host
marker='# Authorization = <written on the node from the Secret>'
umask 077

fail() {
  echo "node-hosts: $*" >&2
  exit 1
}

# The TOML-escaped Authorization value, or nothing without a Secret.
authorization() {
  if [ -f "$auth/authorization" ]; then
    v=$(cat "$auth/authorization")
  elif [ -f "$auth/token" ]; then
    v="Bearer $(cat "$auth/token")"
  else
    return 0
  fi
  case "$v" in
    "Basic "?* | "Bearer "?*) ;;
    *) fail "the Authorization value in $auth must be \"Bearer <token>\" or \"Basic <base64 user:password>\"" ;;
  esac
  case "$v" in
    *[![:print:]]*) fail "the Authorization value in $auth holds a line break or another control character" ;;
  esac
  printf '%s' "$v" | sed 's/[\\"]/\\&/g'
}

sync_files() {
  header=$(authorization)
  for f in "$src"/*.hosts.toml; do
    [ -f "$f" ] || fail "no *.hosts.toml in $src"
    d="${f##*/}"
    d="${d%.hosts.toml}"
    # A ConfigMap key cannot hold ':': registry host_5000 is host:5000.
    d=$(printf '%s' "$d" | sed 's/_\([0-9][0-9]*\)$/:\1/')
    if grep -qF "$marker" "$f" && [ -z "$header" ]; then
      fail "$d.hosts.toml needs an Authorization header, but $auth holds no authorization or token"
    fi
    mkdir -p -m 0755 "$certs/$d"
    if grep -q 'gatehouse-ca\.crt' "$f"; then
      grep -q -e '-----BEGIN CERTIFICATE-----' "$ca" 2>/dev/null ||
        fail "$d.hosts.toml names gatehouse-ca.crt, but $ca is missing or holds no PEM certificate"
      rm -f "$certs/$d/.gatehouse-ca.crt.tmp"
      cp "$ca" "$certs/$d/.gatehouse-ca.crt.tmp"
      chmod 0644 "$certs/$d/.gatehouse-ca.crt.tmp"
      mv "$certs/$d/.gatehouse-ca.crt.tmp" "$certs/$d/gatehouse-ca.crt"
    fi
    tmp="$certs/$d/.hosts.toml.tmp"
    rm -f "$tmp"
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in
        *"$marker") printf '%sAuthorization = "%s"\n' "${line%"$marker"}" "$header" ;;
        *) printf '%s\n' "$line" ;;
      esac
    done <"$f" >"$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$certs/$d/hosts.toml"
  done
}

sync_files
echo "hosts.toml written"
while true; do
  sleep "$RESYNC_SECONDS"
  sync_files
done
