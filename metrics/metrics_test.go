package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterExportsEveryFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	err := Register(reg, Sources{
		CacheUsage:         func() (int64, int) { return 42, 2 },
		RateLimitRemaining: map[string]func() int64{"docker.io": func() int64 { return 7 }},
		DB:                 func() (string, time.Time) { return "2-20261123", time.Now().Add(-time.Hour) },
		CacheLimit:         100,
		Disk:               func() (uint64, uint64, error) { return 10, 20, nil },
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
}
