package main

import (
	"strings"
	"testing"
	"time"
)

// TestColdCPURanges checks that a missed cold CPU target names each
// client's medians and ranges, and tells overlapping ranges from ranges
// apart.
func TestColdCPURanges(t *testing.T) {
	s := time.Second
	r := &results{BlobClients: []string{cBench, cCurl}, ByClient: map[string]*clientFigures{}}
	r.client(cBench).ColdSrv = map[string][]time.Duration{tGatehouse: {2 * s, 3 * s, 4 * s}, tDistribution: {1 * s, 2500 * time.Millisecond}}
	r.client(cCurl).ColdSrv = map[string][]time.Duration{tGatehouse: {3 * s, 4 * s}, tDistribution: {1 * s, 2 * s}}
	got := r.coldCPURanges()
	for _, want := range []string{
		"bench client gatehouse 3.00 s (2.00 s–4.00 s), distribution",
		"(1.00 s–2.50 s), ranges overlap",
		"curl client gatehouse",
		"(1.00 s–2.00 s), ranges apart",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("coldCPURanges() = %q, want it to contain %q", got, want)
		}
	}
}
