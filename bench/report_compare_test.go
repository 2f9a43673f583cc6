package main

import (
	"strings"
	"testing"
	"time"
)

// TestJudge checks the before/after judgement: within noise while either
// median lies in the other's range of runs, better or worse beyond it as
// the figure goes, and no judgement from one run each.
func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		name        string
		now, base   []float64
		lowerBetter bool
		want        string
	}{
		{"none", nil, []float64{1}, false, verdictNotMeasured},
		{"same", []float64{5}, []float64{5}, true, judgeSame},
		{"one run each", []float64{5}, []float64{6}, false, judgeOneRun},
		{"new median in base range", []float64{90, 95, 100}, []float64{94, 100, 104}, false, judgeNoise},
		{"base median in new range", []float64{80, 96, 120}, []float64{100, 101, 102}, false, judgeNoise},
		{"overlapping ranges, medians outside", []float64{90, 92, 99}, []float64{98, 104, 106}, false, judgeWorse},
		{"faster beyond noise", []float64{110, 112, 114}, []float64{100, 101, 102}, false, judgeBetter},
		{"slower beyond noise", []float64{90, 91, 92}, []float64{100, 101, 102}, false, judgeWorse},
		{"time up beyond noise", []float64{2.0, 2.1}, []float64{1.0, 1.1}, true, judgeWorse},
		{"time down beyond noise", []float64{1.0, 1.1}, []float64{2.0, 2.1}, true, judgeBetter},
		{"one run against several", []float64{101}, []float64{100, 102, 104}, false, judgeNoise},
	} {
		if got := judge(tc.now, tc.base, tc.lowerBetter); got != tc.want {
			t.Errorf("%s: judge(%v, %v, lowerBetter %v) = %q, want %q", tc.name, tc.now, tc.base, tc.lowerBetter, got, tc.want)
		}
	}
}

// fakeResults are the figures of a run of gatehouse, the distribution
// proxy and, with baseline, the baseline: enough for every section of
// the report.
func fakeResults(baseline bool) *results {
	s := time.Second
	r := &results{
		Machine:  machine{CPUs: 2},
		Versions: map[string]string{tGatehouse: "gatehouse new"},
		Size:     1 << 30,
		Proxies:  []string{tGatehouse, tDistribution},
		Cold:     map[string][]time.Duration{tGatehouse: {2 * s, 3 * s}, tDistribution: {4 * s}, tUpstream: {s}, tRelay: {s}},
		ColdCPU:  map[string][]time.Duration{tGatehouse: {s}, tUpstream: {s / 2}, tRelay: {s / 3}},
		HashCPU:  []time.Duration{s}, WriteCPU: []time.Duration{s}, ClientCPU: []time.Duration{s},
		Warm:     map[string][]time.Duration{tGatehouse: {s, 2 * s, 3 * s}, tNginx: {s}, tUpstream: {s}},
		Manifest: map[string][]loadResult{},
		Fanout:   map[string]fanout{tGatehouse: {Clients: 8, Wall: 3 * s, Upstream: counts{BlobGets: 1, BlobBytes: 1 << 30}, PeakRSS: 100 << 20}},
		Failures: map[string]string{},
		Verdict:  &verdictResult{ALayers: 4, BLayers: 4, Direct: s, Runs: map[string]*verdictRun{tGatehouse: {GateOff: s, FirstA: 4 * s, CachedPull: s, FirstB: s, VerdictA: "admitted"}}},
		Soak:     map[string]*soakResult{tGatehouse: {Duration: time.Minute, Clients: 4, Pulls: 600, Warm: procSample{Goroutines: 10}}},
	}
	r.Manifest[tGatehouse+"/digest"] = []loadResult{{Requests: 1000, Elapsed: s}}
	// The bench client's per-client figures are the same maps.
	r.BlobClients = []string{cBench}
	r.ByClient = map[string]*clientFigures{cBench: {Warm: r.Warm, WarmCPU: map[string][]time.Duration{},
		Cold: r.Cold, ColdCPU: map[string][]time.Duration{}, ColdSrv: r.ColdCPU}}
	if !baseline {
		return r
	}
	r.Proxies = []string{tGatehouse, tBaseline, tDistribution}
	r.Versions[tBaseline] = "gatehouse old"
	r.Cold[tBaseline] = []time.Duration{2 * s, 4 * s}
	r.ColdCPU[tBaseline] = []time.Duration{s}
	r.Warm[tBaseline] = []time.Duration{4 * s, 5 * s, 6 * s}
	r.Manifest[tBaseline+"/digest"] = []loadResult{{Requests: 1000, Elapsed: s}}
	r.Fanout[tBaseline] = fanout{Clients: 8, Wall: 4 * s, Upstream: counts{BlobGets: 1, BlobBytes: 1 << 30}, PeakRSS: 90 << 20}
	r.Verdict.Runs[tBaseline] = &verdictRun{GateOff: s, FirstA: 5 * s, CachedPull: s, FirstB: s, VerdictA: "admitted"}
	r.Soak[tBaseline] = &soakResult{Duration: time.Minute, Clients: 4, Pulls: 540, Warm: procSample{Goroutines: 12}}
	r.Failures[sSoak+"/"+tBaseline] = "late"
	return r
}

// TestBaselineReport checks that a baseline gets its own rows in every
// section and a before/after section, and that without one the report
// says nothing of it.
func TestBaselineReport(t *testing.T) {
	opts := options{command: "go run ./bench", clients: 8, warmRuns: 3, coldRuns: 2, loadRounds: 1, concurrency: 4, duration: time.Second}
	var without, with strings.Builder
	if err := writeReport(&without, opts, fakeResults(false)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(without.String(), "baseline") {
		t.Errorf("a report without a baseline speaks of one:\n%s", without.String())
	}
	if err := writeReport(&with, opts, fakeResults(true)); err != nil {
		t.Fatal(err)
	}
	report := with.String()
	for _, want := range []string{
		"## Before/after: gatehouse against gatehouse (baseline)",
		"| 1. warm 1 GiB blob, MB/s | 537 MB/s (358 MB/s–1074 MB/s) | 215 MB/s (179 MB/s–268 MB/s) | 2.50× | 3 / 3 | " + judgeBetter + " |",
		"| 2. warm manifest by digest, req/s | 1000 req/s | 1000 req/s | 1.00× | 1 / 1 | " + judgeSame + " |",
		"| 3. cold 1 GiB blob, MB/s | 447 MB/s (358 MB/s–537 MB/s) | 403 MB/s (268 MB/s–537 MB/s) | 1.11× | 2 / 2 | " + judgeNoise + " |",
		"| 4. 8 cold clients: wall time | 3.00 s | 4.00 s | 0.75× | 1 / 1 | " + judgeOneRun + " |",
		"| 2. warm manifest by tag, req/s | — | — | — | 0 / 0 | " + verdictNotMeasured + " |",
		"| 7. soak: pulls/s | 10 | 9 | 1.11× |",
		"| gatehouse (baseline) | 215 | 179–268 | 3 |",          // warm
		"| gatehouse (baseline) | GET by digest |",              // manifests
		"| gatehouse (baseline) | 403 | 537 | 2 | 1.00 s |",     // cold
		"| gatehouse (baseline) | 8 | 4.00 s |",                 // fanout
		"| gatehouse (baseline), measured | 1.00 s |",           // CPU budget
		"cold pull of A through gatehouse (baseline), gate off", // verdict
		"manifest GET until its 200, gatehouse (baseline) | 5.00 s",
		"| gatehouse (baseline) | 540 |", // soak pulls
		"| goroutines (`go_goroutines`), gatehouse (baseline) | 12 |",
		"Incomplete: gatehouse (baseline): late",
		"| gatehouse (baseline) | `gatehouse old` |", // machine
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(report)
	}
}

func TestBaselineFlag(t *testing.T) {
	if _, err := parseFlags([]string{"-baseline", "/tmp/old"}); err == nil {
		t.Error("-baseline without -gatehouse: no error")
	}
	opts, err := parseFlags([]string{"-gatehouse", "/tmp/new", "-baseline", "/tmp/old", "-quick"})
	if err != nil || opts.baseline != "/tmp/old" || opts.gatehouse != "/tmp/new" {
		t.Errorf("parseFlags: %+v, %v", opts, err)
	}
}
