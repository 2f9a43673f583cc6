package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/metrics"
)

// With a cache that cannot be written, pulls still succeed: every client
// gets the verified blob straight from upstream, and nothing is kept.
func TestUnwritableCachePullsStreamThrough(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 4<<20)
	layer := must(img.Layers())[0]
	dgst := must(layer.Digest())
	tmp := filepath.Join(e.dataDir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bypass0 := testutil.ToFloat64(metrics.CacheRequests.WithLabelValues("blob", "bypass"))

	const clients = 4
	var wg sync.WaitGroup
	sums := make([]string, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := e.get("GET", "/v2/team/app/blobs/"+dgst.String())
			if resp.StatusCode != http.StatusOK {
				t.Errorf("client %d: status %d", i, resp.StatusCode)
			}
			sum := sha256.Sum256(readAll(t, resp))
			sums[i] = hex.EncodeToString(sum[:])
		}()
	}
	wg.Wait()
	for i, s := range sums {
		if s != dgst.Hex {
			t.Errorf("client %d got content sha256:%s, want %s", i, s, dgst)
		}
	}
	if _, ok := e.store.StatBlob(dgst); ok {
		t.Error("blob cached in an unwritable cache")
	}
	if got := testutil.ToFloat64(metrics.CacheRequests.WithLabelValues("blob", "bypass")) - bypass0; got != clients {
		t.Errorf("bypass requests counted %v, want %d", got, clients)
	}
}
