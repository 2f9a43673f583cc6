package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/access/accesstest"
)

const nodeHostsToken = "node-pool-token-5d1e9b7c3a"

// TestNodeHostsFiles: containerd pulls from an HTTPS gatehouse that takes
// only pull tokens, through the files the node-hosts DaemonSet writes on a
// node: the hosts.toml of deploy/kubernetes/node-hosts-tls-auth (which
// deploy's tests hold equal to what the Helm chart renders) written by the
// DaemonSet's own script under busybox sh, with the CA and the token read
// from "mounted Secrets". Then the [host] entry is pointed at a dead port:
// the pull still works through `server`, which carries the CA and the
// header too.
func TestNodeHostsFiles(t *testing.T) {
	requireGatehouse(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is not installed (the node-hosts image's shell): run scripts/deps.sh")
	}
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/node-hosts", "v1", SmallImage(21))
	dir := t.TempDir()
	auth := &GatehouseAuth{TokensFile: writeTestFile(t, dir, "tokens", "node-pool "+nodeHostsToken+"\n")}
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()}, TLS: accesstest.NewCA(t), Auth: auth})
	ctrd := StartContainerd(t)

	// The DaemonSet's inputs: the ConfigMap's file for this registry, the
	// CA and the token.
	raw, err := os.ReadFile("../deploy/kubernetes/node-hosts-tls-auth/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	hostsText := strings.NewReplacer(
		"https://10.96.0.50:5000", gh.URL,
		"/etc/containerd/certs.d/docker.io/", filepath.Join(ctrd.HostsDir, reg.Host)+"/",
	).Replace(cm.Data["docker.io.hosts.toml"])
	if !strings.Contains(hostsText, gh.URL) || !strings.Contains(hostsText, ctrd.HostsDir) {
		t.Fatalf("the component's docker.io.hosts.toml no longer has the address or CA path this test replaces:\n%s", hostsText)
	}
	srcDir, caDir, authDir := filepath.Join(dir, "hosts"), filepath.Join(dir, "ca"), filepath.Join(dir, "auth")
	for _, d := range []string{srcDir, caDir, authDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeTestFile(t, srcDir, reg.Host+".hosts.toml", hostsText)
	caPEM, err := os.ReadFile(gh.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, caDir, "ca.crt", string(caPEM))
	writeTestFile(t, authDir, "token", nodeHostsToken+"\n")

	// The script with its mount paths pointing here.
	script, err := os.ReadFile("../deploy/helm/gatehouse/files/node-hosts.sh")
	if err != nil {
		t.Fatal(err)
	}
	s := string(script)
	for from, to := range map[string]string{
		"\nsrc=/gatehouse/hosts\n":    "\nsrc=" + srcDir + "\n",
		"\nca=/gatehouse/ca/ca.crt\n": "\nca=" + filepath.Join(caDir, "ca.crt") + "\n",
		"\nauth=/gatehouse/auth\n":    "\nauth=" + authDir + "\n",
		"\ncerts=/host\n":             "\ncerts=" + ctrd.HostsDir + "\n",
	} {
		if strings.Count(s, from) != 1 {
			t.Fatalf("the node-hosts script no longer sets %q", strings.TrimSpace(from))
		}
		s = strings.Replace(s, from, to, 1)
	}
	p := StartProcess(t, "node-hosts", filepath.Join(dir, "node-hosts.log"), []string{"RESYNC_SECONDS=300"}, busybox, "sh", "-c", s)
	// On a line of its own: the log's first line quotes the script.
	for deadline := time.Now().Add(time.Minute); !strings.Contains(p.Log(), "\nhosts.toml written\n"); {
		if done, err := p.Exited(); done {
			t.Fatalf("node-hosts script ended (%v):\n%s", err, p.Log())
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-hosts script wrote nothing within a minute:\n%s", p.Log())
		}
		time.Sleep(50 * time.Millisecond) // polling its log
	}
	p.Kill(t)

	hostsFile := filepath.Join(ctrd.HostsDir, reg.Host, "hosts.toml")
	fi, err := os.Stat(hostsFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("hosts.toml mode %o, want 600", fi.Mode().Perm())
	}
	want := reg.Content(t, img.Repo, img.Digest, nil)
	ref := img.Ref(reg.Host)
	ctrd.MustPull(t, ref, PullOptions{})
	ctrd.AssertContent(t, want)
	if !strings.Contains(gh.Log(), `"client":"node-pool"`) {
		t.Error("the access log does not name the client node-pool")
	}

	// Only `server` answers now.
	data, err := os.ReadFile(hostsFile)
	if err != nil {
		t.Fatal(err)
	}
	dead := strings.ReplaceAll(string(data), `[host."`+gh.URL, `[host."https://127.0.0.1:1`)
	if dead == string(data) {
		t.Fatalf("no [host] entry for %s in\n%s", gh.URL, data)
	}
	if err := os.WriteFile(hostsFile, []byte(dead), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrd.Reset(t)
	ctrd.MustPull(t, ref, PullOptions{})
	ctrd.AssertContent(t, want)
}
