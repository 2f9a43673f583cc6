package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Prometheus is a real Prometheus server (Debian package prometheus)
// scraping one gatehouse every second.
type Prometheus struct {
	URL  string
	proc *Process
}

// StartPrometheus starts /usr/bin/prometheus on a free loopback port with
// a scrape job "gatehouse" (interval 1s, path /metrics) for target
// ("host:port") and waits until it is ready. It is stopped in t.Cleanup.
func StartPrometheus(t testing.TB, target string) *Prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found (Debian package prometheus; run scripts/deps.sh as root)")
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gatehouse
    metrics_path: /metrics
    static_configs:
      - targets: [%q]
`, target)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &Prometheus{}
	startOnFreePort(t, func(port int) error {
		p.URL = "http://" + loopback(port)
		tsdb, err := os.MkdirTemp(dir, "tsdb-")
		if err != nil {
			return err
		}
		p.proc = StartProcess(t, "prometheus", filepath.Join(dir, "prometheus.log"), nil, bin,
			"--config.file="+cfgPath, "--storage.tsdb.path="+tsdb,
			"--web.listen-address="+loopback(port))
		err = waitHTTP(p.proc, port, p.URL+"/-/ready", 60*time.Second, func(s int) bool { return s == http.StatusOK })
		if err != nil {
			p.proc.Stop(t)
		}
		return err
	})
	return p
}

// promSample is one element of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  float64
}

// Query runs an instant query through the HTTP API (/api/v1/query).
func (p *Prometheus) Query(t testing.TB, expr string) ([]promSample, error) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(p.URL + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Status, Error, ErrorType string
		Data                     struct {
			ResultType string
			Result     json.RawMessage
		}
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("query %q: %s: %v: %s", expr, resp.Status, err, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s %s", expr, resp.Status, r.ErrorType, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, nil // scalars etc.: accepted, nothing to read
	}
	var raw []struct {
		Metric map[string]string
		Value  [2]any
	}
	if err := json.Unmarshal(r.Data.Result, &raw); err != nil {
		return nil, fmt.Errorf("query %q: %v: %s", expr, err, body)
	}
	out := make([]promSample, 0, len(raw))
	for _, s := range raw {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v: %v", expr, s.Value, err)
		}
		out = append(out, promSample{Metric: s.Metric, Value: v})
	}
	return out, nil
}

// Value runs expr, which must return exactly one sample, and returns its
// value. An empty vector fails the test, naming the query: a missing
// series (not exported, not pre-created at 0, renamed) must not read as
// 0, or "0 failures" would pass on a metric that does not exist.
func (p *Prometheus) Value(t testing.TB, expr string) float64 {
	t.Helper()
	s, err := p.Query(t, expr)
	if err != nil {
		t.Fatal(err)
	}
	switch len(s) {
	case 0:
		t.Fatalf("query %q: no sample: the series is missing", expr)
	case 1:
	default:
		t.Fatalf("query %q: %d samples, want 1: %v", expr, len(s), s)
	}
	return s[0].Value
}

// WaitScrapedAfter waits until Prometheus holds a successful scrape of
// gatehouse that started after since: every counter it reads afterwards
// includes what happened before since. Scrapes are atomic, so one
// scrape's timestamp stands for all of its series.
func (p *Prometheus) WaitScrapedAfter(t testing.TB, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := "no answer"
	for {
		// timestamp() of a bare selector is the sample's (the scrape's)
		// time; of any other expression it is the evaluation time.
		s, err := p.Query(t, `timestamp(up{job="gatehouse"})`)
		if err == nil && len(s) == 1 {
			if up := p.Value(t, `up{job="gatehouse"}`); up != 1 {
				s, last = nil, fmt.Sprintf("up = %v", up)
			}
		}
		switch {
		case err != nil:
			last = err.Error()
		case s == nil:
		case len(s) == 1:
			at := time.UnixMilli(int64(s[0].Value * 1000))
			if at.After(since) {
				return
			}
			last = fmt.Sprintf("last successful scrape at %v", at.Format(time.RFC3339Nano))
		default:
			last = fmt.Sprintf("up: %v", s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: no successful scrape of gatehouse after %v: %s\n(scrape errors: %s)",
				since.Format(time.RFC3339Nano), last, p.targetErrors(t))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// targetErrors returns the scrape targets' health and last errors, for
// failure messages.
func (p *Prometheus) targetErrors(t testing.TB) string {
	resp, err := http.Get(p.URL + "/api/v1/targets")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestPrometheusScrape: a real Prometheus scrapes gatehouse while
// containerd pulls through it, and the series gatehouse exports tell the
// story of the pulls: the first pull misses the cache and fetches from the
// upstream, the second is served from the cache without a new fetch. Every
// query of the Grafana dashboard is also accepted by Prometheus.
func TestPrometheusScrape(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/metrics", "v1", SmallImage(11))
	s := newContainerdSetup(t, reg, nil)
	prom := StartPrometheus(t, s.GH.Host)
	tc := pullCase{name: "image by tag", ref: img.Ref(reg.Host), want: reg.Content(t, img.Repo, img.Digest, nil)}

	// The scrape works before any pull: the series initialised at 0 are
	// there.
	prom.WaitScrapedAfter(t, time.Now())
	if v := prom.Value(t, `gatehouse_cache_requests_total{job="gatehouse", kind="blob", result="miss"}`); v != 0 {
		t.Errorf("blob cache misses before any pull: %v, want 0", v)
	}

	s.check(t, tc)
	prom.WaitScrapedAfter(t, time.Now())
	ge := func(expr string, min float64) float64 {
		t.Helper()
		v := prom.Value(t, expr)
		if v < min {
			t.Errorf("%s = %v, want >= %v", expr, v, min)
		}
		return v
	}
	ge(`sum(gatehouse_http_requests_total{route="manifest", method=~"GET|HEAD", code="200"})`, 1)
	blobReqs := ge(`sum(gatehouse_http_requests_total{route="blob", code="200"})`, 1)
	ge(`sum(gatehouse_http_request_duration_seconds_count{route="blob"})`, 1)
	ge(`gatehouse_cache_requests_total{kind="manifest", result="miss"}`, 1)
	ge(`gatehouse_cache_requests_total{kind="blob", result="miss"}`, 1)
	blobHits := prom.Value(t, `gatehouse_cache_requests_total{kind="blob", result="hit"}`)
	ge(fmt.Sprintf(`sum(gatehouse_upstream_requests_total{upstream=%q, code=~"2.."})`, reg.Host), 1)
	ge(fmt.Sprintf(`sum(gatehouse_upstream_request_duration_seconds_count{upstream=%q})`, reg.Host), 1)
	ge(fmt.Sprintf(`sum(gatehouse_upstream_fetched_bytes_total{upstream=%q})`, reg.Host), 1)
	ge(`sum(gatehouse_served_bytes_total)`, 1)
	fetches := ge(`gatehouse_blob_fetches_total`, 1)
	ge(`gatehouse_cache_size_bytes`, 1)
	ge(`gatehouse_cache_objects`, 1)
	ge(`go_goroutines{job="gatehouse"}`, 1)
	ge(`process_resident_memory_bytes{job="gatehouse"}`, 1)
	servedFromCache := prom.Value(t, `gatehouse_served_bytes_total{source="cache"}`)
	if v := prom.Value(t, `gatehouse_blob_fetches_failed_total`); v != 0 {
		t.Errorf("failed blob fetches: %v", v)
	}
	// Labels stay low-cardinality: no repository or digest in any series.
	if series, err := prom.Query(t, `{job="gatehouse", __name__=~"gatehouse_.*"}`); err != nil {
		t.Error(err)
	} else {
		for _, smp := range series {
			for k, v := range smp.Metric {
				if strings.Contains(v, img.Repo) || strings.Contains(v, "sha256:") {
					t.Errorf("series %v: label %s=%q names a repository or digest", smp.Metric, k, v)
				}
			}
		}
	}

	t.Log("second pull: served from gatehouse's cache")
	s.check(t, tc)
	prom.WaitScrapedAfter(t, time.Now())
	if v := ge(`gatehouse_cache_requests_total{kind="blob", result="hit"}`, 1); v <= blobHits {
		t.Errorf("blob cache hits %v after the second pull, %v after the first: want more", v, blobHits)
	}
	if v := prom.Value(t, `sum(gatehouse_http_requests_total{route="blob", code="200"})`); v <= blobReqs {
		t.Errorf("blob requests %v after the second pull, %v after the first: want more", v, blobReqs)
	}
	if v := prom.Value(t, `gatehouse_served_bytes_total{source="cache"}`); v <= servedFromCache {
		t.Errorf("bytes served from cache %v after the second pull, %v after the first: want more", v, servedFromCache)
	}
	if v := prom.Value(t, `gatehouse_blob_fetches_total`); v != fetches {
		t.Errorf("upstream blob fetches %v after the second pull, %v after the first: the cached blobs were fetched again", v, fetches)
	}

	t.Run("dashboard queries", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "gatehouse.json"))
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			Panels []struct {
				Title   string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatal(err)
		}
		vars := strings.NewReplacer("$__rate_interval", "1m", "$__range", "5m", "$job", "gatehouse", "$instance", ".*")
		n, nonEmpty := 0, 0
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				n++
				res, err := prom.Query(t, vars.Replace(tg.Expr))
				if err != nil {
					t.Errorf("panel %q: %v", p.Title, err)
				} else if len(res) > 0 {
					nonEmpty++
				}
			}
		}
		if n == 0 {
			t.Fatal("no dashboard queries")
		}
		t.Logf("%d dashboard queries accepted by prometheus, %d with data", n, nonEmpty)
	})
}
