package proxy_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// A request that waited in vain for a slot of maxConcurrentFetches is
// gatehouse being busy, not the upstream failing: 503 UNAVAILABLE with a
// Retry-After, never a 502.
func TestFetchQueueTimeoutIs503(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Upstreams[0].MaxConcurrentFetches = 1
		c.Upstreams[0].ResponseHeaderTimeout = config.Duration(500 * time.Millisecond)
	})
	img := e.push("team/app", "v1", 2, 10_000)
	layers := must(img.Layers())
	first, second := must(layers[0].Digest()), must(layers[1].Digest())
	hold := make(chan struct{})
	started := make(chan struct{})
	firstBytes := must(io.ReadAll(must(layers[0].Compressed())))
	e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.HasSuffix(r.URL.Path, first.String()) {
			return false
		}
		// Headers now (within responseHeaderTimeout), the body later: the
		// download keeps its slot meanwhile.
		w.Header().Set("Content-Length", strconv.Itoa(len(firstBytes)))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		close(started)
		<-hold
		w.Write(firstBytes)
		return true
	}
	done := make(chan outcome)
	go func() { done <- fetchURL(e.gh.URL + "/v2/team/app/blobs/" + first.String()) }()
	<-started // the one slot is taken
	resp := e.get("GET", "/v2/team/app/blobs/"+second.String())
	body := readAll(t, resp)
	close(hold)
	if resp.StatusCode != http.StatusServiceUnavailable || ociCode(t, body) != "UNAVAILABLE" {
		t.Fatalf("queue timeout: %d %.200s, want 503 UNAVAILABLE", resp.StatusCode, body)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After on the 503")
	}
	if o := <-done; o.status != http.StatusOK {
		t.Fatalf("the request holding the slot: %+v", o)
	}
}
