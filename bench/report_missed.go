package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// missedNotes explains, from this run's own measurements, each blob
// target of the summary that was missed: the runs' ranges (is the
// difference beyond what the runs of one target differ by?), the clients'
// and servers' CPU time, the machine's load, and where gatehouse's cold
// GET spent its CPU (profile.go).
func (r *results) missedNotes() []string {
	var notes []string
	for _, c := range r.BlobClients {
		for _, peer := range []string{tDistribution, tNginx} {
			if n := r.missedWarm(c, peer); n != "" {
				notes = append(notes, n)
			}
		}
	}
	for _, c := range r.BlobClients {
		if n := r.missedCold(c); n != "" {
			notes = append(notes, n)
		}
	}
	if n := r.missedColdCPU(); n != "" {
		notes = append(notes, n)
	}
	if n := r.missedColdBest(); n != "" {
		notes = append(notes, n)
	}
	if len(notes) > 0 && r.Machine.LoadStart != "" {
		notes = append(notes, fmt.Sprintf("The load average (1/5/15 min) was %s at the start and %s at the end of the run, on %d CPUs: "+
			"other work on the machine shares the CPUs with every server and client measured.",
			r.Machine.LoadStart, r.Machine.LoadEnd, r.Machine.CPUs))
	}
	return notes
}

// rangeNote describes how the runs of gatehouse and peer compare: whether
// their ranges overlap.
func rangeNote(size int64, g, p []time.Duration) string {
	gx, px := rates(size, g), rates(size, p)
	if len(gx) == 0 || len(px) == 0 {
		return ""
	}
	s := fmt.Sprintf("gatehouse's runs %.0f–%.0f MB/s, the peer's %.0f–%.0f MB/s", slices.Min(gx), slices.Max(gx), slices.Min(px), slices.Max(px))
	if slices.Max(gx) >= slices.Min(px) && slices.Max(px) >= slices.Min(gx) {
		return s + ": the ranges overlap, the medians' difference is within this run's spread"
	}
	return s + ": the ranges do not overlap"
}

func (r *results) missedWarm(c, peer string) string {
	f := r.ByClient[c]
	g, p := r.clientRate(c, tGatehouse, false), r.clientRate(c, peer, false)
	if f == nil || g == 0 || p == 0 || g/p >= targetWarmPeer {
		return ""
	}
	return fmt.Sprintf("Warm, %s client, against %s (%.2f×): %s; the client's CPU per GET %s from gatehouse, %s from %s.",
		c, peer, g/p, rangeNote(r.Size, f.Warm[tGatehouse], f.Warm[peer]),
		fmtDur(medianDur(f.WarmCPU[tGatehouse])), fmtDur(medianDur(f.WarmCPU[peer])), peer)
}

func (r *results) missedCold(c string) string {
	f := r.ByClient[c]
	g, p := r.clientRate(c, tGatehouse, true), r.clientRate(c, tDistribution, true)
	if f == nil || g == 0 || p == 0 || g/p >= targetColdDist {
		return ""
	}
	return fmt.Sprintf("Cold, %s client, against distribution (%.2f×): %s; server CPU per GET %s for gatehouse, %s for distribution. %s",
		c, g/p, rangeNote(r.Size, f.Cold[tGatehouse], f.Cold[tDistribution]),
		fmtDur(medianDur(f.ColdSrv[tGatehouse])), fmtDur(medianDur(f.ColdSrv[tDistribution])), r.coldPathNote())
}

// coldPathNote says, with the profile's figures, what stands between the
// upstream and gatehouse's first client.
func (r *results) coldPathNote() string {
	pp := r.Parts[tGatehouse]
	if pp == nil || pp.Total == 0 {
		return ""
	}
	share := func(k string) float64 { return 100 * float64(pp.Samples[k]) / float64(pp.Total) }
	return fmt.Sprintf("gatehouse sends its first client each chunk from memory as it is read from upstream, beside the hash and the file write. "+
		"Its CPU in the profiled cold GET: socket read %.0f%%, hash %.0f%%, file write %.0f%% (%s), reading the file back %.0f%%, send %.0f%%.",
		share("read"), share("hash"), share("write"), fmtDur(pp.cpu("write")), share("fileread"), share("send"))
}

func (r *results) missedColdCPU() string {
	row := r.coldCPURow()
	if row.verdict != verdictFail {
		return ""
	}
	return fmt.Sprintf("Cold CPU time: gatehouse %s, distribution %s per GET (median over every client's GETs); per client, median (range): %s. %s",
		row.gatehouse, strings.TrimPrefix(row.peer, "distribution: "), r.coldCPURanges(), r.coldPathNote())
}

// coldCPURanges gives, for each client, the server CPU time per cold GET
// of gatehouse and of distribution, median and range, and whether the
// ranges overlap.
func (r *results) coldCPURanges() string {
	var parts []string
	for _, c := range r.BlobClients {
		f := r.ByClient[c]
		if f == nil || len(f.ColdSrv[tGatehouse]) == 0 || len(f.ColdSrv[tDistribution]) == 0 {
			continue
		}
		g, d := f.ColdSrv[tGatehouse], f.ColdSrv[tDistribution]
		overlap := "ranges overlap"
		if slices.Max(g) < slices.Min(d) || slices.Max(d) < slices.Min(g) {
			overlap = "ranges apart"
		}
		parts = append(parts, fmt.Sprintf("%s client gatehouse %s (%s–%s), distribution %s (%s–%s), %s", c,
			fmtDur(medianDur(g)), fmtDur(slices.Min(g)), fmtDur(slices.Max(g)),
			fmtDur(medianDur(d)), fmtDur(slices.Min(d)), fmtDur(slices.Max(d)), overlap))
	}
	return strings.Join(parts, "; ")
}

func (r *results) missedColdBest() string {
	b, ok := r.coldBudget()
	up := r.rateMedian(r.Cold, tUpstream)
	g := r.rateMedian(r.Cold, tGatehouse)
	if !ok || up == 0 || g == 0 || g/(b.bestRatio*up) >= targetColdBest {
		return ""
	}
	return fmt.Sprintf("Cold against the best a verifying cache could reach (%.2f×): that figure has the upstream, the client and the least "+
		"relay, hash and write (%s) share %d CPUs with none idle and nothing else running; gatehouse used %s of CPU per cold GET "+
		"(bench client, median), %s more than that least. %s%s",
		g/(b.bestRatio*up), fmtDur(b.least), r.Machine.CPUs, fmtDur(medianDur(r.ColdCPU[tGatehouse])),
		fmtDur(medianDur(r.ColdCPU[tGatehouse])-b.least), r.relayNote(b.bestRatio*up), r.coldPathNote())
}

// relayNote says how near the bare relay, which neither hashes nor writes
// nor keeps anything, came to the best rate a verifying cache could reach.
func (r *results) relayNote(best float64) string {
	relay := r.rateMedian(r.Cold, tRelay)
	if relay == 0 || best == 0 {
		return ""
	}
	return fmt.Sprintf("nginx relaying the upstream, which does none of the hashing and writing that figure allows for, "+
		"reached %.0f MB/s in the same rounds, %.2f× it: the CPUs are not all busy all the time even on the cheapest path. ", relay, relay/best)
}
