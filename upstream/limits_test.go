package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/upstream"
)

// throttled answers blob requests with status and Retry-After (when set)
// for the first fail requests, then 200.
func throttled(t *testing.T, status int, retryAfter string, fail int32) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if n.Add(1) <= fail {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, status)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestRetryAfterHonouredWhenShort(t *testing.T) {
	s, n := throttled(t, http.StatusTooManyRequests, "1", 1)
	before := testutil.ToFloat64(metrics.UpstreamRetries.WithLabelValues(host(s), "429"))
	body, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
	if err != nil || body != "ok" {
		t.Fatalf("429 with Retry-After: 1 not retried: %q %v", body, err)
	}
	if n.Load() != 2 {
		t.Fatalf("%d requests, want 2", n.Load())
	}
	if got := testutil.ToFloat64(metrics.UpstreamRetries.WithLabelValues(host(s), "429")) - before; got != 1 {
		t.Fatalf("retries counted %v, want 1", got)
	}
}

func TestLongOrMissingRetryAfterGoesToTheClient(t *testing.T) {
	for _, tc := range []struct {
		status     int
		retryAfter string
	}{
		{http.StatusTooManyRequests, "120"},
		{http.StatusTooManyRequests, time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)},
		{http.StatusTooManyRequests, ""},
		{http.StatusServiceUnavailable, "120"},
	} {
		s, n := throttled(t, tc.status, tc.retryAfter, 100)
		_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Status != tc.status || ue.RetryAfter != tc.retryAfter {
			t.Errorf("%d Retry-After %q: want it passed on, got %#v", tc.status, tc.retryAfter, err)
		}
		if n.Load() != 1 {
			t.Errorf("%d Retry-After %q: %d requests, want 1 (no retry)", tc.status, tc.retryAfter, n.Load())
		}
	}
}

// An upstream error body is read only up to a cap: a huge one neither
// fills memory nor ends up in the error message.
func TestErrorBodyCapped(t *testing.T) {
	written := make(chan int64, 1)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		chunk := []byte(strings.Repeat("x", 64<<10))
		var n int64
		for n < 256<<20 {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				break
			}
		}
		written <- n
	}))
	defer s.Close()
	_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Status != http.StatusBadRequest || len(ue.Message) > 512 {
		t.Fatalf("want a 400 with a short message, got %.200v", err)
	}
	select {
	case n := <-written:
		if n >= 256<<20 {
			t.Fatalf("the whole 256 MiB error body was read")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the error body is still being read")
	}
}

func TestMaxConcurrentFetchesQueuesThenTimesOut(t *testing.T) {
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.(http.Flusher).Flush() // headers out; the body waits
		<-release
		w.Write([]byte("ok"))
	}))
	defer s.Close()
	defer close(release)
	name := host(s)
	c := newClient(t, config.Upstream{Name: name, URL: s.URL, MaxConcurrentFetches: 2,
		ResponseHeaderTimeout: config.Duration(2 * time.Second)})
	ctx := context.Background()
	var open []*http.Response
	for range 2 {
		resp, err := c.Do(ctx, http.MethodGet, "team/app", "blobs/x", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, resp)
	}
	if got := testutil.ToFloat64(metrics.UpstreamInFlight.WithLabelValues(name)); got != 2 {
		t.Fatalf("in flight %v, want 2", got)
	}
	// A third request waits for a slot; closing a body frees one.
	done := make(chan error, 1)
	go func() {
		resp, err := c.Do(ctx, http.MethodGet, "team/app", "blobs/x", nil, nil)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(metrics.UpstreamQueued.WithLabelValues(name)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("third request never queued")
		}
		time.Sleep(time.Millisecond)
	}
	open[0].Body.Close()
	if err := <-done; err != nil {
		t.Fatalf("queued request failed after a slot was freed: %v", err)
	}
	// With both slots held, a request gives up after responseHeaderTimeout
	// with a retryable 503.
	resp, err := c.Do(ctx, http.MethodGet, "team/app", "blobs/x", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	open = append(open, resp)
	before := testutil.ToFloat64(metrics.UpstreamQueueTimeouts.WithLabelValues(name))
	_, err = c.Do(ctx, http.MethodGet, "team/app", "blobs/x", nil, nil)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Status != http.StatusServiceUnavailable || ue.RetryAfter == "" {
		t.Fatalf("want a 503 with Retry-After, got %v", err)
	}
	if testutil.ToFloat64(metrics.UpstreamQueueTimeouts.WithLabelValues(name))-before != 1 {
		t.Fatal("queue timeout not counted")
	}
	for _, r := range open[1:] {
		r.Body.Close()
	}
	if got := testutil.ToFloat64(metrics.UpstreamInFlight.WithLabelValues(name)); got != 0 {
		t.Fatalf("in flight %v after every body was closed, want 0", got)
	}
}

// The registry ping and token exchange of a first request for a repository
// count under maxConcurrentFetches too: with one slot, the upstream never
// sees two requests of any kind at once, although each of three
// repositories needs its own ping and token.
func TestMaxConcurrentFetchesCoversPingAndToken(t *testing.T) {
	var inFlight, peak, tokens atomic.Int32
	var s *httptest.Server
	s = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond) // long enough for requests to overlap
		switch {
		case r.URL.Path == "/token":
			tokens.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"token":"t-` + r.URL.Query().Get("scope") + `"}`))
		case !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer t-"):
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+s.URL+`/token",service="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			w.Write([]byte("ok"))
		}
	}))
	defer s.Close()
	c := newClient(t, config.Upstream{Name: host(s), URL: s.URL, MaxConcurrentFetches: 1,
		ResponseHeaderTimeout: config.Duration(30 * time.Second)})
	errs := make(chan error, 3)
	for _, repo := range []string{"team/a", "team/b", "team/c"} {
		go func() {
			resp, err := c.Do(context.Background(), http.MethodGet, repo, "blobs/x", nil, nil)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if tokens.Load() < 3 {
		t.Fatalf("%d token requests, want one per repository (3): the test no longer exercises the token flow", tokens.Load())
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("upstream saw %d requests at once, want 1 (maxConcurrentFetches)", p)
	}
}
