package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/proxy"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
)

// repoScanner reports one CRITICAL CVE for images of repositories under
// bad/ — a stand-in for Trivy, which gate/scan tests with a real DB.
type repoScanner struct{}

func (repoScanner) Scan(ctx context.Context, img v1.Image, name string) (*gate.Report, error) {
	ls, err := img.Layers() // read the layers through gatehouse's cache, as Trivy does
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			return nil, err
		}
		rc.Close()
	}
	inv, _ := json.Marshal(name)
	return repoScanner{}.Rescan(ctx, inv)
}

func (repoScanner) Rescan(ctx context.Context, inv json.RawMessage) (*gate.Report, error) {
	r := &gate.Report{Inventory: inv, DBVersion: "test-db"}
	if strings.Contains(string(inv), "/bad/") {
		r.Vulns = []gate.Vuln{{ID: "CVE-2026-4242", Severity: "CRITICAL", PkgName: "openssl", Installed: "3.0.1", Fixed: "3.0.9"}}
	}
	return r, nil
}

func (repoScanner) DBVersion() string { return "test-db" }

func (e *env) withGate() *gate.Gate {
	meta, err := boltmeta.Open(filepath.Join(e.t.TempDir(), "gate.db"), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { meta.Close() })
	g, err := gate.New(gate.Options{Config: &e.cfg.Gate, Meta: meta, Scanner: repoScanner{}, Blobs: e.content, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { g.Close() })
	// The gate reads through the content layer, and the proxy asks it:
	// serve from a handler built with it.
	e.gate = g
	e.handler = proxy.New(e.cfg, e.content, g, slog.New(slog.DiscardHandler))
	e.gh.Config.Handler = e.handler
	return g
}

// A GET of a manifest is a pull; a HEAD (tag resolution) is not.
func TestManifestGETsCountAsPulls(t *testing.T) {
	e := newEnv(t, nil)
	g := e.withGate()
	img := e.push("good/app", "v1", 1, 100)
	dgst := must(img.Digest()).String()
	for _, req := range []struct{ method, ref string }{{"HEAD", "v1"}, {"GET", dgst}, {"HEAD", "v1"}, {"GET", "v1"}, {"GET", dgst}} {
		resp := e.get(req.method, "/v2/good/app/manifests/"+req.ref)
		readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d", req.method, req.ref, resp.StatusCode)
		}
	}
	d, err := g.Image(context.Background(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	if d.Pulls != 3 || d.LastPulled.IsZero() {
		t.Errorf("after 3 GETs and 2 HEADs: %d pulls, last %v; want 3", d.Pulls, d.LastPulled)
	}
}

func TestGateDeniesVulnerableImage(t *testing.T) {
	e := newEnv(t, nil)
	e.withGate()
	bad := e.push("bad/app", "v1", 2, 1000)
	good := e.push("good/app", "v1", 2, 1000)
	badDigest := must(bad.Digest()).String()
	for _, method := range []string{"GET", "HEAD"} {
		for _, ref := range []string{"v1", badDigest} {
			resp := e.get(method, "/v2/bad/app/manifests/"+ref)
			body := readAll(t, resp)
			if resp.StatusCode != 403 {
				t.Fatalf("%s %s: status %d", method, ref, resp.StatusCode)
			}
			if method == "GET" {
				if ociCode(t, body) != "DENIED" || !strings.Contains(string(body), "CVE-2026-4242") || !strings.Contains(string(body), `\"default\"`) {
					t.Fatalf("denial body: %s", body)
				}
			} else if !strings.Contains(resp.Status, "CVE-2026-4242") || !strings.Contains(resp.Header.Get("X-Gatehouse-Error"), "CVE-2026-4242") {
				t.Fatalf("HEAD denial does not carry the reason: %q %v", resp.Status, resp.Header)
			}
		}
	}
	// The denied image's layers cannot be fetched by digest.
	layer := must(must(bad.Layers())[0].Digest()).String()
	resp := e.get("GET", "/v2/bad/app/blobs/"+layer)
	if body := readAll(t, resp); resp.StatusCode != 403 || ociCode(t, body) != "DENIED" {
		t.Fatalf("blob of denied image: %d %s", resp.StatusCode, body)
	}
	// A clean image is served, and so are its blobs.
	resp = e.get("GET", "/v2/good/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("clean image: %d", resp.StatusCode)
	}
	resp = e.get("GET", "/v2/good/app/blobs/"+must(must(good.Layers())[0].Digest()).String())
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("blob of admitted image: %d", resp.StatusCode)
	}
}

// The status line of a denied HEAD is what containerd ≤ 2.3.2 prints.
func TestDeniedHeadStatusLine(t *testing.T) {
	e := newEnv(t, nil)
	e.withGate()
	e.push("bad/app", "v1", 1, 100)
	conn, err := net.Dial("tcp", e.ghHost)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "HEAD /v2/bad/app/manifests/v1 HTTP/1.1\r\nHost: %s\r\n\r\n", e.ghHost)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	want := `HTTP/1.1 403 Forbidden: denied by rule "default": 1 CRITICAL: CRITICAL CVE-2026-4242 (openssl 3.0.1, fixed in 3.0.9)`
	if strings.TrimSpace(line) != want {
		t.Fatalf("status line %q\nwant        %q", line, want)
	}
}

func TestGateBlobsAnyServesEverything(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Gate.Blobs = "any" })
	e.withGate()
	bad := e.push("bad/app", "v1", 1, 100)
	resp := e.get("GET", "/v2/bad/app/blobs/"+must(must(bad.Layers())[0].Digest()).String())
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("gate.blobs=any: %d", resp.StatusCode)
	}
}
