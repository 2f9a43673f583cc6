package deploy

// The node-hosts DaemonSet when gatehouse serves HTTPS and requires pull
// credentials: what the chart renders, what it refuses to render, and what
// the DaemonSet's shell script writes on a node (run here against temporary
// directories, then read by containerd's own hosts.toml loader).

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// authMarker is the line of a rendered hosts.toml that the DaemonSet's
// script replaces with the Authorization header read from the Secret.
const authMarker = "# Authorization = <written on the node from the Secret>"

// tlsAuthValues turns on gatehouse's HTTPS and token-only pull credentials,
// and the DaemonSet with a pull token for the nodes.
func tlsAuthValues(nodeHosts map[string]any) map[string]any {
	nh := map[string]any{"enabled": true, "auth": map[string]any{"secretName": "node-pull", "tokenKey": "token"},
		"registries": []any{"_default", "docker.io"}}
	for k, v := range nodeHosts {
		nh[k] = v
	}
	return map[string]any{
		"tls":                map[string]any{"secretName": "gatehouse-tls"},
		"auth":               map[string]any{"secretName": "gatehouse-auth", "tokensKey": "tokens"},
		"service":            map[string]any{"clusterIP": "10.96.0.50"},
		"nodeHostsDaemonSet": nh,
	}
}

// nodeHosts is the DaemonSet and its ConfigMap's files of one rendering.
type nodeHosts struct {
	ds    *appsv1.DaemonSet
	files map[string]string
}

func renderNodeHosts(t *testing.T, values map[string]any) nodeHosts {
	t.Helper()
	m := helmRender(t, values)
	nh := nodeHosts{ds: m.one(t, "DaemonSet").typed.(*appsv1.DaemonSet)}
	for _, o := range m.byKind("ConfigMap") {
		if strings.HasSuffix(o.name, "-node-hosts") {
			nh.files = o.typed.(*corev1.ConfigMap).Data
		}
	}
	if nh.files == nil {
		t.Fatal("no node hosts ConfigMap rendered")
	}
	return nh
}

func (nh nodeHosts) volume(name string) *corev1.Volume {
	for i, v := range nh.ds.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &nh.ds.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// With TLS and pull credentials on, every file names the CA copied next to
// it and carries the header marker, for `server` and the [host] entry; the
// CA comes from the TLS Secret (its ca.crt key only) and the credential from
// the nodes' Secret, neither in clear text in the pod spec or ConfigMap.
func TestHelmNodeHostsTLSAuth(t *testing.T) {
	nh := renderNodeHosts(t, tlsAuthValues(nil))
	const endpoint = "https://10.96.0.50:5000" // https by default with TLS on
	for _, reg := range []string{"_default", "docker.io"} {
		text, ok := nh.files[reg+".hosts.toml"]
		if !ok {
			t.Fatalf("no %s.hosts.toml in %v", reg, nh.files)
		}
		h := checkHostsTOML(t, reg+".hosts.toml", []byte(text), endpoint)
		wantCA := "/etc/containerd/certs.d/" + reg + "/gatehouse-ca.crt"
		if h.CA != wantCA || h.Host[endpoint].CA != wantCA {
			t.Errorf("%s: ca = %v (server), %v (host), want %s for both", reg, h.CA, h.Host[endpoint].CA, wantCA)
		}
		// The marker is a comment: the tables are empty until the node
		// fills them.
		if len(h.Header)+len(h.Host[endpoint].Header) != 0 {
			t.Errorf("%s: header tables %v / %v, want both empty before the node fills them", reg, h.Header, h.Host[endpoint].Header)
		}
		for _, table := range []string{"\n[header]\n  " + authMarker + "\n", "[host.\"" + endpoint + "\".header]\n    " + authMarker + "\n"} {
			if !strings.Contains(text, table) {
				t.Errorf("%s: no %q in\n%s", reg, table, text)
			}
		}
		if n := strings.Count(text, authMarker); n != 2 {
			t.Errorf("%s: %d Authorization markers, want 2 (server and host):\n%s", reg, n, text)
		}
	}
	ca := nh.volume("ca")
	if ca == nil || ca.Secret == nil || ca.Secret.SecretName != "gatehouse-tls" ||
		len(ca.Secret.Items) != 1 || ca.Secret.Items[0].Key != "ca.crt" || ca.Secret.Items[0].Path != "ca.crt" {
		t.Errorf("ca volume = %+v, want only key ca.crt of Secret gatehouse-tls", ca)
	}
	auth := nh.volume("auth")
	if auth == nil || auth.Secret == nil || auth.Secret.SecretName != "node-pull" ||
		len(auth.Secret.Items) != 1 || auth.Secret.Items[0].Key != "token" || auth.Secret.Items[0].Path != "token" ||
		auth.Secret.DefaultMode == nil || *auth.Secret.DefaultMode != 0o400 {
		t.Errorf("auth volume = %+v, want key token of Secret node-pull as file token, mode 0400", auth)
	}
	c := nh.ds.Spec.Template.Spec.Containers[0]
	for _, e := range c.Env {
		if e.Name != "RESYNC_SECONDS" || e.ValueFrom != nil {
			t.Errorf("env %+v: the credential must reach the script only through the mounted Secret", e)
		}
	}

	// headerKey maps to the file the script reads whole; a CA from a
	// ConfigMap with its own key; an explicit https endpoint.
	nh = renderNodeHosts(t, tlsAuthValues(map[string]any{
		"endpoint": "https://gatehouse.internal:5000",
		"auth":     map[string]any{"secretName": "node-pull", "headerKey": "authorization-header"},
		"ca":       map[string]any{"configMapName": "cluster-ca", "key": "root.pem"},
		"certsDir": "/var/lib/rancher/k3s/agent/etc/containerd/certs.d/",
	}))
	if auth := nh.volume("auth"); auth == nil || auth.Secret.Items[0].Key != "authorization-header" || auth.Secret.Items[0].Path != "authorization" {
		t.Errorf("auth volume = %+v, want key authorization-header as file authorization", auth)
	}
	if ca := nh.volume("ca"); ca == nil || ca.ConfigMap == nil || ca.ConfigMap.Name != "cluster-ca" || ca.ConfigMap.Items[0].Key != "root.pem" {
		t.Errorf("ca volume = %+v, want key root.pem of ConfigMap cluster-ca", ca)
	}
	if hp := nh.volume("certs-d"); hp == nil || hp.HostPath.Path != "/var/lib/rancher/k3s/agent/etc/containerd/certs.d" {
		t.Errorf("certs-d volume = %+v, want the certsDir given", hp)
	}
	h := checkHostsTOML(t, "docker.io.hosts.toml", []byte(nh.files["docker.io.hosts.toml"]), "https://gatehouse.internal:5000")
	if h.CA != "/var/lib/rancher/k3s/agent/etc/containerd/certs.d/docker.io/gatehouse-ca.crt" {
		t.Errorf("ca = %v, want the CA under certsDir", h.CA)
	}

	// A public certificate: no CA volume, no ca line.
	nh = renderNodeHosts(t, map[string]any{"nodeHostsDaemonSet": map[string]any{
		"enabled": true, "endpoint": "https://gatehouse.example.com", "ca": map[string]any{"systemRoots": true},
	}})
	if nh.volume("ca") != nil || strings.Contains(nh.files["docker.io.hosts.toml"], "ca =") {
		t.Errorf("systemRoots: want no CA, got volume %+v and\n%s", nh.volume("ca"), nh.files["docker.io.hosts.toml"])
	}
}

// Without TLS and pull credentials the files are exactly what they were
// before the DaemonSet learned about either, and nothing else is mounted.
func TestHelmNodeHostsPlainUnchanged(t *testing.T) {
	nh := renderNodeHosts(t, map[string]any{
		"nodeHostsDaemonSet": map[string]any{"enabled": true, "registries": []any{"_default", "docker.io"}},
		"service":            map[string]any{"clusterIP": "10.96.0.50"},
		// API tokens alone do not make pulls need credentials.
		"auth": map[string]any{"secretName": "gatehouse-auth", "apiTokensKey": "api-tokens"},
	})
	const want = "server = \"http://10.96.0.50:5000\"\n\n[host.\"http://10.96.0.50:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	for _, key := range []string{"_default.hosts.toml", "docker.io.hosts.toml"} {
		if got := nh.files[key]; got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	for _, v := range nh.ds.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			t.Errorf("volume %s mounts Secret %s without TLS or pull credentials", v.Name, v.Secret.SecretName)
		}
	}
}

// Values that would leave nodes unable to pull, or are contradictory, stop
// the rendering with a message naming the value to set.
func TestHelmNodeHostsRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"TLS on, plain http endpoint", tlsAuthValues(map[string]any{"endpoint": "http://10.96.0.50:5000"}),
			"nodeHostsDaemonSet.endpoint: gatehouse serves HTTPS"},
		{"TLS set in config directly, no CA source", map[string]any{
			"config":             map[string]any{"server": map[string]any{"tls": map[string]any{"certFile": "/etc/tls/tls.crt", "keyFile": "/etc/tls/tls.key"}}},
			"service":            map[string]any{"clusterIP": "10.96.0.50"},
			"nodeHostsDaemonSet": map[string]any{"enabled": true},
		}, "nodeHostsDaemonSet.ca: nodes reach gatehouse over HTTPS (https://10.96.0.50:5000) but get no CA to trust"},
		{"https endpoint, no CA source", map[string]any{
			"nodeHostsDaemonSet": map[string]any{"enabled": true, "endpoint": "https://gatehouse.internal:5000"},
		}, "nodeHostsDaemonSet.ca: nodes reach gatehouse over HTTPS"},
		{"CA Secret and ConfigMap", tlsAuthValues(map[string]any{"ca": map[string]any{"secretName": "a", "configMapName": "b"}}),
			"nodeHostsDaemonSet.ca: set secretName or configMapName, not both"},
		{"CA with plain http", map[string]any{
			"nodeHostsDaemonSet": map[string]any{"enabled": true, "endpoint": "http://gatehouse.internal:5000", "ca": map[string]any{"secretName": "ca"}},
		}, "nodeHostsDaemonSet.ca: a CA is given but nodes reach gatehouse over plain http"},
		{"CA and systemRoots", tlsAuthValues(map[string]any{"ca": map[string]any{"secretName": "ca", "systemRoots": true}}),
			"nodeHostsDaemonSet.ca: systemRoots=true and a CA"},
		{"pull tokens on, nodes get none", tlsAuthValues(map[string]any{"auth": map[string]any{"secretName": ""}}),
			"nodeHostsDaemonSet.auth.secretName: gatehouse requires pull credentials"},
		{"htpasswd set in config directly, nodes get none", map[string]any{
			"config":             map[string]any{"server": map[string]any{"auth": map[string]any{"htpasswd": "/etc/auth/htpasswd"}}},
			"service":            map[string]any{"clusterIP": "10.96.0.50"},
			"nodeHostsDaemonSet": map[string]any{"enabled": true},
		}, "nodeHostsDaemonSet.auth.secretName: gatehouse requires pull credentials"},
		{"auth Secret without a key", tlsAuthValues(map[string]any{"auth": map[string]any{"secretName": "node-pull"}}),
			`nodeHostsDaemonSet.auth: name the key of Secret "node-pull"`},
		{"auth Secret with both keys", tlsAuthValues(map[string]any{"auth": map[string]any{"secretName": "node-pull", "tokenKey": "t", "headerKey": "h"}}),
			"nodeHostsDaemonSet.auth: set headerKey or tokenKey, not both"},
		{"relative certsDir", tlsAuthValues(map[string]any{"certsDir": "etc/containerd/certs.d"}),
			`nodeHostsDaemonSet.certsDir: "etc/containerd/certs.d" is not an absolute path`},
		{"registry with an underscore", tlsAuthValues(map[string]any{"registries": []any{"_default", "my_registry"}}),
			`nodeHostsDaemonSet.registries: "my_registry" is not a registry host`},
		{"registry with a path", tlsAuthValues(map[string]any{"registries": []any{"../etc"}}),
			`nodeHostsDaemonSet.registries: "../etc" is not a registry host`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helmRenderFiles(t, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render: err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// The checksum annotation changes with every input the DaemonSet's pods
// read (so a change rolls them), and only then.
func TestHelmNodeHostsChecksum(t *testing.T) {
	sum := func(values map[string]any) string {
		t.Helper()
		return renderNodeHosts(t, values).ds.Spec.Template.Annotations["checksum/hosts"]
	}
	base := sum(tlsAuthValues(nil))
	if base == "" {
		t.Fatal("no checksum/hosts annotation")
	}
	if again := sum(tlsAuthValues(nil)); again != base {
		t.Errorf("same values, checksum %s then %s", base, again)
	}
	for name, nh := range map[string]map[string]any{
		"auth Secret":   {"auth": map[string]any{"secretName": "node-pull-2", "tokenKey": "token"}},
		"auth key kind": {"auth": map[string]any{"secretName": "node-pull", "headerKey": "token"}},
		"CA Secret":     {"ca": map[string]any{"secretName": "other-ca"}},
		"CA key":        {"ca": map[string]any{"key": "root.crt"}},
		"registries":    {"registries": []any{"_default", "docker.io", "ghcr.io"}},
		"endpoint":      {"endpoint": "https://gatehouse.internal:5000"},
		"certsDir":      {"certsDir": "/etc/k3s/certs.d"},
	} {
		if got := sum(tlsAuthValues(nh)); got == base {
			t.Errorf("changing the %s leaves checksum/hosts at %s", name, got)
		}
	}
}

// The chart's script is the one the plain manifests run.
func TestNodeHostsScriptMatchesManifests(t *testing.T) {
	chart := renderNodeHosts(t, tlsAuthValues(nil)).ds
	plain := kustomizeOverlay(t, "node-hosts").one(t, "DaemonSet").typed.(*appsv1.DaemonSet)
	cs, ps := chart.Spec.Template.Spec.Containers[0].Command, plain.Spec.Template.Spec.Containers[0].Command
	if len(cs) != 3 || len(ps) != 3 || cs[2] != ps[2] {
		t.Errorf("the chart's and deploy/kubernetes' node-hosts scripts differ:\nchart: %q\nplain: %q", cs, ps)
	}
	if fmt.Sprint(cs[:2]) != "[/bin/sh -c]" {
		t.Errorf("command %q, want /bin/sh -c SCRIPT", cs[:2])
	}
}

// kustomizeBuildDir renders a kustomization in dir.
func kustomizeBuildDir(t *testing.T, dir string) manifests {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, "kustomize build "+dir, out)
}

// The plain manifests' TLS+auth component renders the node side exactly as
// the chart does for the same Secrets: the same files, volumes and mounts.
func TestKustomizeNodeHostsTLSAuth(t *testing.T) {
	m := kustomizeOverlay(t, "node-hosts", "node-hosts-tls-auth")
	plain := nodeHosts{ds: m.one(t, "DaemonSet").typed.(*appsv1.DaemonSet)}
	for _, o := range m.byKind("ConfigMap") {
		if o.name == "gatehouse-node-hosts" {
			plain.files = o.typed.(*corev1.ConfigMap).Data
		}
	}
	chart := renderNodeHosts(t, tlsAuthValues(map[string]any{"auth": map[string]any{"secretName": "gatehouse-node-pull", "tokenKey": "token"}}))
	if !reflect.DeepEqual(plain.files, chart.files) {
		t.Errorf("hosts.toml files differ:\nkustomize: %q\nchart:     %q", plain.files, chart.files)
	}
	for _, name := range []string{"ca", "auth", "hosts", "certs-d"} {
		pv, cv := plain.volume(name), chart.volume(name)
		if pv == nil || cv == nil || !reflect.DeepEqual(pv.VolumeSource, cv.VolumeSource) {
			t.Errorf("volume %s: kustomize %+v, chart %+v", name, pv, cv)
		}
	}
	pm, cm := plain.ds.Spec.Template.Spec.Containers[0].VolumeMounts, chart.ds.Spec.Template.Spec.Containers[0].VolumeMounts
	sortMounts := func(m []corev1.VolumeMount) []corev1.VolumeMount {
		return slices.SortedFunc(slices.Values(m), func(a, b corev1.VolumeMount) int { return strings.Compare(a.MountPath, b.MountPath) })
	}
	if !reflect.DeepEqual(sortMounts(pm), sortMounts(cm)) {
		t.Errorf("volume mounts differ:\nkustomize: %+v\nchart:     %+v", pm, cm)
	}
}
