package main

import (
	"fmt"
	"slices"
	"time"
)

// The blob figures of every client (clients.go): detail tables and the
// summary rows of issue 18's targets.

// Targets of issue 18 for the blob scenarios.
const (
	targetWarmPeer = 1.0 // warm MB/s ≥ 1.0 × distribution and ≥ 1.0 × nginx, with every client
	targetColdDist = 1.0 // cold MB/s, one client, ≥ 1.0 × distribution
	targetColdBest = 0.9 // cold MB/s ≥ 0.9 × the best a verifying cache could reach (coldBudget)
)

// writeClientTables writes, for scenario 1 (warm) or 3 (cold), one table
// per client: each target's median MB/s with the runs' range, and the
// client's CPU time per GET (and, cold, the server's).
func writeClientTables(p printer, r *results, cold bool) {
	targets := []string{tGatehouse, tBaseline, tDistribution, tNginx, tUpstream}
	if cold {
		targets = []string{tGatehouse, tBaseline, tDistribution, tRelay, tUpstream}
	}
	for _, c := range r.BlobClients {
		f := r.ByClient[c]
		if f == nil {
			continue
		}
		times, cpus := f.Warm, f.WarmCPU
		if cold {
			times, cpus = f.Cold, f.ColdCPU
		}
		p("\n**Client: %s**, each GET in a process of its own (time: start to exit; CPU: its user + system time).\n\n", clientLabels[c])
		p("| target | median MB/s | range MB/s | runs | client CPU per GET (median) |")
		if cold {
			p(" server CPU per GET (median) |\n|---|---:|---:|---:|---:|---:|\n")
		} else {
			p("\n|---|---:|---:|---:|---:|\n")
		}
		for _, t := range targets {
			xs := rates(r.Size, times[t])
			if len(xs) == 0 {
				continue
			}
			p("| %s | %.0f | %.0f–%.0f | %d | %s |", label[t], median(xs), slices.Min(xs), slices.Max(xs), len(xs), fmtDur(medianDur(cpus[t])))
			if cold {
				p(" %s |", fmtDur(medianDur(f.ColdSrv[t])))
			}
			p("\n")
		}
	}
}

// clientRate is the median MB/s of target with client c, warm or cold; 0
// when not measured.
func (r *results) clientRate(c, target string, cold bool) float64 {
	f := r.ByClient[c]
	if f == nil {
		return 0
	}
	if cold {
		return median(rates(r.Size, f.Cold[target]))
	}
	return median(rates(r.Size, f.Warm[target]))
}

// clientRows are the summary rows of the blob targets: warm against the
// distribution proxy and nginx with every client; cold against the
// distribution proxy with every client and, with the bench's client,
// against the best a verifying cache could reach (coldBudget); and the
// CPU time of a cold GET against the distribution proxy's.
func (r *results) clientRows() []summaryRow {
	size := fmtBytes(r.Size)
	gh := slices.Contains(r.Proxies, tGatehouse)
	row := func(measure string, g, p float64, peer string, target float64) summaryRow {
		out := summaryRow{measure: measure, peer: fmt.Sprintf("%s: %s", peer, fmtNum(p, "MB/s")),
			target: fmt.Sprintf("≥ %.1f× %s", target, peer)}
		if !gh || g == 0 || p == 0 {
			out.gatehouse, out.ratio, out.verdict = "—", "—", verdictNotMeasured
			return out
		}
		out.gatehouse, out.ratio = fmtNum(g, "MB/s"), fmt.Sprintf("%.2f×", g/p)
		out.verdict = verdict(g/p >= target)
		return out
	}
	var rows []summaryRow
	for _, c := range r.BlobClients {
		for _, peer := range []string{tDistribution, tNginx} {
			rows = append(rows, row(fmt.Sprintf("1. warm %s blob, %s client, median MB/s", size, c),
				r.clientRate(c, tGatehouse, false), r.clientRate(c, peer, false), peer, targetWarmPeer))
		}
	}
	for _, c := range r.BlobClients {
		rows = append(rows, row(fmt.Sprintf("3. cold %s blob, one %s client, median MB/s", size, c),
			r.clientRate(c, tGatehouse, true), r.clientRate(c, tDistribution, true), tDistribution, targetColdDist))
	}
	if b, ok := r.coldBudget(); ok {
		bestRate := b.bestRatio * r.rateMedian(r.Cold, tUpstream)
		rows = append(rows, row(fmt.Sprintf("3. cold %s blob, bench client, against the best a verifying cache could reach (%.2f× direct, section 3)", size, b.bestRatio),
			r.rateMedian(r.Cold, tGatehouse), bestRate, "best", targetColdBest))
	}
	return append(rows, r.coldCPURow())
}

// coldCPURow compares the CPU time of the server process per cold GET of
// the blob, gatehouse against the distribution proxy, over the GETs of
// every client.
func (r *results) coldCPURow() summaryRow {
	cpu := func(t string) time.Duration {
		var all []time.Duration
		for _, c := range r.BlobClients {
			if f := r.ByClient[c]; f != nil {
				all = append(all, f.ColdSrv[t]...)
			}
		}
		return medianDur(all)
	}
	g, d := cpu(tGatehouse), cpu(tDistribution)
	row := summaryRow{measure: fmt.Sprintf("3. CPU time of the server process per cold %s GET (median, every client)", fmtBytes(r.Size)),
		gatehouse: "—", peer: "distribution: " + fmtDurOrDash(d), ratio: "—", target: "≤ 1.0× distribution", verdict: verdictNotMeasured}
	if g > 0 && d > 0 {
		row.gatehouse, row.ratio = fmtDur(g), fmt.Sprintf("%.2f×", g.Seconds()/d.Seconds())
		row.verdict = verdict(g <= d)
	}
	return row
}
