package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/config"
)

func runOut(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "gatehouse.yaml")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// GATEHOUSE_CONFIG names the file when --config is not given (kubectl exec
// ... gatehouse check judges under the cluster's policy); --config wins.
func TestGatehouseConfigEnvironment(t *testing.T) {
	t.Setenv("GATEHOUSE_CONFIG", writeConfig(t, "listen: \":6001\"\n"))
	if code, out, errOut := runOut(t, "config"); code != 0 || !strings.Contains(out, "listen: :6001") {
		t.Errorf("config with GATEHOUSE_CONFIG: exit %d\n%s%s", code, out, errOut)
	}
	other := writeConfig(t, "listen: \":6002\"\n")
	if code, out, _ := runOut(t, "config", "--config", other); code != 0 || !strings.Contains(out, "listen: :6002") {
		t.Errorf("--config does not win over GATEHOUSE_CONFIG: exit %d\n%s", code, out)
	}
	t.Setenv("GATEHOUSE_CONFIG", filepath.Join(t.TempDir(), "missing.yaml"))
	if code, _, errOut := runOut(t, "config"); code != 1 || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("a GATEHOUSE_CONFIG that does not exist: exit %d: %s", code, errOut)
	}
}

// config prints sizes in units, parses back to the same configuration, and
// says which rule judges what no written rule matches.
func TestConfigPrintsSizesAndDefaultRule(t *testing.T) {
	code, out, errOut := runOut(t, "config", "--config", writeConfig(t, "cache: {maxSize: 40GiB}\n"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"maxSize: 40GiB", "maxLayerSize: 16GiB", "maxImageSize: 128GiB", "maxSize: 0 # no limit",
		"updateInterval: 6h\n", "idleTimeout: 2m\n", "tagTTL: 5m\n",
		"# No rules are configured: the built-in default rule below judges every image.",
		"# A rule you write has ignoreUnfixed: false unless it sets it.", "ignoreUnfixed: true"} {
		if !strings.Contains(out, want) {
			t.Errorf("config output lacks %q:\n%s", want, out)
		}
	}
	// The output is a configuration: read back, it is the same.
	back, err := config.Parse([]byte(out))
	if err != nil {
		t.Fatalf("config output does not parse: %v\n%s", err, out)
	}
	if back.Cache.MaxSize != 40<<30 || back.Gate.ScanLimits.MaxLayerSize != config.DefaultMaxLayerSize {
		t.Errorf("read back: maxSize %d, maxLayerSize %d", back.Cache.MaxSize, back.Gate.ScanLimits.MaxLayerSize)
	}

	t.Setenv("GATEHOUSE_CACHE_MAX_SIZE", "1GB")
	if _, out, _ = runOut(t, "config"); !strings.Contains(out, "maxSize: 1GB\n") || strings.Contains(out, "signatures: null") {
		t.Errorf("config with GATEHOUSE_CACHE_MAX_SIZE=1GB:\n%s", out)
	}
	_, out, _ = runOut(t, "config", "--config", writeConfig(t, "gate: {policy: {rules: [{name: apps, repositories: ['apps/**']}]}}\n"))
	if !strings.Contains(out, "# Images no rule below matches are judged by the built-in default rule:\n") ||
		!strings.Contains(out, "name: default, mode: enforce, block: [CRITICAL], ignoreUnfixed: true") {
		t.Errorf("config hides the built-in rule behind a written one:\n%s", out)
	}
	_, out, _ = runOut(t, "config", "--config", writeConfig(t, "gate: {policy: {rules: [{name: all, mode: audit}]}}\n"))
	if !strings.Contains(out, `# Rule "all" (no upstreams or repositories) judges every image no other rule matches.`) {
		t.Errorf("config does not name the written default rule:\n%s", out)
	}
}

func TestByteSizeYAMLRoundTrip(t *testing.T) {
	for _, n := range []config.ByteSize{0, 1, 1000, 1 << 10, 3 << 20, 40 << 30, 1<<40 + 1, 5 << 40} {
		b, err := yaml.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		var back config.ByteSize
		if err := yaml.Unmarshal(b, &back); err != nil || back != n {
			t.Errorf("%d → %q → %d, %v", n, b, back, err)
		}
	}
}

// health asks the configured listen address, over https when tls is set.
func TestHealthFollowsListen(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	_, port, _ := strings.Cut(strings.TrimPrefix(srv.URL, "http://"), ":")
	if code, out, errOut := runOut(t, "health", "--config", writeConfig(t, fmt.Sprintf("listen: \":%s\"\n", port))); code != 0 || out != "ok\n" {
		t.Errorf("health on listen :%s: exit %d %q %q", port, code, out, errOut)
	}
	t.Setenv("GATEHOUSE_LISTEN", "127.0.0.1:1") // nothing listens there
	if code, _, _ := runOut(t, "health"); code == 0 {
		t.Error("health passed with GATEHOUSE_LISTEN naming a closed port: it does not follow listen")
	}
	for _, tc := range []struct {
		listen string
		https  bool
		want   string
	}{
		{":5000", false, "http://127.0.0.1:5000/healthz"},
		{"0.0.0.0:8080", true, "https://127.0.0.1:8080/healthz"},
		{"[::]:5443", true, "https://[::1]:5443/healthz"},
		{"10.1.2.3:5000", false, "http://10.1.2.3:5000/healthz"},
	} {
		if got, err := healthURL(tc.listen, tc.https); err != nil || got != tc.want {
			t.Errorf("healthURL(%q, %t) = %q, %v; want %q", tc.listen, tc.https, got, err, tc.want)
		}
	}
}

// db status with no DB is a status: exit 0, a hint, and no file created;
// a data directory that does not exist is refused.
func TestDBStatusWithoutDB(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	code, out, errOut := runOut(t, "db", "status", "--data-dir", data)
	if code != 1 || !strings.Contains(errOut, "data directory "+data+" does not exist") {
		t.Errorf("db status on a missing data directory: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("db status created %s: %v", data, err)
	}
	os.Mkdir(data, 0o750)
	code, out, errOut = runOut(t, "db", "status", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "No vulnerability DB loaded") || !strings.Contains(out, "gatehouse db update") || !strings.Contains(out, "gatehouse db import") {
		t.Errorf("db status without a DB: exit %d\n%s%s", code, out, errOut)
	}
	if entries, _ := os.ReadDir(data); len(entries) != 0 {
		t.Errorf("db status wrote into %s: %v", data, entries)
	}
	// An existing but empty DB directory reads the same.
	if err := os.MkdirAll(filepath.Join(data, "trivy", "db"), 0o750); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runOut(t, "db", "status", "--data-dir", data); code != 0 || !strings.Contains(out, "No vulnerability DB loaded") {
		t.Errorf("db status with an empty DB directory: exit %d\n%s%s", code, out, errOut)
	}
}

// The cache commands refuse a data directory that does not exist (a typo)
// instead of creating an empty cache and reporting 0 blobs.
func TestCacheRefusesMissingDataDir(t *testing.T) {
	for _, sub := range []string{"ls", "verify", "gc"} {
		missing := filepath.Join(t.TempDir(), "gatehouse-dtaa")
		code, out, errOut := runOut(t, "cache", sub, "--data-dir", missing, "--max-size", "1GiB")
		if sub != "gc" {
			code, out, errOut = runOut(t, "cache", sub, "--data-dir", missing)
		}
		if code != 1 || !strings.Contains(errOut, "data directory "+missing+" does not exist") {
			t.Errorf("cache %s on a missing dir: exit %d\n%s%s", sub, code, out, errOut)
		}
		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Errorf("cache %s created %s", sub, missing)
		}
	}
	missing := filepath.Join(t.TempDir(), "gatehouse-dtaa")
	if code, _, errOut := runOut(t, "check", "--data-dir", missing, "alpine:3"); code != 2 || !strings.Contains(errOut, "no vulnerability DB in "+missing) {
		t.Errorf("check on a missing data dir: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("check created %s", missing)
	}
	empty := t.TempDir()
	if code, _, errOut := runOut(t, "cache", "ls", "--data-dir", empty); code != 1 || !strings.Contains(errOut, "holds no gatehouse cache") {
		t.Errorf("cache ls on an empty dir: exit %d: %s", code, errOut)
	}
}

// fakeGatehouse answers the registry and JSON API as a gatehouse does:
// the index, then 503 + Retry-After while "scanning", then the verdict.
func fakeGatehouse(t *testing.T, deny bool, scanned ...bool) (*httptest.Server, *atomic.Int32) {
	scannedAt := "2026-12-01T10:00:00Z"
	if len(scanned) > 0 && !scanned[0] {
		scannedAt = "0001-01-01T00:00:00Z"
	}
	const child = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	var childGets atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/docker.io/library/app/manifests/1.0", func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "application/vnd.oci.image.index.v1+json") || r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:2222222222222222222222222222222222222222222222222222222222222222")
		fmt.Fprintf(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
			{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":2,"platform":{"os":"linux","architecture":"arm64"}},
			{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":2,"platform":{"os":"linux","architecture":"amd64"}}]}`, child)
	})
	mux.HandleFunc("GET /v2/docker.io/library/app/manifests/"+child, func(w http.ResponseWriter, r *http.Request) {
		if childGets.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"scanning"}]}`)
			return
		}
		if deny {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `{"errors":[{"code":"DENIED","message":"rule default: 1 CRITICAL (CVE-2099-0001)","detail":{"digest":%q}}]}`, child)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", child)
		io.WriteString(w, "{}")
	})
	mux.HandleFunc("GET /api/v1/images/"+child, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"digest": child,
			"verdict":         map[string]any{"admitted": !deny, "message": "judged by the server's rule", "scannedAt": scannedAt},
			"vulnerabilities": []map[string]any{{"id": "CVE-2099-0001", "severity": "CRITICAL", "pkgName": "libfoo"}}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &childGets
}

// check --server pulls through a running gatehouse as a node would: it
// picks the platform from the index, waits out the 503 of a scan, and
// reports the server's verdict and findings with the right exit status.
func TestCheckServer(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	for _, deny := range []bool{true, false} {
		srv, gets := fakeGatehouse(t, deny)
		code, out, errOut := runOut(t, "check", "--server", srv.URL, "--token-file", token, "--format", "json", "app:1.0")
		var res checkResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("deny=%t: exit %d, %v\n%s%s", deny, code, err, out, errOut)
		}
		wantCode := map[bool]int{true: 1, false: 0}[deny]
		if code != wantCode || res.Verdict.Admitted == deny || res.Platform != "linux/amd64" || res.Counts["CRITICAL"] != 1 || gets.Load() != 2 {
			t.Errorf("deny=%t: exit %d, result %+v, %d GETs of the child\n%s", deny, code, res, gets.Load(), errOut)
		}
		if !strings.Contains(errOut, "scanning; asking again in 1s") {
			t.Errorf("deny=%t: the wait is not shown: %q", deny, errOut)
		}
	}
	srv, _ := fakeGatehouse(t, true)
	code, out, _ := runOut(t, "check", "--server", srv.URL, "--token-file", token, "--format", "sarif", "app:1.0")
	var sarif struct {
		Version string `json:"version"`
		Runs    []struct {
			Results []struct {
				RuleID string `json:"ruleId"`
				Level  string `json:"level"`
			} `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(out), &sarif); err != nil || code != 1 || sarif.Version != "2.1.0" || len(sarif.Runs) != 1 ||
		len(sarif.Runs[0].Results) != 1 || sarif.Runs[0].Results[0].RuleID != "CVE-2099-0001" || sarif.Runs[0].Results[0].Level != "error" {
		t.Errorf("--format sarif: exit %d, %v\n%s", code, err, out)
	}
	// An image admitted unscanned (audit without a DB) never reads as
	// clean: scanned false, no list of vulnerabilities, and a SARIF error.
	srv, _ = fakeGatehouse(t, false, false)
	code, out, _ = runOut(t, "check", "--server", srv.URL, "--token-file", token, "--format", "json", "app:1.0")
	if code != 0 || !strings.Contains(out, `"scanned": false`) || !strings.Contains(out, `"vulnerabilities": null`) {
		t.Errorf("unscanned image, json: exit %d\n%s", code, out)
	}
	_, out, _ = runOut(t, "check", "--server", srv.URL, "--token-file", token, "app:1.0")
	if !strings.Contains(out, "Vulnerabilities unknown: the image was not scanned") || strings.Contains(out, "No known vulnerabilities") {
		t.Errorf("unscanned image, table:\n%s", out)
	}
	_, out, _ = runOut(t, "check", "--server", srv.URL, "--token-file", token, "--format", "sarif", "app:1.0")
	if !strings.Contains(out, `"ruleId": "gatehouse-not-scanned"`) {
		t.Errorf("unscanned image, sarif has no not-scanned result:\n%s", out)
	}
	if code, _, errOut := runOut(t, "check", "--server", "ftp://x", "app"); code != 2 || !strings.Contains(errOut, "is not an http(s) URL") {
		t.Errorf("--server ftp://x: exit %d: %s", code, errOut)
	}
}

func TestSplitImage(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":                        "docker.io library/alpine latest",
		"nginx:1.29":                    "docker.io library/nginx 1.29",
		"org/app:v1@sha256:abc":         "docker.io org/app sha256:abc",
		"ghcr.io/org/app":               "ghcr.io org/app latest",
		"localhost:5000/app:2":          "localhost:5000 app 2",
		"registry.k8s.io/pause:3.10":    "registry.k8s.io pause 3.10",
		"docker.io/library/alpine:3.22": "docker.io library/alpine 3.22",
	} {
		h, r, ref, err := splitImage(in)
		if got := h + " " + r + " " + ref; err != nil || got != want {
			t.Errorf("splitImage(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
