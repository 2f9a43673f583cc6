package warm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/proxy"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/storage/datadir"
	"github.com/gatehouse/gatehouse/upstream"
	"github.com/gatehouse/gatehouse/warm"
)

// counting counts the upstream's requests by method and path kind.
type counting struct {
	next http.Handler
	mu   sync.Mutex
	hits map[string]int // "GET blobs", "HEAD manifests", "GET tags", ...
	// failTags makes tag lists fail (500).
	failTags atomic.Bool
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := "other"
	for _, k := range []string{"blobs", "manifests", "tags"} {
		if strings.Contains(r.URL.Path, "/"+k+"/") {
			kind = k
		}
	}
	c.mu.Lock()
	c.hits[r.Method+" "+kind]++
	c.mu.Unlock()
	if kind == "tags" && c.failTags.Load() {
		http.Error(w, "tag list unavailable", http.StatusInternalServerError)
		return
	}
	c.next.ServeHTTP(w, r)
}

func (c *counting) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[key]
}

func (c *counting) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.hits)
}

// scanner stands in for Trivy: it counts scans, reads every layer through
// the gate's blob reader as Trivy would, and finds a CRITICAL
// vulnerability in the repositories of vulnerable.
type scanner struct {
	scans      atomic.Int32
	vulnerable map[string]bool // upstream/repo
}

func (s *scanner) Scan(ctx context.Context, img v1.Image, ref string) (*gate.Report, error) {
	s.scans.Add(1)
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	repo, _, _ := strings.Cut(ref, "@")
	inv, _ := json.Marshal(repo)
	return s.detect(inv)
}

func (s *scanner) detect(inv json.RawMessage) (*gate.Report, error) {
	var repo string
	json.Unmarshal(inv, &repo)
	r := &gate.Report{Inventory: inv, DBVersion: "db-1"}
	if s.vulnerable[repo] {
		r.Vulns = []gate.Vuln{{ID: "CVE-2026-0001", PkgName: "openssl", Installed: "1", Fixed: "2", Severity: "CRITICAL"}}
	}
	return r, nil
}

func (s *scanner) Rescan(ctx context.Context, inv json.RawMessage) (*gate.Report, error) {
	return s.detect(inv)
}

func (s *scanner) DBVersion() string { return "db-1" }

// env is an upstream registry, the content layer and the real gate over
// it (with a fake scanner), and the proxy serving clients.
type env struct {
	up      *counting
	host    string // the upstream's host
	proxy   string // the proxy's host
	content *pull.Content
	gate    *gate.Gate
	scanner *scanner
	cfg     *config.Config
}

func setup(t *testing.T, rules string) *env {
	t.Helper()
	up := &counting{next: registry.New(registry.Logger(log.New(io.Discard, "", 0))), hits: map[string]int{}}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	cfg, err := config.Parse(fmt.Appendf(nil, "dataDir: %s\ndefaultUpstream: %q\nupstreams:\n- {name: %q, url: %q, retries: 0, tagTTL: 1h}\ngate:\n  db: {updateInterval: 0s}\n  policy:\n    rules:\n%s",
		t.TempDir(), host, host, srv.URL, rules))
	if err != nil {
		t.Fatal(err)
	}
	lg := slog.New(slog.DiscardHandler)
	stores, err := datadir.Open(t.TempDir(), datadir.Options{Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(cache.Options{Blobs: stores.Blobs, Meta: stores.Cache, Closer: stores, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	client, err := upstream.New(&cfg.Upstreams[0], lg)
	if err != nil {
		t.Fatal(err)
	}
	content, err := pull.New(cfg, store, map[string]pull.Upstream{host: client}, lg)
	if err != nil {
		t.Fatal(err)
	}
	sc := &scanner{vulnerable: map[string]bool{}}
	g, err := gate.New(gate.Options{Config: &cfg.Gate, Meta: stores.Gate, Scanner: sc, Blobs: content, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Close()
		store.Close()
	})
	ps := httptest.NewServer(proxy.New(cfg, content, g, lg))
	t.Cleanup(ps.Close)
	return &env{up: up, host: host, proxy: strings.TrimPrefix(ps.URL, "http://"), content: content, gate: g, scanner: sc, cfg: cfg}
}

const scanAll = "    - {name: default, block: [CRITICAL]}\n"

func (e *env) push(t *testing.T, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(e.host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func (e *env) pushIndex(t *testing.T, repo, tag string, platforms ...string) (v1.ImageIndex, v1.Hash) {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		pl, _ := v1.ParsePlatform(p)
		img, _ := random.Image(2000, 2)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: pl}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	ref, _ := name.ParseReference(e.host + "/" + repo + ":" + tag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	return idx, d
}

// clientPull pulls repo:tag through the proxy as a client would (the
// manifest by tag, then every blob) for platform.
func (e *env) clientPull(t *testing.T, repo, tag, platform string) {
	t.Helper()
	ref, _ := name.ParseReference(e.proxy + "/" + repo + ":" + tag)
	pl, _ := v1.ParsePlatform(platform)
	img, err := remote.Image(ref, remote.WithPlatform(*pl))
	if err != nil {
		t.Fatalf("client pull of %s: %v", ref, err)
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
}

// TestWarmThenPull: an image warmed is judged once, and a client's pull of
// it afterwards causes no scan and no upstream blob fetch (its verdict is
// found under the key the pull looks up, its blobs in the cache).
func TestWarmThenPull(t *testing.T) {
	e := setup(t, scanAll)
	img, _ := random.Image(3000, 3)
	dgst := e.push(t, "team/app", "v1", img)
	e.up.reset()
	w := warm.New(e.content, e.gate, "test", nil)
	res, err := w.Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/app", Tag: "v1"}, []string{"linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != dgst || !res.Admitted() || len(res.Images) != 1 || res.Images[0].Blobs != 4 {
		t.Fatalf("result %+v", res)
	}
	if n := e.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans while warming", n)
	}
	blobGets := e.up.count("GET blobs")
	e.clientPull(t, "team/app", "v1", "linux/amd64")
	if n := e.scanner.scans.Load(); n != 1 {
		t.Errorf("the client's pull caused a scan (%d in all)", n)
	}
	if n := e.up.count("GET blobs"); n != blobGets {
		t.Errorf("the client's pull fetched %d blobs upstream", n-blobGets)
	}
}

// TestWarmRuleWithoutScan: under a rule that does not scan, warming reads
// every blob into the cache itself (no scan did), so that the pull after
// it fetches nothing upstream.
func TestWarmRuleWithoutScan(t *testing.T) {
	e := setup(t, "    - {name: default, mode: off}\n")
	img, _ := random.Image(3000, 2)
	e.push(t, "team/app", "v1", img)
	e.up.reset()
	res, err := warm.New(e.content, e.gate, "test", nil).Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/app", Tag: "v1"}, []string{"linux/amd64"})
	if err != nil || !res.Admitted() {
		t.Fatalf("%+v %v", res, err)
	}
	if n := e.up.count("GET blobs"); n != 3 {
		t.Errorf("warming fetched %d blobs upstream, want the config and 2 layers", n)
	}
	e.up.reset()
	e.clientPull(t, "team/app", "v1", "linux/amd64")
	if n := e.up.count("GET blobs"); n != 0 {
		t.Errorf("the pull after warming fetched %d blobs upstream", n)
	}
}

// TestWarmIndexPlatforms: of an index, the platforms asked for are judged
// (the index first, as containerd asks), the others are not touched; the
// pull of a warmed platform causes no scan.
func TestWarmIndexPlatforms(t *testing.T) {
	e := setup(t, scanAll)
	_, dgst := e.pushIndex(t, "team/multi", "v1", "linux/amd64", "linux/arm64", "linux/s390x")
	w := warm.New(e.content, e.gate, "test", nil)
	res, err := w.Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/multi", Tag: "v1"}, []string{"linux/arm64", "linux/s390x", "windows/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != dgst || len(res.Images) != 2 || res.Images[0].Platform != "linux/arm64" || res.Images[1].Platform != "linux/s390x" {
		t.Fatalf("result %+v", res)
	}
	if n := e.scanner.scans.Load(); n != 2 {
		t.Fatalf("%d scans, want 2", n)
	}
	e.clientPull(t, "team/multi", "v1", "linux/arm64")
	if n := e.scanner.scans.Load(); n != 2 {
		t.Errorf("the pull of a warmed platform caused a scan")
	}
	_, err = w.Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/multi", Tag: "v1"}, []string{"windows/amd64"})
	var np *warm.NoPlatformError
	if !errors.As(err, &np) {
		t.Errorf("index without the platform: %v", err)
	}
}

// TestWarmDenied: a denied image is a result, not an error; none of its
// blobs is read by warming (only what the scan read).
func TestWarmDenied(t *testing.T) {
	e := setup(t, scanAll)
	e.scanner.vulnerable[e.host+"/team/bad"] = true
	img, _ := random.Image(3000, 2)
	e.push(t, "team/bad", "v1", img)
	res, err := warm.New(e.content, e.gate, "test", nil).Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/bad", Tag: "v1"}, []string{"linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Admitted() || res.Images[0].Blobs != 0 || !strings.Contains(res.Images[0].Verdict.Message, "CVE-2026-0001") {
		t.Fatalf("denied image: %+v %+v", res, res.Images[0].Verdict)
	}
}

// pendingGate answers Pending a few times before the real gate's verdict.
type pendingGate struct {
	warm.Gate
	left atomic.Int32
}

func (p *pendingGate) Check(ctx context.Context, s gate.Subject) (*gate.Verdict, error) {
	if p.left.Add(-1) >= 0 {
		return nil, &gate.Pending{}
	}
	return p.Gate.Check(ctx, s)
}

// TestWarmWaitsOutPending: a verdict still being made is asked for again.
func TestWarmWaitsOutPending(t *testing.T) {
	e := setup(t, scanAll)
	img, _ := random.Image(1000, 1)
	e.push(t, "team/app", "v1", img)
	pg := &pendingGate{Gate: e.gate}
	pg.left.Store(2)
	w := warm.New(e.content, pg, "test", nil)
	warm.SetRetry(w, 0)
	res, err := w.Warm(t.Context(), warm.Ref{Upstream: e.host, Repo: "team/app", Tag: "v1"}, []string{"linux/amd64"})
	if err != nil || !res.Admitted() || pg.left.Load() >= 0 {
		t.Fatalf("%+v %v (left %d)", res, err, pg.left.Load())
	}
}
