package proxy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/internal/faultreg"
	"github.com/gatehouse/gatehouse/metrics"
)

// outcome is what one client saw of a pull.
type outcome struct {
	status     int
	code       string // OCI error code of an error response
	retryAfter string
	length     int64 // Content-Length, -1 none
	got        int
	readErr    error // the body broke off
	doErr      error // no response at all
}

func fetchURL(url string) outcome {
	// Far beyond every timeout under test: a client still waiting then
	// was left hanging.
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		return outcome{doErr: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	o := outcome{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), length: resp.ContentLength, got: len(body), readErr: err}
	if resp.StatusCode >= 400 {
		var e struct{ Errors []struct{ Code string } }
		if jerr := json.Unmarshal(body, &e); jerr == nil && len(e.Errors) > 0 {
			o.code = e.Errors[0].Code
		}
	}
	return o
}

// failedCleanly reports why o is not a clean failure: a transfer that broke
// off (never a complete-looking 200), or an OCI error with a 5xx or 429.
func (o outcome) failedCleanly() error {
	var ne net.Error
	switch {
	case errors.As(o.doErr, &ne) && ne.Timeout() || errors.As(o.readErr, &ne) && ne.Timeout():
		return fmt.Errorf("left hanging: %v%v", o.doErr, o.readErr)
	case o.doErr != nil:
		return nil
	case o.status == http.StatusOK && o.readErr == nil:
		return fmt.Errorf("a complete-looking 200 with %d bytes (Content-Length %d)", o.got, o.length)
	case o.status == http.StatusOK && o.length >= 0 && int64(o.got) >= o.length:
		return fmt.Errorf("200 with all %d announced bytes and then an error", o.got)
	case o.status == http.StatusOK:
		return nil
	case o.code == "":
		return fmt.Errorf("status %d without an OCI error body", o.status)
	case o.status < 500 && o.status != http.StatusTooManyRequests:
		return fmt.Errorf("status %d %s: not a server-side failure", o.status, o.code)
	}
	return nil
}

// The fault-injection matrix: every fault, for blobs and for manifests,
// with several clients waiting on the one upstream fetch. Each client
// fails cleanly, nothing is cached or left behind, the failure is counted,
// and once the upstream recovers the next pull succeeds and is cached.
func TestFaultyUpstream(t *testing.T) {
	// Errors a client must see when the failure happens before any byte
	// of the response (for body faults of blobs, the transfer may also
	// break off after a 200).
	wantError := map[faultreg.Kind]map[faultreg.Fault][2]string{
		faultreg.Blob: {
			faultreg.ServerError:     {"502", "UNAVAILABLE"},
			faultreg.TooManyRequests: {"429", "TOOMANYREQUESTS"},
			faultreg.NoHeaders:       {"502", "UNAVAILABLE"},
		},
		faultreg.Manifest: {
			faultreg.Reset:           {"502", "UNAVAILABLE"},
			faultreg.Corrupt:         {"502", "MANIFEST_INVALID"},
			faultreg.Truncated:       {"502", "UNAVAILABLE"},
			faultreg.Stall:           {"502", "UNAVAILABLE"},
			faultreg.ServerError:     {"502", "UNAVAILABLE"},
			faultreg.TooManyRequests: {"429", "TOOMANYREQUESTS"},
			faultreg.NoHeaders:       {"502", "UNAVAILABLE"},
		},
	}
	const clients = 4
	for _, target := range []struct {
		name    string
		kind    faultreg.Kind
		byTag   bool // resolved with a HEAD upstream first
		chunked bool // upstream sends no Content-Length
	}{
		{name: "blob", kind: faultreg.Blob},
		{name: "blob chunked", kind: faultreg.Blob, chunked: true},
		{name: "manifest by digest", kind: faultreg.Manifest},
		{name: "manifest chunked", kind: faultreg.Manifest, chunked: true},
		{name: "manifest by tag", kind: faultreg.Manifest, byTag: true},
	} {
		kind := target.kind
		for _, fault := range faultreg.Faults {
			if target.chunked && !slices.Contains([]faultreg.Fault{faultreg.Reset, faultreg.Corrupt, faultreg.Truncated, faultreg.Stall}, fault) {
				continue // no body: the same as with a length
			}
			t.Run(target.name+"/"+string(fault), func(t *testing.T) {
				e := newEnv(t, func(c *config.Config) {
					c.Upstreams[0].ResponseHeaderTimeout = config.Duration(2 * time.Second)
				})
				e.stall = 2 * time.Second
				e.restart()
				img := e.push("team/app", "v1", 1, 300_000)
				layer := must(img.Layers())[0]
				blob := must(io.ReadAll(must(layer.Compressed())))
				dgst, mdgst := must(layer.Digest()), must(img.Digest())
				path, want := "/v2/team/app/blobs/"+dgst.String(), blob
				if kind == faultreg.Manifest {
					path, want = "/v2/team/app/manifests/"+mdgst.String(), must(img.RawManifest())
				}
				if target.byTag {
					path = "/v2/team/app/manifests/v1"
				}
				failures := func() float64 {
					if kind == faultreg.Blob {
						return testutil.ToFloat64(metrics.FetchesFailed)
					}
					n := 0.0
					for _, r := range []string{"read", "digest", "invalid", "too_large"} {
						n += testutil.ToFloat64(metrics.ManifestFetchesFailed.WithLabelValues(e.upHost, r))
					}
					for _, c := range []string{"500", "429", "error"} {
						n += testutil.ToFloat64(metrics.UpstreamRequests.WithLabelValues(e.upHost, c))
					}
					return n
				}
				before, joined := failures(), e.store.Stats().Joined

				hold := make(chan struct{})
				e.faults.Hold(hold)
				e.faults.SetChunked(target.chunked)
				e.faults.Set(kind, fault)
				results := make(chan outcome, clients)
				var wg sync.WaitGroup
				for range clients {
					wg.Add(1)
					go func() { defer wg.Done(); results <- fetchURL(e.gh.URL + path) }()
				}
				// Let the fault happen once every client waits on the fetch.
				deadline := time.Now().Add(30 * time.Second)
				for e.faults.Hits(kind) == 0 || kind == faultreg.Blob && e.store.Stats().Joined-joined < clients-1 {
					if time.Now().After(deadline) {
						t.Fatal("clients did not gather on one upstream fetch")
					}
					time.Sleep(2 * time.Millisecond)
				}
				close(hold)
				wg.Wait()
				close(results)
				for o := range results {
					if err := o.failedCleanly(); err != nil {
						t.Errorf("client: %v", err)
					}
					if w, ok := wantError[kind][fault]; ok && (strconv.Itoa(o.status) != w[0] || o.code != w[1]) {
						t.Errorf("client saw %d %q (%v), want %s %s", o.status, o.code, o.doErr, w[0], w[1])
					}
					if fault == faultreg.TooManyRequests && o.retryAfter != faultreg.RetryAfter {
						t.Errorf("Retry-After %q not passed on", o.retryAfter)
					}
				}
				// The fetch counts its failure after it has woken (and so
				// failed) its readers: wait for the count.
				for deadline := time.Now().Add(10 * time.Second); failures() <= before && time.Now().Before(deadline); {
					time.Sleep(2 * time.Millisecond)
				}
				if failures() <= before {
					t.Error("the failure was not counted in the metrics")
				}

				// Nothing kept: no cache entry, no temporary file.
				if kind == faultreg.Blob {
					if _, ok := e.store.StatBlob(dgst); ok {
						t.Fatal("a blob from a broken upstream was cached")
					}
					waitNoTempFiles(t, filepath.Join(e.dataDir, "tmp"))
				} else if _, err := e.store.Manifest(mdgst); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("a manifest from a broken upstream was cached (err %v)", err)
				}

				// The upstream recovers: the next pull succeeds and is cached.
				e.faults.Set(kind, faultreg.None)
				e.faults.Hold(nil)
				resp := e.get("GET", path)
				if got := readAll(t, resp); resp.StatusCode != 200 || !bytes.Equal(got, want) {
					t.Fatalf("pull after recovery: status %d, %d bytes", resp.StatusCode, len(got))
				}
				if kind == faultreg.Blob {
					e.waitCached(dgst)
				} else if _, err := e.store.Manifest(mdgst); err != nil {
					t.Fatalf("manifest not cached after recovery: %v", err)
				}
			})
		}
	}
}

// waitNoTempFiles waits for a failed fetch's partial file to be removed
// (that happens just after its readers were told).
func waitNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary files left behind: %v", ents)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A blob redirect (as to a CDN) into the network gatehouse runs in is
// refused for a non-internal upstream, with a clear error, and followed for
// an internal one.
func TestBlobRedirectToLoopback(t *testing.T) {
	for _, internal := range []bool{false, true} {
		t.Run(fmt.Sprintf("internal %v", internal), func(t *testing.T) {
			e := newEnv(t, func(c *config.Config) { c.Upstreams[0].Internal = internal })
			img := e.push("team/app", "v1", 1, 1000)
			layer := must(img.Layers())[0]
			dgst, blob := must(layer.Digest()), must(io.ReadAll(must(layer.Compressed())))
			var served atomic.Int32
			cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				served.Add(1)
				w.Write(blob)
			}))
			defer cdn.Close()
			e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
					http.Redirect(w, r, cdn.URL+"/cdn/blob", http.StatusTemporaryRedirect)
					return true
				}
				return false
			}
			resp := e.get("GET", "/v2/team/app/blobs/"+dgst.String())
			body := readAll(t, resp)
			if internal {
				if resp.StatusCode != 200 || !bytes.Equal(body, blob) || served.Load() != 1 {
					t.Fatalf("internal upstream's redirect not followed: %d", resp.StatusCode)
				}
				return
			}
			if resp.StatusCode != 502 || ociCode(t, body) != "UNAVAILABLE" || !strings.Contains(string(body), "loopback") {
				t.Fatalf("want 502 UNAVAILABLE naming the loopback address, got %d %s", resp.StatusCode, body)
			}
			if served.Load() != 0 {
				t.Fatal("the loopback redirect target was reached")
			}
			if _, ok := e.store.StatBlob(dgst); ok {
				t.Fatal("blob cached")
			}
		})
	}
}

// A tag whose mapping expired is served from the last known mapping while
// upstream answers its revalidation with a fault (stale-if-error), and the
// answer says it is stale.
func TestStaleTagWhileUpstreamFaulty(t *testing.T) {
	for _, fault := range []faultreg.Fault{faultreg.TooManyRequests, faultreg.ServerError, faultreg.NoHeaders} {
		t.Run(string(fault), func(t *testing.T) {
			e := newEnv(t, func(c *config.Config) {
				zero := config.Duration(0)
				c.Upstreams[0].TagTTL = &zero // revalidate every time
				c.Upstreams[0].ResponseHeaderTimeout = config.Duration(2 * time.Second)
			})
			img := e.push("team/app", "v1", 1, 1000)
			readAll(t, e.get("GET", "/v2/team/app/manifests/v1"))
			e.faults.Set(faultreg.Manifest, fault)
			resp := e.get("GET", "/v2/team/app/manifests/v1")
			body := readAll(t, resp)
			if resp.StatusCode != 200 || !bytes.Equal(body, must(img.RawManifest())) || !strings.Contains(resp.Header.Get("Warning"), "110") {
				t.Fatalf("want the stale manifest with a Warning, got %d %v %s", resp.StatusCode, resp.Header, body)
			}
			if e.faults.Hits(faultreg.Manifest) == 0 {
				t.Fatal("upstream was not asked; the test proves nothing")
			}
		})
	}
}

// upstreams[].maxConcurrentFetches: many cold blobs at once never put more
// than the limit of requests on the upstream, and every client is served.
func TestMaxConcurrentFetchesBoundsUpstream(t *testing.T) {
	const limit, layers = 2, 6
	e := newEnv(t, func(c *config.Config) { c.Upstreams[0].MaxConcurrentFetches = limit })
	img := e.push("team/app", "v1", layers, 50_000)
	var active, peak atomic.Int32
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		n := active.Add(1)
		defer active.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(50 * time.Millisecond) // widen the overlap; the bound holds regardless
		e.faults.ServeHTTP(w, r)
		return true
	}
	var wg sync.WaitGroup
	errs := make(chan error, layers)
	for _, l := range must(img.Layers()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := must(io.ReadAll(must(l.Compressed())))
			if o := fetchURL(e.gh.URL + "/v2/team/app/blobs/" + must(l.Digest()).String()); o.status != 200 || o.readErr != nil || o.got != len(want) {
				errs <- fmt.Errorf("blob: %+v", o)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := peak.Load(); p > limit || p == 0 {
		t.Fatalf("upstream saw %d blob requests at once, limit %d", p, limit)
	}
	if q := testutil.ToFloat64(metrics.UpstreamQueued.WithLabelValues(e.upHost)); q != 0 {
		t.Fatalf("%v requests still queued", q)
	}
}
