package main

import (
	"fmt"
	"slices"
	"time"
)

// The detail sections of scenarios 1 to 5: the blob and manifest figures
// of every target, and the CPU budget of a cold GET.

// writeWarm writes the section of scenario 1.
func writeWarm(p printer, r *results) {
	p("### 1. Warm %s blob\n", fmtBytes(r.Size))
	p("\nEach round every client GETs the blob from every target; the clients and the targets take turns in an order that rotates from round to round. nginx serves the same file as its blob path.\n")
	writeClientTables(p, r, false)
}

// writeManifests writes the section of scenario 2.
func writeManifests(p printer, opts options, r *results) {
	p("\n### 2. Warm manifest requests\n\n")
	p("%d concurrent keep-alive connections, %d round(s) of %s per target and kind.\n\n", opts.concurrency, opts.loadRounds, opts.duration)
	p("| target | request | median req/s | best req/s | p50 | p99 | errors |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, mode := range []string{"digest", "tag"} {
		for _, t := range []string{tGatehouse, tBaseline, tDistribution, tUpstream} {
			lrs := r.Manifest[t+"/"+mode]
			if len(lrs) == 0 {
				continue
			}
			xs := perSecond(lrs)
			errs := 0
			for _, lr := range lrs {
				errs += lr.Errors
			}
			// Latencies of the median round.
			mid := slices.IndexFunc(lrs, func(lr loadResult) bool { return lr.PerSecond() == median(xs) })
			if mid < 0 {
				mid = 0
			}
			req := "GET by digest"
			if mode == "tag" {
				req = "HEAD by tag"
			}
			p("| %s | %s | %.0f | %.0f | %s | %s | %d |\n", label[t], req, median(xs), best(xs),
				fmtLatency(lrs[mid].P50), fmtLatency(lrs[mid].P99), errs)
		}
	}
}

// writeCold writes the section of scenario 3 and the CPU budget.
func writeCold(p printer, r *results) {
	size := fmtBytes(r.Size)
	p("\n### 3. Cold %s blob\n\n", size)
	p("| target | median MB/s | best MB/s | runs | CPU time of the server process (median) |\n|---|---:|---:|---:|---:|\n")
	for _, t := range []string{tGatehouse, tBaseline, tDistribution, tRelay, tUpstream} {
		if xs := rates(r.Size, r.Cold[t]); len(xs) > 0 {
			p("| %s | %.0f | %.0f | %d | %s |\n", label[t], median(xs), best(xs), len(xs), fmtDur(medianDur(r.ColdCPU[t])))
		}
	}
	if xs := rates(r.Size, r.Write); len(xs) > 0 {
		p("| *for context: writing a fresh %s file (page cache, no fsync)* | %.0f | %.0f | %d | %s |\n", size, median(xs), best(xs), len(xs), fmtDur(medianDur(r.WriteCPU)))
	}
	p("\nThe table above is the bench client's; each client's, with its CPU time:\n")
	writeClientTables(p, r, true)
	if b, ok := r.coldBudget(); ok {
		writeBudget(p, r, b)
	}
	writeParts(p, r)
}

// writeBudget writes the CPU budget of a cold GET (see coldBudget).
func writeBudget(p printer, r *results, b budget) {
	p("\n**CPU budget of a cold GET** (CPU time for the %s blob, the least of the rounds; the direct time is the median). ", fmtBytes(r.Size))
	p("Every verifying cache relays the blob, hashes it and writes it; nginx's relay is the cheapest relay measured here ")
	p("(a cache that sends from its file with sendfile is spared one of nginx's two copies of the blob), ")
	p("and the hash and the write are timed by this program. At the target the whole GET may take %s ", fmtDur(b.allowedWall))
	p("(the direct time ÷ %.1f); the machine's %d CPUs then have %s of CPU time, of which the upstream and the client take their share of the direct GET.\n\n", targetCold, r.Machine.CPUs, fmtDur(b.capacity))
	p("| | CPU time |\n|---|---:|\n")
	p("| upstream serving the blob (direct GET) | %s |\n", fmtDur(b.upstream))
	p("| client reading it (direct GET) | %s |\n", fmtDur(b.client))
	p("| relaying it (nginx relay) | %s |\n", fmtDur(b.relay))
	p("| hashing it (sha256) | %s |\n", fmtDur(b.hash))
	p("| writing it to a fresh file | %s |\n", fmtDur(b.write))
	p("| **least a verifying cache needs** (relay + hash + write) | **%s** |\n", fmtDur(b.least))
	p("| **left for the cache at the target** (%d CPUs × %s − upstream − client) | **%s** |\n", r.Machine.CPUs, fmtDur(b.allowedWall), fmtDur(b.left))
	p("| gatehouse, measured | %s |\n", fmtDur(medianDur(r.ColdCPU[tGatehouse])))
	if len(r.ColdCPU[tBaseline]) > 0 {
		p("| %s, measured | %s |\n", label[tBaseline], fmtDur(medianDur(r.ColdCPU[tBaseline])))
	}
	p("\nWith every CPU busy all the time, such a cache could reach at most %.2f× direct here.\n", b.bestRatio)
}

// writeFanout writes the section of scenarios 4 and 5.
func writeFanout(p printer, r *results) {
	p("\n### 4 and 5. Concurrent cold clients of one %s blob\n\n", fmtBytes(r.Size))
	p("| target | clients | wall time | median client time | upstream blob GETs | upstream blob bytes | all upstream requests | peak RSS (before the clients) | peak anonymous RSS | proxy CPU | upstream CPU |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, t := range []string{tGatehouse, tBaseline, tDistribution, tUpstream} {
		fo, ok := r.Fanout[t]
		if !ok {
			continue
		}
		var pc []float64
		for _, d := range fo.PerClient {
			pc = append(pc, d.Seconds())
		}
		rss, anon := "—", "—"
		if fo.PeakRSS > 0 {
			rss = fmt.Sprintf("%.0f MiB (%.0f MiB)", float64(fo.PeakRSS)/mib, float64(fo.StartRSS)/mib)
			anon = fmt.Sprintf("%.0f MiB", float64(fo.PeakAnon)/mib)
		}
		name := label[t]
		if t == tUpstream {
			name = "upstream docker-registry (direct, through the counting hop)"
		}
		cpu := "—"
		if fo.CPU > 0 {
			cpu = fmtDur(fo.CPU)
		}
		p("| %s | %d | %s | %s | %d | %s (%.2f× blob) | %d | %s | %s | %s | %s |\n", name, fo.Clients, fmtDur(fo.Wall),
			fmtDur(time.Duration(median(pc)*float64(time.Second))), fo.Upstream.BlobGets,
			fmtBytes(fo.Upstream.BlobBytes), float64(fo.Upstream.BlobBytes)/float64(r.Size), fo.Upstream.Requests, rss, anon,
			cpu, fmtDur(fo.UpCPU))
	}
}

// budget is the CPU arithmetic of a cold GET (see coldBudget).
type budget struct {
	upstream, client, relay, hash, write time.Duration
	least                                time.Duration // relay + hash + write
	allowedWall                          time.Duration // direct time ÷ targetCold
	capacity                             time.Duration // CPUs × allowedWall
	left                                 time.Duration // capacity − upstream − client
	bestRatio                            float64       // direct time ÷ (all the CPU work spread over every CPU)
}

// coldBudget works out, from CPU times measured in this run, how much CPU
// a verifying cache may use if a cold GET is to reach the target, and the
// least it needs: relaying (nginx's relay, the cheapest measured),
// hashing and writing the blob. Every choice favours the cache: each CPU
// time is the least of the rounds, and every CPU is assumed busy all the
// time.
func (r *results) coldBudget() (budget, bool) {
	var b budget
	direct := medianDur(r.Cold[tUpstream])
	b.upstream, b.client = minDur(r.ColdCPU[tUpstream]), minDur(r.ClientCPU)
	b.relay, b.hash, b.write = minDur(r.ColdCPU[tRelay]), minDur(r.HashCPU), minDur(r.WriteCPU)
	if direct == 0 || r.Machine.CPUs == 0 || b.relay == 0 || b.hash == 0 || b.write == 0 {
		return b, false
	}
	b.least = b.relay + b.hash + b.write
	b.allowedWall = time.Duration(float64(direct) / targetCold)
	b.capacity = time.Duration(r.Machine.CPUs) * b.allowedWall
	b.left = b.capacity - b.upstream - b.client
	work := b.upstream + b.client + b.least
	b.bestRatio = float64(direct) * float64(r.Machine.CPUs) / float64(work)
	return b, true
}

// coldBound says, when it is so, that no verifying cache can meet the cold
// target on this machine: the least CPU such a cache needs exceeds what
// the target leaves for it (see coldBudget).
func (r *results) coldBound() string {
	b, ok := r.coldBudget()
	if !ok || b.least <= b.left {
		return ""
	}
	return fmt.Sprintf("*On this machine the cold target (%.1f× direct) is out of reach for any proxy that "+
		"verifies and caches: relaying, hashing and writing the blob take at least %s of CPU, the target leaves %s "+
		"for it once the upstream and the client have theirs, and even with every CPU busy all the time "+
		"such a proxy could reach at most %.2f× direct (section 3).*", targetCold, fmtDur(b.least), fmtDur(b.left), b.bestRatio)
}

// minDur is the least of ds; 0 for none.
func minDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return slices.Min(ds)
}
