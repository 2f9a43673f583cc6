package pull_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/storage/datadir"
	"github.com/gatehouse/gatehouse/upstream"
)

// counting counts the upstream requests by method and path, and lets a
// test replace the answer to one path.
type counting struct {
	next     http.Handler
	mu       sync.Mutex
	hits     map[string]int
	override map[string]string // path → manifest body served as an OCI index
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits[r.Method+" "+r.URL.Path]++
	body, ok := c.override[r.URL.Path]
	c.mu.Unlock()
	if ok {
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Write([]byte(body))
		return
	}
	c.next.ServeHTTP(w, r)
}

func (c *counting) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[key]
}

func setup(t *testing.T) (*pull.Content, *counting, string) {
	c, up, host, _ := setupStore(t, nil)
	return c, up, host
}

// setupStore is setup with the cache store returned, and before (when
// set) called on the store before the content layer opens it.
func setupStore(t *testing.T, before func(store *cache.Store, host string)) (*pull.Content, *counting, string, *cache.Store) {
	t.Helper()
	up := &counting{next: registry.New(registry.Logger(log.New(io.Discard, "", 0))), hits: map[string]int{}, override: map[string]string{}}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	cfg, err := config.Parse([]byte(fmt.Sprintf("dataDir: %s\nupstreams:\n- {name: %q, url: %q, retries: 0, tagTTL: 1h}\n", t.TempDir(), host, srv.URL)))
	if err != nil {
		t.Fatal(err)
	}
	lg := slog.New(slog.DiscardHandler)
	stores, err := datadir.Open(t.TempDir(), datadir.Options{NoGate: true, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(cache.Options{Blobs: stores.Blobs, Meta: stores.Cache, Closer: stores, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	client, err := upstream.New(&cfg.Upstreams[0], lg)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(store, host)
	}
	c, err := pull.New(cfg, store, map[string]pull.Upstream{host: client}, lg)
	if err != nil {
		t.Fatal(err)
	}
	return c, up, host, store
}

// Concurrent cold requests for one tag cost one HEAD and one manifest GET;
// concurrent readers of one blob share one upstream GET and read the
// upstream's bytes.
func TestOneUpstreamRequestPerContent(t *testing.T) {
	c, up, host := setup(t)
	img, _ := random.Image(100_000, 1)
	ref, _ := name.ParseReference(host + "/team/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	layer, _ := img.Layers()
	dgst, _ := layer[0].Digest()
	want, _ := io.ReadAll(must(layer[0].Compressed()))
	up.mu.Lock()
	clear(up.hits) // the push's own requests
	up.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := c.Manifest(context.Background(), host, "team/app", "v1")
			if err == nil && !bytes.Equal(m.Data, must(img.RawManifest())) {
				err = errors.New("manifest bytes differ from upstream's")
			}
			errs <- err
		}()
	}
	wg.Wait()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, _, err := c.OpenBlob(context.Background(), host, "team/app", dgst)
			if err == nil {
				var got []byte
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil && !bytes.Equal(got, want) {
					err = errors.New("blob bytes differ from upstream's")
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	md, _ := img.Digest()
	for key, n := range map[string]int{"HEAD /v2/team/app/manifests/v1": 1, "GET /v2/team/app/manifests/" + md.String(): 1,
		"GET /v2/team/app/blobs/" + dgst.String(): 1} {
		if got := up.count(key); got != n {
			t.Errorf("%s: %d upstream requests, want %d", key, got, n)
		}
	}
}

// An index that also has image fields is refused once, here, for every
// reader (proxy, gate, check), and never cached.
func TestAmbiguousIndexRefusedAndNotCached(t *testing.T) {
	c, up, host := setup(t)
	doc := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],` +
		`"config":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`
	up.override["/v2/team/app/manifests/v1"] = doc
	for i := range 2 {
		_, err := c.Manifest(context.Background(), host, "team/app", "v1")
		var pe *pull.Error
		if !errors.As(err, &pe) || pe.Code != pull.CodeManifestInvalid || !pe.BadUpstream || !strings.Contains(pe.Message, "ambiguous") {
			t.Fatalf("attempt %d: %v; want MANIFEST_INVALID (ambiguous) from a bad upstream", i, err)
		}
	}
	if n := up.count("GET /v2/team/app/manifests/v1"); n != 2 {
		t.Fatalf("%d GETs: the refused manifest was cached", n)
	}
}

// A manifest cached by an earlier version, under older validation rules,
// is never served: the content layer sweeps the cache once of what current
// validation refuses (an ambiguous index in an old cache would otherwise
// reach the gate as an index, unjudged), and keeps the rest.
func TestCachedManifestValidatedAgain(t *testing.T) {
	doc := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],` +
		`"config":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	bad, _, _ := v1.SHA256(bytes.NewReader(doc))
	good := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	goodDigest, _, _ := v1.SHA256(bytes.NewReader(good))
	c, up, host, store := setupStore(t, func(store *cache.Store, host string) {
		for d, data := range map[v1.Hash][]byte{bad: doc, goodDigest: good} {
			if err := store.PutManifest(&cache.Manifest{Digest: d, Data: data, MediaType: "application/vnd.oci.image.index.v1+json",
				Upstream: host, Repo: "team/app"}); err != nil {
				t.Fatal(err)
			}
		}
	})
	if _, err := store.Manifest(bad); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("the ambiguous index is still cached: %v", err)
	}
	if _, err := c.Manifest(context.Background(), host, "team/app", bad.String()); err == nil {
		t.Fatal("the ambiguous index was served")
	}
	m, err := c.Manifest(context.Background(), host, "team/app", goodDigest.String())
	if err != nil || !bytes.Equal(m.Data, good) {
		t.Fatalf("a valid cached index: %v", err)
	}
	if n := up.count("GET /v2/team/app/manifests/" + goodDigest.String()); n != 0 {
		t.Fatalf("%d upstream GETs for a valid cached manifest", n)
	}
}

// Digests are canonical sha256: upper-case hex is refused, as the proxy's
// router refuses it.
func TestParseDigest(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if _, err := pull.ParseDigest(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{strings.ToUpper(good), "sha512:" + strings.Repeat("a", 128), "sha256:abc", "abc", ""} {
		if _, err := pull.ParseDigest(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
