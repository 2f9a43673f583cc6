package upstream_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/metrics/metricstest"
)

// requestSeries returns the series of gatehouse_upstream_requests_total of
// one upstream by code, as a scrape sees them.
func requestSeries(t *testing.T, upstream string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, s := range metricstest.Collect(t, metrics.UpstreamRequests) {
		if s.Labels["upstream"] == upstream {
			out[s.Labels["code"]] = s.Value
		}
	}
	return out
}

// An upstream that is down from the start never gets past the registry
// ping or the token exchange. Its series exist at 0 from the moment the
// client is built (so that rate() sees the first failure), and that first
// failure is counted by the status the ping or token endpoint answered,
// or as "error" without an answer: GatehouseUpstreamFailing can fire for
// it.
func TestUpstreamDownFromTheStartIsCounted(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close() // nothing listens there now

	for _, tc := range []struct {
		name     string
		url      func(t *testing.T) string
		wantCode string
	}{
		{"connection refused", func(*testing.T) string { return closedURL }, "error"},
		{"ping answers 500", func(t *testing.T) string {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "down", http.StatusInternalServerError)
			}))
			t.Cleanup(s.Close)
			return s.URL
		}, "500"},
		{"token endpoint answers 503", func(t *testing.T) string {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					http.Error(w, "down", http.StatusServiceUnavailable)
					return
				}
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
				w.WriteHeader(http.StatusUnauthorized)
			}))
			t.Cleanup(s.Close)
			return s.URL
		}, "503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			name := strings.TrimPrefix(url, "http://")
			retries := 0
			c := newClient(t, config.Upstream{Name: name, URL: url, Retries: &retries})

			before := requestSeries(t, name)
			for _, code := range []string{"200", "error", tc.wantCode} {
				if v, ok := before[code]; !ok || v != 0 {
					t.Errorf("before any request: series code=%q is %v (exists: %v), want 0", code, v, ok)
				}
			}

			if err := get(c); err == nil {
				t.Fatal("request to a down upstream succeeded")
			}
			after := requestSeries(t, name)
			if after[tc.wantCode] != 1 {
				t.Errorf("after one failed request: %v, want code=%q at 1", after, tc.wantCode)
			}
			var failed float64
			for code, v := range after {
				if code == "error" || strings.HasPrefix(code, "5") {
					failed += v
				}
			}
			if failed != 1 {
				t.Errorf("failures counted %v times, want once: %v", failed, after)
			}
		})
	}
}
