// Package metrics holds gatehouse's Prometheus collectors. They are package
// variables that the packages doing the work update; nothing is registered
// until Register is called (no init-time side effects). Labels stay
// low-cardinality: route pattern, method, code, upstream, result, reason,
// rule — never a repository or digest.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const ns = "gatehouse"

var (
	// Requests counts client requests by route pattern (base, manifest,
	// blob, tags, referrers, upload, api, health), method and status code.
	Requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "http_requests_total",
		Help: "Client requests by route pattern, method and status code."}, []string{"route", "method", "code"})
	// RequestDuration observes request latency by route and method.
	RequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "http_request_duration_seconds",
		Help:    "Client request duration (to the last byte) by route pattern and method.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}}, []string{"route", "method"})
	// ServedBytes counts blob bytes sent to clients by source.
	ServedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "served_bytes_total",
		Help: "Blob bytes sent to clients, by source: cache (committed file) or upstream (streamed from a fetch in progress)."}, []string{"source"})
	// CacheRequests counts cache lookups by kind and result.
	CacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cache_requests_total",
		Help: "Cache lookups by kind (manifest, blob, tag) and result (hit, miss, stale, bypass: the cache could not be written)."}, []string{"kind", "result"})
	// Evictions counts blobs evicted by the size limit.
	Evictions = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_evictions_total",
		Help: "Blobs evicted to keep the cache within cache.maxSize."})
	// EvictedBytes counts bytes evicted.
	EvictedBytes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_evicted_bytes_total",
		Help: "Bytes of blobs evicted to keep the cache within cache.maxSize."})
	// UpstreamRequests counts requests to upstreams by upstream and code
	// ("error" for a network failure). A request stopped by a failed
	// registry ping or token exchange counts with that step's status.
	UpstreamRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_requests_total",
		Help: "Requests to upstream registries by upstream and status code (error: no response); a request stopped by a failed registry ping or token exchange counts with that step's status."}, []string{"upstream", "code"})
	// UpstreamDuration observes the time to upstream response headers.
	UpstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_request_duration_seconds",
		Help:    "Time to upstream response headers by upstream.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"upstream"})
	// UpstreamBytes counts blob bytes fetched from upstreams.
	UpstreamBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_fetched_bytes_total",
		Help: "Blob bytes fetched from upstream registries."}, []string{"upstream"})
	// UpstreamRetries counts requests to upstreams that were retried, by
	// upstream and reason (network, 5xx, 429).
	UpstreamRetries = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_retries_total",
		Help: "Upstream requests retried before anything reached the client, by upstream and reason (network, 5xx, 429)."}, []string{"upstream", "reason"})
	// UpstreamInFlight and UpstreamQueued show upstreams.maxConcurrentFetches
	// at work; UpstreamQueueTimeouts counts requests that gave up waiting.
	UpstreamInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_requests_in_flight",
		Help: "Requests to an upstream in flight (a blob download counts until its body is read)."}, []string{"upstream"})
	UpstreamQueued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_requests_queued",
		Help: "Requests waiting for a slot under upstreams.maxConcurrentFetches."}, []string{"upstream"})
	UpstreamQueueTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_queue_timeouts_total",
		Help: "Requests that waited longer than responseHeaderTimeout for an upstream slot and failed with 503."}, []string{"upstream"})
	// UpstreamAddressesRefused counts connections refused because a redirect
	// or token endpoint of a non-internal upstream led to a loopback,
	// link-local or private address.
	UpstreamAddressesRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_addresses_refused_total",
		Help: "Connections refused because a non-internal upstream's redirect or token endpoint led to a loopback, link-local or private address."}, []string{"upstream"})
	// ManifestFetchesFailed counts manifests fetched from upstream that were
	// not kept, by upstream and reason.
	ManifestFetchesFailed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "manifest_fetches_failed_total",
		Help: "Upstream manifest downloads that failed and were not cached, by upstream and reason (read, digest, invalid, too_large)."}, []string{"upstream", "reason"})
	// FetchesStarted and FetchesJoined count upstream blob fetches and the
	// requests that joined one already under way (deduplication).
	FetchesStarted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "blob_fetches_total",
		Help: "Upstream blob fetches started."})
	FetchesJoined = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "blob_fetches_joined_total",
		Help: "Blob requests that joined an upstream fetch already under way instead of starting one."})
	// FetchesFromPeers counts blob requests streamed from the replica of
	// the cluster that was fetching the blob, instead of from upstream.
	FetchesFromPeers = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "blob_fetches_from_peers_total",
		Help: "Blob requests streamed from the replica fetching the blob (cluster-wide deduplication) instead of from upstream."})
	// ClusterLeases counts the cluster's lease requests by kind (fetch,
	// scan, evict, db) and result (acquired, held_elsewhere, error).
	ClusterLeases = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cluster_leases_total",
		Help: "Cluster lease requests by kind (fetch, scan, evict, db) and result (acquired, held_elsewhere, lost, error)."}, []string{"kind", "result"})
	// PeerRequests counts blob requests this replica's peer listener
	// answered, by result (ok, not_found, unauthorized, error).
	PeerRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "peer_requests_total",
		Help: "Blob requests from other replicas answered by the peer listener, by result (ok, not_found, unauthorized, error)."}, []string{"result"})
	FetchesFailed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "blob_fetches_failed_total",
		Help: "Upstream blob fetches that failed (error, digest or size mismatch, stall); nothing was cached."})
	// BlobFetchResumes counts blob downloads resumed from the bytes
	// received, after their upstream went silent for resumeAfter or broke
	// off, by upstream and result: ok (the new request brought new bytes)
	// or failed (it did not; the fetch resumes again or fails).
	BlobFetchResumes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "blob_fetch_resumes_total",
		Help: "Upstream blob downloads resumed with a Range request after the body went silent or broke off, by upstream and result (ok: new bytes came; failed: none did)."}, []string{"upstream", "result"})
	// CacheWriteErrors counts failures to write the cache (disk full,
	// read-only directory); BlobPassthroughs the blob transfers that then
	// went from upstream to the client without being cached.
	CacheWriteErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_write_errors_total",
		Help: "Failed writes to the blob cache (disk full, unwritable directory); pulls go on without caching."})
	BlobPassthroughs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "blob_passthrough_total",
		Help: "Blob transfers streamed from upstream without caching because the cache could not be written."})
	// GateDecisions counts verdicts served by result, reason and rule.
	GateDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "gate_decisions_total",
		Help: "Gate decisions on served manifests by result (admitted, denied, error, pending), reason and rule."}, []string{"result", "reason", "rule"})
	// DenialStoreErrors counts failed writes of the denial record (refused
	// pulls) to the verdict database. The pulls stay refused; the denials
	// stay queued in memory and the next flush tries again.
	DenialStoreErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "denial_store_errors_total",
		Help: "Failed writes of refused pulls to the denial record in gate.db; the pulls stay refused and the denials stay queued for the next flush."})
	// ScanDuration observes scan times.
	ScanDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "scan_duration_seconds",
		Help:    "Duration of image scans (layer fetch, analysis and detection).",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}})
	// ScansInFlight and ScansQueued gauge the scan workers.
	ScansInFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "scans_in_flight", Help: "Scans running."})
	ScansQueued   = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "scans_queued", Help: "Scans waiting for a worker."})
	// ScanErrors counts failed scans.
	ScanErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "scan_errors_total",
		Help: "Scans that failed (the image was refused unless its rule is in audit mode)."})
	// ScanLimitsExceeded counts scans stopped by a layer past one of
	// gate.scanLimits, by limit (maxLayerSize, maxLayerFiles, maxImageSize): decompression
	// bombs, or limits set too low for real images. Each is a scan error too.
	ScanLimitsExceeded = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "scan_limits_exceeded_total",
		Help: "Scans stopped because a layer broke a gate.scanLimits limit (maxLayerSize, maxLayerFiles, maxImageSize); the image was refused unless its rule is in audit mode."}, []string{"limit"})
	// ScanBackoffRefusals counts manifest requests answered from a
	// remembered failed scan (back-off) instead of scanning again.
	ScanBackoffRefusals = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "scan_backoff_refusals_total",
		Help: "Manifest requests refused from a remembered failed scan of the same image, without scanning again (the failure is retried after a back-off)."})
	// BlobsRefused counts blob requests the gate refused, by reason:
	// not_admitted (no admitted image of the repository lists the blob) or
	// denied_image (a denied image of the upstream lists it).
	BlobsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "gate_blobs_refused_total",
		Help: "Blob requests refused by the gate: not_admitted (no admitted image of the repository lists it) or denied_image (a denied image of the upstream lists it)."}, []string{"reason"})
	// DBUpdates counts vulnerability DB update attempts by result.
	DBUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "vulndb_updates_total",
		Help: "Vulnerability DB update attempts by result (updated, current, error)."}, []string{"result"})
	// SignatureVerifications counts signature checks by result: verified,
	// not_verified (no signature by a trusted identity) or error.
	SignatureVerifications = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "signature_verifications_total",
		Help: "Signature verifications by result (verified; not_verified: no valid signature by a trusted identity; error: the check failed)."}, []string{"result"})
	// AuthFailures counts refused client requests by realm (pull, api) and
	// reason (missing, malformed, invalid).
	AuthFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "auth_failures_total",
		Help: "Client requests refused for missing, malformed or invalid credentials, by realm (pull, api)."}, []string{"realm", "reason"})
	// AccessReloads counts reloads of the TLS certificate and credential
	// files by file (tls, clientCA, htpasswd, tokens, apiTokens) and result
	// (ok, error; an error keeps the previous contents).
	AccessReloads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "access_reloads_total",
		Help: "Reloads of the TLS certificate and credential files after a change, by file and result (error: the previous contents stay in use)."}, []string{"file", "result"})
)

// Sources of the gauges read at scrape time.
type Sources struct {
	// CacheUsage returns the bytes and number of cached blobs.
	CacheUsage func() (bytes int64, count int)
	// CacheLimit is cache.maxSize (0: no limit).
	CacheLimit int64
	// Disk returns the free and total bytes of the data directory's
	// filesystem.
	Disk func() (free, total uint64, err error)
	// RateLimitRemaining returns, per upstream, the last Docker Hub style
	// ratelimit-remaining value seen (-1: none seen).
	RateLimitRemaining map[string]func() int64
	// DB returns the vulnerability DB version and build time (zero: none).
	DB func() (version string, updatedAt time.Time)
	// DBMaxAge is gate.db.maxAge (0: no limit).
	DBMaxAge time.Duration
}

// Register registers every collector, the Go and process collectors and the
// gauges read from src on reg.
func Register(reg prometheus.Registerer, src Sources) error {
	cs := []prometheus.Collector{
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		Requests, RequestDuration, ServedBytes, CacheRequests, Evictions, EvictedBytes,
		UpstreamRequests, UpstreamDuration, UpstreamBytes, UpstreamRetries, UpstreamInFlight, UpstreamQueued,
		UpstreamQueueTimeouts, UpstreamAddressesRefused, ManifestFetchesFailed, FetchesStarted, FetchesJoined, FetchesFailed,
		FetchesFromPeers, ClusterLeases, PeerRequests,
		BlobFetchResumes, CacheWriteErrors, BlobPassthroughs,
		GateDecisions, DenialStoreErrors, ScanDuration, ScansInFlight, ScansQueued, ScanErrors, DBUpdates, SignatureVerifications,
		AuthFailures, AccessReloads,
	}
	cs = append(cs, ScanLimitsExceeded, ScanBackoffRefusals, BlobsRefused)
	cs = append(cs, eventCollectors()...)
	cs = append(cs, exceptionCollectors()...)
	cs = append(cs, watchCollectors()...)
	for _, r := range []string{"not_admitted", "denied_image"} {
		BlobsRefused.WithLabelValues(r)
	}
	for _, k := range []string{"fetch", "scan", "evict", "db", "watch"} {
		for _, r := range []string{"acquired", "held_elsewhere", "lost", "error"} {
			ClusterLeases.WithLabelValues(k, r)
		}
	}
	for _, r := range []string{"ok", "not_found", "unauthorized", "error"} {
		PeerRequests.WithLabelValues(r)
	}
	if src.CacheUsage != nil {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "cache_size_bytes", Help: "Bytes of cached blobs."},
				func() float64 { b, _ := src.CacheUsage(); return float64(b) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "cache_objects", Help: "Number of cached blobs."},
				func() float64 { _, n := src.CacheUsage(); return float64(n) }))
	}
	cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "cache_max_bytes",
		Help: "cache.maxSize: the bytes of blobs kept before eviction; 0 means no limit."},
		func() float64 { return float64(src.CacheLimit) }))
	if src.Disk != nil {
		disk := func(pick func(free, total uint64) uint64) func() float64 {
			return func() float64 {
				free, total, err := src.Disk()
				if err != nil {
					return -1
				}
				return float64(pick(free, total))
			}
		}
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "data_disk_free_bytes",
				Help: "Free bytes on the filesystem of the data directory (-1: unknown)."}, disk(func(f, _ uint64) uint64 { return f })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "data_disk_size_bytes",
				Help: "Size of the filesystem of the data directory (-1: unknown)."}, disk(func(_, t uint64) uint64 { return t })))
	}
	for up, f := range src.RateLimitRemaining {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_ratelimit_remaining",
			Help:        "Last ratelimit-remaining value the upstream sent (Docker Hub); -1 when none was seen.",
			ConstLabels: prometheus.Labels{"upstream": up}}, func() float64 { return float64(f()) }))
	}
	if src.DB != nil {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "vulndb_age_seconds",
				Help: "Age of the loaded vulnerability DB (since it was built); -1 when none is loaded."},
				func() float64 {
					_, at := src.DB()
					if at.IsZero() {
						return -1
					}
					return time.Since(at).Seconds()
				}),
			&dbInfo{src: src.DB},
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "vulndb_max_age_seconds",
				Help: "gate.db.maxAge: past it, new verdicts follow each rule's staleDB (deny or warn); 0 when unset."},
				func() float64 { return src.DBMaxAge.Seconds() }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	// Pre-initialise the series dashboards and alerts rely on, so that they
	// exist (at 0) before the first event.
	for _, s := range []string{"cache", "upstream"} {
		ServedBytes.WithLabelValues(s)
	}
	for _, k := range []string{"manifest", "blob", "tag"} {
		for _, r := range []string{"hit", "miss"} {
			CacheRequests.WithLabelValues(k, r)
		}
	}
	for _, r := range []string{"updated", "current", "error"} {
		DBUpdates.WithLabelValues(r)
	}
	for _, l := range []string{"maxLayerSize", "maxLayerFiles", "maxImageSize"} {
		ScanLimitsExceeded.WithLabelValues(l)
	}
	for _, realm := range []string{"pull", "api"} {
		for _, r := range []string{"missing", "malformed", "invalid"} {
			AuthFailures.WithLabelValues(realm, r)
		}
	}
	for _, r := range []string{"verified", "not_verified", "error"} {
		SignatureVerifications.WithLabelValues(r)
	}
	for _, f := range []string{"tls", "clientCA", "htpasswd", "tokens", "apiTokens"} {
		for _, r := range []string{"ok", "error"} {
			AccessReloads.WithLabelValues(f, r)
		}
	}
	// The routes of a pull; the others appear with their first request.
	for _, rm := range [][2]string{{"manifest", "HEAD"}, {"manifest", "GET"}, {"blob", "GET"}} {
		Requests.WithLabelValues(rm[0], rm[1], "200")
		RequestDuration.WithLabelValues(rm[0], rm[1])
	}
	InitGateDecisions(nil)
	return nil
}

// upstreamCodes are the status codes whose gatehouse_upstream_requests_total
// series exist for every configured upstream before its first request: a
// success, no response at all, and the 5xx a failing registry or its load
// balancer answers. A series that appears at its first failure already
// holds 1, and rate() sees no increase in it; GatehouseUpstreamFailing
// would miss an upstream that fails from the start.
var upstreamCodes = []string{"200", "error", "500", "502", "503", "504"}

// InitUpstream creates, at 0, the series of every upstream-labelled family
// for one configured upstream, so that dashboards and alerts see the
// upstream (and the first increase of each counter) from the start.
// upstream.New calls it.
func InitUpstream(upstream string) {
	for _, c := range upstreamCodes {
		UpstreamRequests.WithLabelValues(upstream, c)
	}
	UpstreamDuration.WithLabelValues(upstream)
	UpstreamBytes.WithLabelValues(upstream)
	for _, r := range []string{"network", "5xx", "429"} {
		UpstreamRetries.WithLabelValues(upstream, r)
	}
	UpstreamInFlight.WithLabelValues(upstream)
	UpstreamQueued.WithLabelValues(upstream)
	UpstreamQueueTimeouts.WithLabelValues(upstream)
	UpstreamAddressesRefused.WithLabelValues(upstream)
	for _, r := range []string{"read", "digest", "invalid", "too_large"} {
		ManifestFetchesFailed.WithLabelValues(upstream, r)
	}
	for _, r := range []string{"ok", "failed"} {
		BlobFetchResumes.WithLabelValues(upstream, r)
	}
}

// Decision is one label combination of gatehouse_gate_decisions_total.
type Decision struct{ Result, Reason, Rule string }

// InitGateDecisions creates, at 0, the decision series of the rules in
// force (the gate knows which results and reasons each rule can give) and
// the rule-less error and pending ones. gate.New calls it.
func InitGateDecisions(ds []Decision) {
	for _, r := range []string{"error", "pending"} {
		GateDecisions.WithLabelValues(r, r, "")
	}
	for _, d := range ds {
		GateDecisions.WithLabelValues(d.Result, d.Reason, d.Rule)
	}
}

// dbInfo exports gatehouse_vulndb_info{version="..."} 1.
type dbInfo struct {
	src func() (string, time.Time)
}

var dbInfoDesc = prometheus.NewDesc(ns+"_vulndb_info", "The loaded vulnerability DB version (value 1).", []string{"version"}, nil)

func (d *dbInfo) Describe(ch chan<- *prometheus.Desc) { ch <- dbInfoDesc }

func (d *dbInfo) Collect(ch chan<- prometheus.Metric) {
	v, _ := d.src()
	if v == "" {
		v = "none"
	}
	ch <- prometheus.MustNewConstMetric(dbInfoDesc, prometheus.GaugeValue, 1, v)
}
