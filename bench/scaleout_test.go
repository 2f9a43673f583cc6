package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestOnlyFlag(t *testing.T) {
	opts, err := parseFlags([]string{"-gatehouse", "/bin/true", "-only", "scaleout", "-scaleout-size", "8MiB"})
	if err != nil {
		t.Fatal(err)
	}
	if opts.only != onlyScaleout || opts.scaleoutSize != 8<<20 || opts.scaleoutClients != 16 {
		t.Errorf("-only scaleout: only %q, size %d, clients %d", opts.only, opts.scaleoutSize, opts.scaleoutClients)
	}
	if opts, err = parseFlags(nil); err != nil || opts.only != "" || opts.scaleoutSize != 256<<20 {
		t.Errorf("defaults: only %q, scale-out size %d, %v; want everything, 256 MiB", opts.only, opts.scaleoutSize, err)
	}
	if opts, err = parseFlags([]string{"-quick"}); err != nil || opts.scaleoutSize != 32<<20 {
		t.Errorf("-quick: scale-out size %d, %v; want 32 MiB", opts.scaleoutSize, err)
	}
	for _, args := range [][]string{
		{"-gatehouse", "/bin/true", "-only", "soak"},
		{"-only", "scaleout"}, // no gatehouse
		{"-scaleout-clients", "0"},
		{"-scaleout-size", "lots"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q): no error", args)
		}
	}
}

func TestSplitConnsAndSumLoads(t *testing.T) {
	if got := splitConns(32, 3); len(got) != 3 || got[0] != 11 || got[1] != 11 || got[2] != 10 {
		t.Errorf("splitConns(32, 3) = %v, want [11 11 10]", got)
	}
	if got := splitConns(2, 3); got[0]+got[1]+got[2] != 2 {
		t.Errorf("splitConns(2, 3) = %v: connections lost", got)
	}
	lr := sumLoads([]loadResult{
		{Requests: 100, Elapsed: time.Second, P50: time.Millisecond, P99: 3 * time.Millisecond},
		{Requests: 50, Errors: 2, FirstErr: "boom", Elapsed: time.Second, P50: 2 * time.Millisecond, P99: time.Millisecond},
	})
	if lr.Requests != 150 || lr.Errors != 2 || lr.FirstErr != "boom" || lr.PerSecond() != 150 || lr.P50 != 2*time.Millisecond || lr.P99 != 3*time.Millisecond {
		t.Errorf("sumLoads: %+v", lr)
	}
}

func fakeScaleout() *results {
	const size = 64 << 20
	cold := func(wall time.Duration, gets, bytes int64) *fanout {
		return &fanout{Clients: 8, Wall: wall, Upstream: counts{BlobGets: gets, BlobBytes: bytes}}
	}
	lr := func(n int) loadResult { return loadResult{Requests: n, Elapsed: time.Second} }
	r := fakeResults(false)
	r.Scaleout = &scaleoutResult{
		Size: size, LayerDigest: "sha256:abc", WarmClients: 16, ColdClients: 8, Concurrency: 32, Duration: time.Second,
		Setups: []*scaleoutSetup{
			{Name: soLocal, Replicas: 1, Warm: []time.Duration{time.Second, 2 * time.Second},
				Cold: cold(time.Second, 1, size), Manifest: []loadResult{lr(10000)}},
			{Name: soShared1, Replicas: 1, Shared: true, Warm: []time.Duration{2 * time.Second},
				Cold: cold(2*time.Second, 1, size), Manifest: []loadResult{lr(4000)}},
			{Name: soShared3, Replicas: 3, Shared: true, Warm: []time.Duration{2 * time.Second},
				Cold: cold(2*time.Second, 1, size), Manifest: []loadResult{lr(3000)}},
		},
	}
	return r
}

func TestScaleoutReport(t *testing.T) {
	r := fakeScaleout()
	so := r.Scaleout
	rows := so.rows()
	// 16 clients × 64 MiB in 2 s: 536.9 MB/s; the local rounds 1073.7 and 536.9.
	if rows[0].values[1] < 536 || rows[0].values[1] > 537 {
		t.Errorf("warm MB/s of one shared replica: %v", rows[0].values[1])
	}
	if got := ratioCell(rows[3].values, 2, 1); got != "0.75×" {
		t.Errorf("manifest ratio 3 ÷ 1 replica: %s, want 0.75×", got)
	}
	if got := ratioCell(rows[3].values, 2, -1); got != "—" {
		t.Errorf("ratio with no local set-up: %s", got)
	}

	var b strings.Builder
	p := printer(func(format string, args ...any) { fmt.Fprintf(&b, format, args...) })
	writeScaleout(p, r)
	out := b.String()
	for _, want := range []string{
		"## Scale-out: replicas on shared storage",
		"| local stores, 1 process (reference) | shared stores, 1 replica | shared stores, 3 replicas | 3 replicas ÷ 1 replica | 3 replicas ÷ local | 3 replicas against 1 replica |",
		"| 8 cold clients: upstream blob bytes (blob GETs) | 64 MiB = 1.00× blob (1) | 64 MiB = 1.00× blob (1) | 64 MiB = 1.00× blob (1) | 1.00× | 1.00× | same |",
		"| manifest GET by digest, 32 connections spread over the replicas: req/s in all, median (min–max) | 10000 req/s | 4000 req/s | 3000 req/s | 0.75× | 0.30× | one run each: not judged |",
		"cost the upstream 1.00× the blob (1 blob GET(s)): PASS",
		"| failed manifest requests | 0 | 0 | 0 | — | — | same |",
		"share the same CPUs",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("section lacks %q:\n%s", want, out)
		}
	}

	// Two upstream fetches for three replicas fail the target.
	so.Setups[2].Cold.Upstream = counts{BlobGets: 2, BlobBytes: 2 * so.Size}
	b.Reset()
	writeScaleout(p, r)
	if !strings.Contains(b.String(), "2.00× the blob (2 blob GET(s)): FAIL") {
		t.Errorf("two fetches not failed:\n%s", b.String())
	}

	// -only scaleout writes a report of its own; the full report has the section.
	b.Reset()
	writeScaleoutOnly(p, options{only: onlyScaleout, command: "go run ./bench -only scaleout"}, r)
	if out := b.String(); !strings.Contains(out, "## Machine") || !strings.Contains(out, "## Scale-out") || strings.Contains(out, "## Summary") {
		t.Errorf("-only scaleout report:\n%s", out)
	}
	var full strings.Builder
	if err := writeReport(&full, options{command: "go run ./bench"}, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(full.String(), "## Scale-out: replicas on shared storage") {
		t.Errorf("full report lacks the scale-out section")
	}
}
