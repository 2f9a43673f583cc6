package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/access/accesstest"
)

func TestUsageAndErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--help"}, 0, "gatehouse serve"},
		{[]string{"version"}, 0, "gatehouse"},
		{nil, 2, "Usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"--bogus"}, 2, "gatehouse: unknown flag --bogus\nRun 'gatehouse --help' for usage."},
		{[]string{"--version"}, 0, "gatehouse dev"},
		{[]string{"serve", "--nope"}, 2, "unknown flag --nope\nRun 'gatehouse serve --help' for usage."},
		{[]string{"check"}, 2, "check needs IMAGE"},
		{[]string{"check", "a", "b"}, 2, "check takes IMAGE, got 2 arguments"},
		{[]string{"check", "--format", "xml", "alpine"}, 2, "--format must be table, json or sarif"},
		{[]string{"cache"}, 2, "cache needs a subcommand: ls, verify, gc"},
		{[]string{"cache", "nope"}, 2, `unknown cache subcommand "nope"`},
		{[]string{"db", "status", "extra"}, 2, `db status takes no arguments, got "extra"`},
		{[]string{"health", "--url"}, 2, "flag --url needs a value"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.out) {
			t.Errorf("%v: exit %d, want %d; output %q", tc.args, code, tc.code, out.String())
		}
	}
}

// Every command and subcommand answers --help and -h on stdout with exit
// 0, with its usage, an example and double-dash flags, and touches no
// file: not even the data directory of a config it would load.
func TestEveryCommandHelp(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("GATEHOUSE_DATA_DIR", filepath.Join(dir, "data"))
	var walk func(c *command)
	var paths [][]string
	walk = func(c *command) {
		paths = append(paths, strings.Fields(c.name))
		for _, s := range c.subs {
			walk(s)
		}
	}
	walk(commands())
	if len(paths) < 12 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, p := range paths {
		for _, h := range []string{"--help", "-h"} {
			var stdout, stderr bytes.Buffer
			args := append(append([]string{}, p...), h)
			code := run(context.Background(), args, &stdout, &stderr)
			out := stdout.String()
			if code != 0 || stderr.Len() != 0 || !strings.Contains(out, "Usage:\n  gatehouse") || !strings.Contains(out, "--help") {
				t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, stderr.String())
			}
			if len(p) > 0 && !strings.Contains(out, "Examples:\n  gatehouse "+p[0]) && !strings.Contains(out, "Commands:") {
				t.Errorf("%v: no example: %s", args, out)
			}
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "-") && !strings.HasPrefix(f[0], "--") && f[0] != "-h," {
					t.Errorf("%v: single-dash flag in help: %q", args, l)
				}
			}
		}
	}
	// help COMMAND is COMMAND --help.
	var a, b bytes.Buffer
	run(context.Background(), []string{"help", "cache", "gc"}, &a, io.Discard)
	run(context.Background(), []string{"cache", "gc", "--help"}, &b, io.Discard)
	if a.String() != b.String() || !strings.Contains(a.String(), "--max-size SIZE") {
		t.Errorf("help cache gc:\n%s\ncache gc --help:\n%s", a.String(), b.String())
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		t.Errorf("--help created %s", e.Name())
	}
}

// The top-level help lists every environment variable gatehouse reads:
// every "GATEHOUSE_..." or "AWS_..." string in the code is in it.
func TestHelpListsEveryEnvironmentVariable(t *testing.T) {
	var help bytes.Buffer
	run(context.Background(), []string{"--help"}, &help, io.Discard)
	re := regexp.MustCompile(`"((GATEHOUSE|AWS)_[A-Z_]+)"`)
	found := 0
	err := filepath.WalkDir("../..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "e2e" || d.Name() == "bench" || d.Name() == "testsvc" || d.Name() == ".git") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			found++
			if !strings.Contains(help.String(), "  "+m[1]+" ") {
				t.Errorf("%s reads %s, which gatehouse --help does not list", p, m[1])
			}
		}
		return nil
	})
	if err != nil || found < 15 {
		t.Fatalf("walk: %v; %d variables found", err, found)
	}
}

func TestConfigErrorNamesField(t *testing.T) {
	f := filepath.Join(t.TempDir(), "g.yaml")
	os.WriteFile(f, []byte("upstreams: [{name: a.io, url: 'ftp://a.io'}]\n"), 0o600)
	var out bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--config", f}, &out, &out); code != 1 || !strings.Contains(out.String(), "upstreams[0].url") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
}

// startServe runs `gatehouse serve` with the YAML config extra (listen and
// dataDir are added) until the test ends, and returns its address once
// /readyz answers through client. stop ends it and checks its exit code.
func startServe(t *testing.T, extra string, client *http.Client, scheme string) (addr string, stop func()) {
	t.Helper()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr = ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	f := filepath.Join(dir, "g.yaml")
	os.WriteFile(f, []byte(fmt.Sprintf("listen: %q\ndataDir: %q\ngate: {db: {updateInterval: 0s}}\n%s", addr, filepath.Join(dir, "data"), extra)), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() { done <- run(ctx, []string{"serve", "--config", f}, io.Discard, &syncWriter{w: &logs}) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("serve exited %d: %s", code, logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop")
		}
	}
	t.Cleanup(stop)

	var resp *http.Response
	var err error
	for i := 0; i < 400; i++ {
		if resp, err = client.Get(scheme + "://" + addr + "/readyz"); err == nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s", code, logs.String())
		case <-time.After(25 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("readyz %d", resp.StatusCode)
	}
	return addr, stop
}

// serve starts, answers health checks and metrics, and stops cleanly when
// its context ends (SIGTERM in main).
func TestServeStartsAndShutsDown(t *testing.T) {
	addr, stop := startServe(t, "", http.DefaultClient, "http")
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"gatehouse_http_requests_total", "gatehouse_cache_size_bytes", "gatehouse_vulndb_age_seconds -1", "go_goroutines"} {
		if !bytes.Contains(body, []byte(m)) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	resp, err = http.Get("http://" + addr + "/v2/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/v2/: %v %v", resp, err)
	}
	resp.Body.Close()
	// The web console, zero-config: /ui redirects to the images page.
	resp, err = http.Get("http://" + addr + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/ui/" || !bytes.Contains(body, []byte("No judged image yet")) {
		t.Errorf("GET /ui: %d at %s:\n%.300s", resp.StatusCode, resp.Request.URL, body)
	}
	stop()
}

// With server.tls and server.auth, serve speaks HTTPS (HTTP/1.1 only, even
// to a client that would take HTTP/2), refuses /v2/, /api/ and /ui/ without
// credentials and keeps the probes and /metrics open.
func TestServeWithTLSAndAuth(t *testing.T) {
	ca := accesstest.NewCA(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, cert, key, 5, "127.0.0.1")
	const token = "cmd-test-token-0123456789"
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("tester "+token+"\n"), 0o600)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}, ForceAttemptHTTP2: true}}
	addr, _ := startServe(t, fmt.Sprintf("server: {tls: {certFile: %q, keyFile: %q}, auth: {tokensFile: %q}}\n", cert, key, tokens), client, "https")
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/v2/", "", http.StatusUnauthorized},
		{"/v2/", "Bearer " + token, http.StatusOK},
		{"/api/v1/policy", "", http.StatusUnauthorized},
		{"/api/v1/policy", "Bearer " + token, http.StatusOK},
		{"/ui/", "", http.StatusUnauthorized},
		{"/ui", "", http.StatusUnauthorized},
		{"/ui/policy", "Bearer " + token, http.StatusOK},
		{"/healthz", "", http.StatusOK},
		{"/metrics", "", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want || resp.ProtoMajor != 1 {
			t.Errorf("GET %s (auth %v): %d over %s; want %d over HTTP/1.1", tc.path, tc.auth != "", resp.StatusCode, resp.Proto, tc.want)
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// health --insecure reaches an HTTPS gatehouse whose certificate does not
// verify; without it the check fails.
func TestHealthOverHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	defer srv.Close()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"health", "--url", srv.URL + "/healthz"}, &out, &out); code == 0 {
		t.Errorf("health without --insecure passed against an unverifiable certificate: %s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"health", "--insecure", "--url", srv.URL + "/healthz"}, &out, &out); code != 0 {
		t.Errorf("health --insecure: exit %d: %s", code, out.String())
	}
}

// Every console page counts under one route label: digests in its paths
// must not become label values.
func TestRouteLabelUI(t *testing.T) {
	for _, p := range []string{"/ui", "/ui/", "/ui/policy", "/ui/denials", "/ui/images/sha256:" + strings.Repeat("a", 64), "/ui/static/style.css"} {
		if got := routeLabel(p); got != "ui" {
			t.Errorf("routeLabel(%q) = %q, want ui", p, got)
		}
	}
	if got := routeLabel("/uix"); got != "other" {
		t.Errorf("routeLabel(/uix) = %q, want other", got)
	}
}
