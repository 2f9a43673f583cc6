package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"go.uber.org/goleak"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/internal/faultreg"
	"github.com/gatehouse/gatehouse/proxy"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/pull/transport"
	"github.com/gatehouse/gatehouse/storage/datadir"
	"github.com/gatehouse/gatehouse/upstream"
)

// counting wraps the in-process upstream registry: it counts requests by
// method and path, and lets a test break it.
type counting struct {
	next http.Handler
	mu   sync.Mutex
	hits map[string]int
	down atomic.Bool
	// mutate, when set, may replace the response for a request.
	mutate func(w http.ResponseWriter, r *http.Request) bool
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	if c.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if c.mutate != nil && c.mutate(w, r) {
		return
	}
	c.next.ServeHTTP(w, r)
}

func (c *counting) count(method, path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[method+" "+path]
}

func (c *counting) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.hits {
		if k != "GET /v2/" {
			n += v
		}
	}
	return n
}

type env struct {
	t        testing.TB
	up       *counting
	faults   *faultreg.Injector // between up and the registry; no fault set
	stall    time.Duration      // the cache's stall timeout; 0: default
	resume   time.Duration      // the cache's resumeAfter; 0: default
	upHost   string
	gh       *httptest.Server
	ghHost   string
	store    *cache.Store
	cfg      *config.Config
	dataDir  string
	upstream *httptest.Server
	handler  *proxy.Handler
	content  *pull.Content
	gate     proxy.Gate // installed by withGate
}

func newEnv(t testing.TB, mod func(*config.Config)) *env {
	t.Helper()
	faults := faultreg.New(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	up := &counting{next: faults, hits: map[string]int{}}
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	t.Cleanup(faults.Close)
	e := &env{t: t, up: up, faults: faults, upstream: us, upHost: strings.TrimPrefix(us.URL, "http://"), dataDir: t.TempDir()}
	yml := fmt.Sprintf("dataDir: %s\ndefaultUpstream: %q\nupstreams:\n- {name: %q, url: %q, tagTTL: 1h, retries: 0}\n- {name: other.example, url: \"http://127.0.0.1:1\"}\n",
		e.dataDir, e.upHost, e.upHost, us.URL)
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(cfg)
	}
	e.cfg = cfg
	e.start()
	return e
}

func (e *env) start() {
	t := e.t
	log := slog.New(slog.DiscardHandler)
	stores, err := datadir.Open(e.dataDir, datadir.Options{NoGate: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(cache.Options{Blobs: stores.Blobs, Meta: stores.Cache, Closer: stores,
		MaxSize: int64(e.cfg.Cache.MaxSize), Log: log, StallTimeout: e.stall, ResumeAfter: e.resume})
	if err != nil {
		t.Fatal(err)
	}
	ups := map[string]pull.Upstream{}
	for i := range e.cfg.Upstreams {
		c, err := upstream.New(&e.cfg.Upstreams[i], log)
		if err != nil {
			t.Fatal(err)
		}
		ups[e.cfg.Upstreams[i].Name] = c
	}
	content, err := pull.New(e.cfg, store, ups, log)
	if err != nil {
		t.Fatal(err)
	}
	h := proxy.New(e.cfg, content, e.gate, log)
	e.store, e.content = store, content
	e.handler = h
	e.gh = httptest.NewServer(h)
	e.ghHost = strings.TrimPrefix(e.gh.URL, "http://")
	t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.gh != nil {
		e.gh.Close()
		e.store.Close()
		e.gh = nil
	}
}

func (e *env) restart() {
	e.stop()
	e.start()
}

// push writes a random image with the given layer count and size to the
// upstream and returns it.
func (e *env) push(repo, tag string, layers int, size int64) v1.Image {
	e.t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		e.t.Fatal(err)
	}
	ref, _ := name.ParseReference(e.upHost + "/" + repo + ":" + tag)
	if err := remote.Write(ref, img); err != nil {
		e.t.Fatal(err)
	}
	return img
}

func (e *env) get(method, path string, hdr ...string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.gh.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return b
}

func ociCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q", body)
	}
	return e.Errors[0].Code
}

func TestPullThroughCraneByteIdentical(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 3, 300_000)
	want, _ := img.RawManifest()

	// Through gatehouse with the default upstream, with ggcr as the client.
	ref, _ := name.ParseReference(e.ghHost + "/team/app:v1")
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := got.RawManifest()
	if !bytes.Equal(raw, want) {
		t.Fatal("manifest differs from upstream")
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed() // ggcr verifies the digest at EOF
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	if _, err := got.ConfigFile(); err != nil {
		t.Fatal(err)
	}

	// Everything is cached now: by digest, no upstream request at all.
	before := e.up.total()
	dgst, _ := img.Digest()
	ref2, _ := name.ParseReference(e.ghHost + "/team/app@" + dgst.String())
	again, err := remote.Image(ref2)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range must(again.Layers()) {
		rc := must(l.Compressed())
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	if n := e.up.total() - before; n != 0 {
		t.Fatalf("cached pull by digest made %d upstream requests", n)
	}

	// A restarted gatehouse serves from its cache with upstream down.
	e.restart()
	e.up.down.Store(true)
	ref3, _ := name.ParseReference(e.ghHost + "/team/app:v1")
	again, err = remote.Image(ref3)
	if err != nil {
		t.Fatalf("after restart, upstream down: %v", err)
	}
	for _, l := range must(again.Layers()) {
		rc := must(l.Compressed())
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestManifestHeaders(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 1000)
	raw, _ := img.RawManifest()
	dgst, _ := img.Digest()
	mt, _ := img.MediaType()
	for _, method := range []string{"HEAD", "GET"} {
		for _, ref := range []string{"v1", dgst.String()} {
			t.Run(method+" "+ref, func(t *testing.T) {
				resp := e.get(method, "/v2/team/app/manifests/"+ref, "Accept", upstream.ManifestAccept)
				body := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				if got := resp.Header.Get("Docker-Content-Digest"); got != dgst.String() {
					t.Errorf("Docker-Content-Digest = %q", got)
				}
				if got := resp.Header.Get("Content-Type"); got != string(mt) {
					t.Errorf("Content-Type = %q, want %q", got, mt)
				}
				if got := resp.Header.Get("Content-Length"); got != fmt.Sprint(len(raw)) {
					t.Errorf("Content-Length = %q, want %d", got, len(raw))
				}
				if method == "GET" && !bytes.Equal(body, raw) {
					t.Errorf("body differs from upstream")
				}
			})
		}
	}
}

func TestIndexByteIdentical(t *testing.T) {
	e := newEnv(t, nil)
	idx := mutate.IndexMediaType(mutate.AppendManifests(must(random.Index(100, 1, 0)),
		mutate.IndexAddendum{Add: must(random.Image(100, 1)), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: must(random.Image(100, 1)), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	), types.OCIImageIndex)
	ref, _ := name.ParseReference(e.upHost + "/multi:v1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.RawManifest()
	resp := e.get("GET", "/v2/multi/manifests/v1", "Accept", upstream.ManifestAccept)
	if got := readAll(t, resp); !bytes.Equal(got, want) {
		t.Fatalf("index differs from upstream:\n%s\n%s", got, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != string(types.OCIImageIndex) {
		t.Fatalf("Content-Type = %q", ct)
	}
}

func TestConcurrentColdBlobOneUpstreamFetch(t *testing.T) {
	e := newEnv(t, nil)
	// Slow the upstream so that every client joins while the fetch runs.
	release := make(chan struct{})
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/") {
			<-release
		}
		return false
	}
	img := e.push("team/big", "v1", 1, 4<<20)
	layer := must(img.Layers())[0]
	dgst := must(layer.Digest())
	want := must(io.ReadAll(must(layer.Compressed())))
	path := "/v2/team/big/blobs/" + dgst.String()

	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(e.gh.URL + path)
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(got, want) {
				errs <- fmt.Errorf("client got %d bytes (err %v), want %d identical", len(got), err, len(want))
			}
		}()
	}
	// Wait until all clients are attached to the one fetch, then let it go.
	deadline := time.Now().Add(10 * time.Second)
	for e.store.Stats().Joined < n-1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.up.count("GET", "/v2/team/big/blobs/"+dgst.String()); got != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", got)
	}
	if st := e.store.Stats(); st.Started != 1 || st.Joined != n-1 {
		t.Fatalf("fetch stats %+v, want 1 started and %d joined", st, n-1)
	}
}

func TestBlobRanges(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 100_000)
	layer := must(img.Layers())[0]
	dgst := must(layer.Digest())
	full := must(io.ReadAll(must(layer.Compressed())))
	size := len(full)
	path := "/v2/team/app/blobs/" + dgst.String()
	// The first request is cold (streamed from the fetch), the rest cached.
	for _, tc := range []struct {
		rng    string
		status int
		want   []byte
	}{
		{"bytes=100-", 206, full[100:]},
		{"bytes=100-", 206, full[100:]},
		{"bytes=0-9", 206, full[:10]},
		{"bytes=-10", 206, full[size-10:]},
		{fmt.Sprintf("bytes=%d-", size), 416, nil},
		{"", 200, full},
	} {
		resp := e.get("GET", path, "Range", tc.rng)
		got := readAll(t, resp)
		if resp.StatusCode != tc.status {
			t.Fatalf("Range %q: status %d", tc.rng, resp.StatusCode)
		}
		if tc.want != nil && !bytes.Equal(got, tc.want) {
			t.Fatalf("Range %q: wrong bytes (%d)", tc.rng, len(got))
		}
	}
	// HEAD has the size.
	resp := e.get("HEAD", path)
	readAll(t, resp)
	if resp.Header.Get("Content-Length") != fmt.Sprint(size) || resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		t.Fatalf("HEAD headers %v", resp.Header)
	}
}

func TestColdRangeResume(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 100_000)
	layer := must(img.Layers())[0]
	dgst := must(layer.Digest())
	full := must(io.ReadAll(must(layer.Compressed())))
	resp := e.get("GET", "/v2/team/app/blobs/"+dgst.String(), "Range", "bytes=5000-")
	got := readAll(t, resp)
	if resp.StatusCode != 206 || !bytes.Equal(got, full[5000:]) {
		t.Fatalf("cold open-ended range: status %d, %d bytes", resp.StatusCode, len(got))
	}
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes 5000-%d/%d", len(full)-1, len(full)) {
		t.Fatalf("Content-Range %q", cr)
	}
}

func TestClientHangupDoesNotCancelFetch(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 2<<20)
	layer := must(img.Layers())[0]
	dgst := must(layer.Digest())
	gate := make(chan struct{})
	fetching := make(chan struct{}) // closed when the upstream has the blob GET
	var once sync.Once
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && strings.HasSuffix(r.URL.Path, dgst.String()) {
			once.Do(func() { close(fetching) })
			<-gate
		}
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.gh.URL+"/v2/team/app/blobs/"+dgst.String(), nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-fetching:
	case <-done:
		t.Fatal("the client's request ended before the upstream was asked for the blob")
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream was not asked for the blob within 10 s of the client's GET")
	}
	cancel()
	<-done
	close(gate)
	e.waitCached(dgst)
}

// waitCached waits for a fetch to be committed: that happens just after the
// last reader got its bytes.
func (e *env) waitCached(dgst v1.Hash) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := e.store.StatBlob(dgst); ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("blob %s was not committed to the cache", dgst)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.DefaultUpstream = "" })
	img := e.push("team/app", "v1", 1, 1000)
	dgst := must(img.Digest())
	ns := url.QueryEscape(e.upHost) // the port's colon percent-encoded, as containerd sends it
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/team/app/manifests/v1?ns=" + ns, 200, ""},
		{"/v2/" + e.upHost + "/team/app/manifests/v1", 200, ""},
		{"/v2/team/app/manifests/" + dgst.String() + "?ns=" + ns, 200, ""},
		{"/v2/team/app/manifests/v1", 404, "NAME_UNKNOWN"}, // no default upstream
		{"/v2/team/app/manifests/v1?ns=evil.example", 403, "DENIED"},
		{"/v2/team/app/manifests/v1?ns=" + ns + "&ns=" + ns, 400, "NAME_INVALID"},
		{"/v2/Team/app/manifests/v1?ns=" + ns, 400, "NAME_INVALID"},
		{"/v2/team/app/manifests/sha256:abc?ns=" + ns, 400, "DIGEST_INVALID"},
		{"/v2/team/app/manifests/bad%20tag?ns=" + ns, 400, "MANIFEST_INVALID"},
		{"/v2/team/app/manifests/nope?ns=" + ns, 404, "MANIFEST_UNKNOWN"},
		{"/v2/team/app/blobs/sha256:" + strings.Repeat("0", 64) + "?ns=" + ns, 404, "BLOB_UNKNOWN"},
		{"/v2/team/app/other/x?ns=" + ns, 400, "NAME_INVALID"},
	} {
		resp := e.get("GET", tc.path)
		body := readAll(t, resp)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d (%s)", tc.path, resp.StatusCode, tc.status, body)
			continue
		}
		if tc.code != "" && ociCode(t, body) != tc.code {
			t.Errorf("%s: code %s, want %s", tc.path, ociCode(t, body), tc.code)
		}
		if strings.Contains(tc.path, "ns="+ns) && tc.status == 200 && resp.Header.Get("OCI-Namespace") != e.upHost {
			t.Errorf("%s: OCI-Namespace = %q", tc.path, resp.Header.Get("OCI-Namespace"))
		}
	}
}

// Hostile routing input is refused before anything is dialed: every
// configured upstream points at a listener that counts connections, and
// none of these requests may reach it (nor anything else: an unconfigured
// host is never dialed at all).
func TestUnconfiguredUpstreamNeverDialed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	e := newEnv(t, func(cfg *config.Config) {
		for i := range cfg.Upstreams {
			cfg.Upstreams[i].URL = "http://" + ln.Addr().String()
		}
	})
	target := ln.Addr().String()
	dg := "sha256:" + strings.Repeat("a", 64)
	long := strings.Repeat("a", 250) + "/" + strings.Repeat("b", 10)
	for _, tc := range []struct{ name, path, code string }{
		{"ns is the listener", "/v2/x/manifests/latest?ns=" + url.QueryEscape(target), "DENIED"},
		{"ns blob", "/v2/x/blobs/" + dg + "?ns=" + url.QueryEscape(target), "DENIED"},
		{"ns cloud metadata", "/v2/x/manifests/latest?ns=169.254.169.254", "DENIED"},
		{"ns metadata port 80", "/v2/x/manifests/latest?ns=169.254.169.254%3A80", "DENIED"},
		{"ns localhost ssh", "/v2/x/manifests/latest?ns=localhost:22", "DENIED"},
		{"ns ipv6 loopback", "/v2/x/manifests/latest?ns=%5B::1%5D", "NAME_INVALID"},
		{"ns ipv6 loopback port", "/v2/x/manifests/latest?ns=%5B::1%5D:5000", "DENIED"},
		{"ns userinfo", "/v2/x/manifests/latest?ns=user%40" + url.QueryEscape(target), "NAME_INVALID"},
		{"ns configured after userinfo", "/v2/x/manifests/latest?ns=evil%40other.example", "NAME_INVALID"},
		{"ns encoded slash", "/v2/x/manifests/latest?ns=other.example%2F..%2F" + url.QueryEscape(target), "NAME_INVALID"},
		{"ns dot dot", "/v2/x/manifests/latest?ns=..", "NAME_INVALID"},
		{"ns scheme", "/v2/x/manifests/latest?ns=http%3A%2F%2F" + url.QueryEscape(target), "NAME_INVALID"},
		{"ns empty", "/v2/x/manifests/latest?ns=", "NAME_INVALID"},
		{"ns twice", "/v2/x/manifests/latest?ns=other.example&ns=" + url.QueryEscape(target), "NAME_INVALID"},
		{"ns over-long", "/v2/x/manifests/latest?ns=" + strings.Repeat("a", 300) + ".io", "NAME_INVALID"},
		{"ns label over 63", "/v2/x/manifests/latest?ns=" + strings.Repeat("a", 64) + ".io", "NAME_INVALID"},
		{"ns bad port", "/v2/x/manifests/latest?ns=other.example:99999", "NAME_INVALID"},
		{"malformed query", "/v2/x/manifests/latest?ns=%zz", "NAME_INVALID"},
		{"path prefix listener", "/v2/" + target + "/x/manifests/latest", "NAME_INVALID"},
		{"path prefix metadata with port", "/v2/169.254.169.254:80/latest/manifests/x", "NAME_INVALID"},
		{"name with @", "/v2/team/app@evil/manifests/latest", "NAME_INVALID"},
		{"name with encoded slash", "/v2/other.example%2Fteam/manifests/latest", "NAME_INVALID"},
		{"name with dot dot", "/v2/team/../../app/manifests/latest", "NAME_INVALID"},
		{"name with upper case", "/v2/Team/app/manifests/latest", "NAME_INVALID"},
		{"component separator run", "/v2/team/a___b/manifests/latest", "NAME_INVALID"},
		{"component leading dash", "/v2/team/-app/manifests/latest", "NAME_INVALID"},
		{"empty component", "/v2/team//app/manifests/latest", "NAME_INVALID"},
		{"name over 255", "/v2/" + long + "/manifests/latest", "NAME_INVALID"},
		{"tag over 128", "/v2/team/app/manifests/" + strings.Repeat("t", 129), "MANIFEST_INVALID"},
		{"digest algorithm", "/v2/team/app/blobs/md5:" + strings.Repeat("a", 32), "DIGEST_INVALID"},
		{"digest short", "/v2/team/app/blobs/sha256:abc", "DIGEST_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Raw paths as a hostile client sends them, unnormalised.
			conn, err := net.Dial("tcp", e.ghHost)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.path, e.ghHost)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if got := ociCode(t, body); got != tc.code {
				t.Errorf("%s: %d %s, want %s", tc.path, resp.StatusCode, body, tc.code)
			}
		})
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("hostile requests made %d upstream connections", n)
	}
	// The counter counts: a request for the configured upstream dials it.
	readAll(t, e.get("GET", "/v2/x/manifests/latest"))
	if conns.Load() == 0 {
		t.Fatal("a request to the configured upstream made no connection: the counting listener is not wired")
	}
}

func TestWritesUnsupported(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct{ method, path string }{
		{"POST", "/v2/team/app/blobs/uploads/"},
		{"PUT", "/v2/team/app/manifests/v1"},
		{"PATCH", "/v2/team/app/blobs/uploads/123"},
		{"DELETE", "/v2/team/app/manifests/v1"},
	} {
		resp := e.get(tc.method, tc.path)
		body := readAll(t, resp)
		if resp.StatusCode != 405 || ociCode(t, body) != "UNSUPPORTED" {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, body)
		}
	}
}

func TestBaseEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	resp := e.get("GET", "/v2/")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestTagTTLAndStaleIfError(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		zero := config.Duration(0)
		c.Upstreams[0].TagTTL = &zero // revalidate every time
	})
	img := e.push("team/app", "v1", 1, 1000)
	dgst := must(img.Digest())
	resp := e.get("HEAD", "/v2/team/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	heads := e.up.count("HEAD", "/v2/team/app/manifests/v1")
	resp = e.get("GET", "/v2/team/app/manifests/v1")
	readAll(t, resp)
	if got := e.up.count("HEAD", "/v2/team/app/manifests/v1"); got != heads+1 {
		t.Fatalf("expired mapping not revalidated with HEAD (%d → %d)", heads, got)
	}
	if got := e.up.count("GET", "/v2/team/app/manifests/"+dgst.String()); got != 1 {
		t.Fatalf("manifest fetched %d times, want once", got)
	}
	// Upstream fails: the stale mapping is served with a Warning.
	e.up.down.Store(true)
	resp = e.get("GET", "/v2/team/app/manifests/v1")
	readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		t.Fatalf("stale-if-error: %d", resp.StatusCode)
	}
	if !strings.Contains(resp.Header.Get("Warning"), "110") {
		t.Fatalf("no Warning header on a stale answer: %v", resp.Header)
	}
	// A tag never seen, upstream down: a clear error.
	resp = e.get("GET", "/v2/team/app/manifests/v2")
	body := readAll(t, resp)
	if resp.StatusCode < 500 || ociCode(t, body) != "UNAVAILABLE" {
		t.Fatalf("unknown tag with upstream down: %d %s", resp.StatusCode, body)
	}
}

func TestTagWithinTTLNeverAsksUpstream(t *testing.T) {
	e := newEnv(t, nil) // tagTTL 1h
	e.push("team/app", "v1", 1, 1000)
	readAll(t, e.get("GET", "/v2/team/app/manifests/v1"))
	before := e.up.total()
	for i := 0; i < 5; i++ {
		readAll(t, e.get("HEAD", "/v2/team/app/manifests/v1"))
	}
	if n := e.up.total() - before; n != 0 {
		t.Fatalf("%d upstream requests within the tag TTL", n)
	}
}

func TestTagsListPagination(t *testing.T) {
	e := newEnv(t, nil)
	for _, tag := range []string{"a", "b", "c"} {
		e.push("team/app", tag, 1, 100)
	}
	// The in-process registry paginates but sends no Link; add the one
	// distribution sends, in upstream's own repository naming.
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") && r.URL.Query().Get("n") == "2" {
			w.Header().Set("Link", `</v2/team/app/tags/list?last=b&n=2>; rel="next"`)
		}
		return false
	}
	resp := e.get("GET", "/v2/"+e.upHost+"/team/app/tags/list?n=2")
	body := readAll(t, resp)
	var list struct {
		Name string
		Tags []string
	}
	json.Unmarshal(body, &list)
	if resp.StatusCode != 200 || len(list.Tags) != 2 || list.Name != e.upHost+"/team/app" {
		t.Fatalf("tags/list: %d %s", resp.StatusCode, body)
	}
	link := resp.Header.Get("Link")
	if !strings.HasPrefix(link, "</v2/"+e.upHost+"/team/app/tags/list?") || !strings.Contains(link, "last=b") {
		t.Fatalf("Link = %q", link)
	}
	for _, bad := range []string{"?n=-1", "?n=abc", "?last=%20"} {
		resp := e.get("GET", "/v2/team/app/tags/list"+bad)
		readAll(t, resp)
		if resp.StatusCode != 400 {
			t.Errorf("tags/list%s: %d", bad, resp.StatusCode)
		}
	}
}

func TestReferrersEmptyIndexNever404(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 100)
	dgst := must(img.Digest())
	resp := e.get("GET", "/v2/team/app/referrers/"+dgst.String())
	body := readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("referrers: %d %s", resp.StatusCode, body)
	}
	var idx struct {
		SchemaVersion int
		Manifests     []json.RawMessage
	}
	if err := json.Unmarshal(body, &idx); err != nil || idx.SchemaVersion != 2 || idx.Manifests == nil || len(idx.Manifests) != 0 {
		t.Fatalf("not an empty index: %s", body)
	}
}

func TestManifestDigestMismatchRefused(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 100)
	dgst := must(img.Digest())
	other := e.push("team/app", "v2", 1, 100)
	otherRaw := must(other.RawManifest())
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/manifests/"+dgst.String()) {
			w.Header().Set("Content-Type", string(types.DockerManifestSchema2))
			w.Write(otherRaw)
			return true
		}
		return false
	}
	resp := e.get("GET", "/v2/team/app/manifests/"+dgst.String())
	body := readAll(t, resp)
	if resp.StatusCode != 502 || ociCode(t, body) != "MANIFEST_INVALID" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if _, err := e.store.Manifest(dgst); err == nil {
		t.Fatal("mismatching manifest cached")
	}
}

// The 4 MiB cap holds whether upstream announces the size (refused before
// reading) or not (chunked: refused once the cap is passed).
func TestManifestSizeCap(t *testing.T) {
	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"annotations":{"x":"` +
		strings.Repeat("a", pull.MaxManifestSize) + `"}}`)
	sum := sha256.Sum256(big)
	d := "sha256:" + hex.EncodeToString(sum[:])
	for _, announce := range []bool{true, false} {
		t.Run(fmt.Sprintf("Content-Length %v", announce), func(t *testing.T) {
			e := newEnv(t, nil)
			e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.HasSuffix(r.URL.Path, "/manifests/"+d) {
					w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
					if announce {
						w.Header().Set("Content-Length", fmt.Sprint(len(big)))
					} else {
						w.(http.Flusher).Flush() // headers out without a length: chunked
					}
					for i := 0; i < len(big); i += 64 << 10 {
						if _, err := w.Write(big[i:min(i+64<<10, len(big))]); err != nil {
							break
						}
					}
					return true
				}
				return false
			}
			resp := e.get("GET", "/v2/team/app/manifests/"+d)
			body := readAll(t, resp)
			if resp.StatusCode != 502 || ociCode(t, body) != "MANIFEST_INVALID" || !strings.Contains(string(body), "4 MiB") {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			if _, err := e.store.Manifest(must(v1.NewHash(d))); err == nil {
				t.Fatal("oversized manifest cached")
			}
		})
	}
}

func TestEvictionLRU(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Cache.MaxSize = 250_000 })
	img := e.push("team/app", "v1", 3, 100_000)
	layers := must(img.Layers())
	for _, l := range layers {
		readAll(t, e.get("GET", "/v2/team/app/blobs/"+must(l.Digest()).String()))
		e.waitCached(must(l.Digest()))
		t.Logf("layer %s size %d", must(l.Digest()), must(l.Size()))
	}
	// Eviction runs after each commit: poll until it settles.
	deadline := time.Now().Add(5 * time.Second)
	for {
		size, _ := e.store.Usage()
		if size <= 250_000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if size, _ := e.store.Usage(); size > 250_000 {
		t.Fatalf("cache holds %d bytes, limit 250000", size)
	}
	if _, ok := e.store.StatBlob(must(layers[0].Digest())); ok {
		t.Fatal("least recently used blob was not evicted")
	}
	if _, ok := e.store.StatBlob(must(layers[2].Digest())); !ok {
		t.Fatal("most recently used blob was evicted")
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	// The tests' own clients keep idle connections; close them, then
	// anything still running is a leak of the code under test.
	http.DefaultClient.CloseIdleConnections()
	if t, ok := remote.DefaultTransport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The in-process transport serves a go-containerregistry client from the
// content layer: the bytes are upstream's, and they land in the cache.
func TestInProcessTransport(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/sig", "v1", 1, 1000)
	ref, _ := name.ParseReference("registry.invalid/team/sig:v1") // the host is ignored
	got, err := remote.Image(ref, remote.WithTransport(transport.New(e.content, e.upHost)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(must(got.RawManifest()), must(img.RawManifest())) {
		t.Fatal("manifest differs")
	}
	l := must(got.Layers())[0]
	rc := must(l.Compressed())
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	e.waitCached(must(l.Digest()))
}
