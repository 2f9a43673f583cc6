package main

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggremote "github.com/google/go-containerregistry/pkg/v1/remote"
)

// warmGatehouse is a registry standing in for a gatehouse's registry API:
// a repository named bad is denied, the first manifest request of each
// image answers 503 (scanning), and a blob of the repository corrupt is
// served with a byte changed.
type warmGatehouse struct {
	reg      http.Handler
	scanning atomic.Int32
	blobGets atomic.Int32
}

func (f *warmGatehouse) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method != http.MethodPut && strings.Contains(r.URL.Path, "/bad/manifests/"):
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"errors":[{"code":"DENIED","message":"denied by rule \"default\": CRITICAL 1 (CVE-2026-0001)"}]}`)
		return
	case r.Method != http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") && f.scanning.Add(-1) >= 0:
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"gatehouse is scanning this image"}]}`)
		return
	case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"):
		f.blobGets.Add(1)
		if strings.Contains(r.URL.Path, "/corrupt/") {
			rec := httptest.NewRecorder()
			f.reg.ServeHTTP(rec, r)
			b := rec.Body.Bytes()
			b[len(b)-1] ^= 1
			w.WriteHeader(rec.Code)
			w.Write(b)
			return
		}
	}
	f.reg.ServeHTTP(w, r)
}

func startWarmGatehouse(t *testing.T) (*warmGatehouse, *httptest.Server) {
	f := &warmGatehouse{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, repo := range []string{"ok", "bad", "corrupt"} {
		img, _ := random.Image(1000, 2)
		ref, _ := name.ParseReference(host + "/example.com/team/" + repo + ":v1")
		if err := ggremote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	return f, srv
}

// TestWarmCommand: an admitted image's blobs are all read (after waiting
// out a 503), exit 0; a denied image prints the reason, exit 1; a blob
// whose digest does not match fails the image, exit 1; no image is a
// usage error, exit 2.
func TestWarmCommand(t *testing.T) {
	f, srv := startWarmGatehouse(t)
	f.scanning.Store(1)
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"warm", "--server", srv.URL, "example.com/team/ok:v1"}, &stdout, &stderr)
	if code != 0 || f.blobGets.Load() != 3 || !strings.Contains(stdout.String(), "example.com/team/ok:v1: admitted and cached: 3 blobs") ||
		!strings.Contains(stdout.String(), "gatehouse is scanning this image") {
		t.Errorf("admitted: exit %d, %d blobs\n%s%s", code, f.blobGets.Load(), stdout.String(), stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	f.blobGets.Store(0)
	code = run(t.Context(), []string{"warm", "--server", srv.URL, "example.com/team/bad:v1", "example.com/team/ok:v1"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stdout.String(), `example.com/team/bad:v1: DENIED: DENIED: denied by rule "default": CRITICAL 1 (CVE-2026-0001)`) ||
		f.blobGets.Load() != 3 {
		t.Errorf("denied: exit %d, %d blobs\n%s%s", code, f.blobGets.Load(), stdout.String(), stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	code = run(t.Context(), []string{"warm", "--server", srv.URL, "example.com/team/corrupt:v1"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stdout.String(), "failed: blob sha256:") || !strings.Contains(stderr.String(), "1 of 1 images could not be warmed") {
		t.Errorf("corrupt blob: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}

	for _, args := range [][]string{{"warm"}, {"warm", "--server", "ftp://x", "a:b"}, {"warm", "--platform", "amd64", "a:b"}} {
		stderr.Reset()
		if code := run(t.Context(), args, io.Discard, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, stderr.String())
		}
	}
}

// TestWarmDefaultServer: the configuration's listen address, on this
// machine, https when it serves TLS.
func TestWarmDefaultServer(t *testing.T) {
	got, err := defaultServer("")
	if err != nil || got != "http://localhost:5000" {
		t.Errorf("embedded defaults: %q %v", got, err)
	}
	t.Setenv("GATEHOUSE_LISTEN", "127.0.0.1:5443")
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("GATEHOUSE_TLS_CERT_FILE", filepath.Join(dir, "tls.crt"))
	t.Setenv("GATEHOUSE_TLS_KEY_FILE", filepath.Join(dir, "tls.key"))
	got, err = defaultServer("")
	if err != nil || got != "https://127.0.0.1:5443" {
		t.Errorf("listen and TLS: %q %v", got, err)
	}
}

// TestWarmProgressTerminal: on a terminal, one line redrawn in place
// (carriage return, erase line) and ended with a newline.
func TestWarmProgressTerminal(t *testing.T) {
	var b bytes.Buffer
	p := &progress{w: &b, image: "nginx:1.29", tty: true, status: "pulling manifest", total: 3 << 20}
	p.event("blob sha256:abc 1024 bytes")
	p.Write(make([]byte, 2<<20))
	p.finish()
	out := b.String()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\r\033[Knginx:1.29  admitted and cached: 1 blobs, 2.0 MiB\n") ||
		!strings.Contains(out, "\r\033[Knginx:1.29  blob sha256:abc 1024 bytes  0 B / 3.0 MiB") {
		t.Errorf("terminal output %q", out)
	}
}
