package metrics

import (
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse/gatehouse/metrics/metricstest"
)

func TestRegisterExportsEveryFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	err := Register(reg, Sources{
		CacheUsage:         func() (int64, int) { return 42, 2 },
		RateLimitRemaining: map[string]func() int64{"docker.io": func() int64 { return 7 }},
		DB:                 func() (string, time.Time) { return "2-20261123", time.Now().Add(-time.Hour) },
		CacheLimit:         100,
		Disk:               func() (uint64, uint64, error) { return 10, 20, nil },
		DBMaxAge:           48 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Observe each vector once so that it is gathered.
	Requests.WithLabelValues("blob", "GET", "200").Inc()
	RequestDuration.WithLabelValues("blob", "GET").Observe(0.1)
	UpstreamRequests.WithLabelValues("docker.io", "200").Inc()
	UpstreamDuration.WithLabelValues("docker.io").Observe(0.1)
	UpstreamBytes.WithLabelValues("docker.io").Add(1)
	UpstreamRetries.WithLabelValues("docker.io", "429").Inc()
	UpstreamInFlight.WithLabelValues("docker.io").Inc()
	UpstreamQueued.WithLabelValues("docker.io").Inc()
	UpstreamQueueTimeouts.WithLabelValues("docker.io").Inc()
	UpstreamAddressesRefused.WithLabelValues("docker.io").Inc()
	ManifestFetchesFailed.WithLabelValues("docker.io", "read").Inc()
	BlobFetchResumes.WithLabelValues("docker.io", "ok").Inc()
	GateDecisions.WithLabelValues("denied", "vulnerable", "default").Inc()
	SignatureVerifications.WithLabelValues("verified").Inc()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if m := f.GetMetric(); len(m) > 0 && m[0].GetGauge() != nil {
			got[f.GetName()] = m[0].GetGauge().GetValue()
		} else {
			got[f.GetName()] = 0
		}
	}
	for _, name := range []string{
		"gatehouse_http_requests_total", "gatehouse_http_request_duration_seconds", "gatehouse_served_bytes_total",
		"gatehouse_cache_requests_total", "gatehouse_cache_size_bytes", "gatehouse_cache_objects",
		"gatehouse_cache_evictions_total", "gatehouse_upstream_requests_total", "gatehouse_upstream_request_duration_seconds",
		"gatehouse_upstream_fetched_bytes_total", "gatehouse_blob_fetches_total", "gatehouse_blob_fetches_joined_total",
		"gatehouse_upstream_ratelimit_remaining", "gatehouse_gate_decisions_total", "gatehouse_scan_duration_seconds",
		"gatehouse_scans_in_flight", "gatehouse_scans_queued", "gatehouse_vulndb_age_seconds", "gatehouse_vulndb_info",
		"gatehouse_signature_verifications_total", "go_goroutines", "process_resident_memory_bytes",
		"gatehouse_cache_max_bytes", "gatehouse_data_disk_free_bytes", "gatehouse_data_disk_size_bytes",
		"gatehouse_scan_limits_exceeded_total",
		"gatehouse_upstream_retries_total", "gatehouse_upstream_requests_in_flight", "gatehouse_upstream_requests_queued",
		"gatehouse_upstream_queue_timeouts_total", "gatehouse_upstream_addresses_refused_total",
		"gatehouse_manifest_fetches_failed_total", "gatehouse_blob_fetch_resumes_total",
		"gatehouse_auth_failures_total", "gatehouse_denial_store_errors_total",
		"gatehouse_scan_backoff_refusals_total", "gatehouse_gate_blobs_refused_total",
	} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s not exported", name)
		}
	}
	if got["gatehouse_cache_size_bytes"] != 42 || got["gatehouse_upstream_ratelimit_remaining"] != 7 ||
		got["gatehouse_cache_max_bytes"] != 100 || got["gatehouse_data_disk_free_bytes"] != 10 {
		t.Errorf("gauges read wrong values: %v", got)
	}
	if age := got["gatehouse_vulndb_age_seconds"]; age < 3500 || age > 3700 {
		t.Errorf("vulndb age %v", age)
	}
	if m, ok := got["gatehouse_vulndb_max_age_seconds"]; !ok || m != 48*3600 {
		t.Errorf("gatehouse_vulndb_max_age_seconds = %v (exported: %v), want 172800", m, ok)
	}
}

// recorder is a Registerer that remembers what was registered.
type recorder struct {
	prometheus.Registerer
	cs []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.cs = append(r.cs, c)
	return r.Registerer.Register(c)
}

// InitUpstream creates a series of every registered family labelled by
// upstream (a family added later without its pre-creation fails here),
// and the request counts by the codes GatehouseUpstreamFailing counts as
// failures.
func TestInitUpstreamCoversEveryUpstreamFamily(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	rec := &recorder{Registerer: reg}
	if err := Register(rec, Sources{}); err != nil {
		t.Fatal(err)
	}
	const up = "init.example"
	InitUpstream(up)
	found := map[string]bool{}
	codes := map[string]bool{}
	for _, s := range metricstest.Gather(t, reg) {
		if s.Labels["upstream"] == up {
			found[s.Family] = true
			if s.Family == "gatehouse_upstream_requests_total" {
				codes[s.Labels["code"]] = true
			}
		}
	}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	upstreamLabel := regexp.MustCompile(`variableLabels: \{[^}]*\bupstream\b`)
	var checked int
	for _, c := range rec.cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if !upstreamLabel.MatchString(d.String()) {
				continue
			}
			checked++
			if name := fqName.FindStringSubmatch(d.String())[1]; !found[name] {
				t.Errorf("%s has no series for upstream %s", name, up)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d families with an upstream label found; the Desc format changed?", checked)
	}
	for _, c := range upstreamCodes {
		if !codes[c] {
			t.Errorf("gatehouse_upstream_requests_total{code=%q} missing for %s", c, up)
		}
	}
}
