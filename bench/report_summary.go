package main

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Targets of the acceptance issue, checked against the figures of the same
// run.
const (
	targetDigest       = 10.0 // manifest by digest req/s ≥ 10 × distribution proxy
	targetTag          = 30.0 // manifest by tag req/s ≥ 30 × distribution proxy
	targetCold         = 0.8  // the budget's reference: cold blob MB/s at 0.8 × direct from the upstream
	targetFanoutBytes  = 1.0  // upstream bytes for N cold clients = 1 × the blob
	targetFanoutTime   = 0.5  // wall time of N cold clients ≤ 0.5 × distribution's
	targetRSSMiB       = 150  // peak RSS during the N-client run < 150 MiB
	mb                 = 1e6  // MB/s are decimal megabytes per second
	mib                = 1 << 20
	verdictPass        = "PASS"
	verdictFail        = "FAIL"
	verdictNotMeasured = "not measured"
)

// rates turns GET times of size bytes into MB/s, in run order.
func rates(size int64, ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(size) / mb / d.Seconds()
	}
	return out
}

// median of xs (mean of the two middle values for an even count); 0 for
// none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

func best(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}

func (r *results) rateMedian(m map[string][]time.Duration, target string) float64 {
	return median(rates(r.Size, m[target]))
}

func (r *results) loadMedian(key string) float64 {
	return median(perSecond(r.Manifest[key]))
}

// perSecond is the request rate of each load run, in run order.
func perSecond(lrs []loadResult) []float64 {
	var xs []float64
	for _, lr := range lrs {
		xs = append(xs, lr.PerSecond())
	}
	return xs
}

// summaryRow is one line of the summary table.
type summaryRow struct {
	measure, gatehouse, peer, ratio, target, verdict string
}

func verdict(ok bool) string {
	if ok {
		return verdictPass
	}
	return verdictFail
}

// summary compares gatehouse with its peers against the targets.
func (r *results) summary() []summaryRow {
	rows := r.ratioRows()
	rows = append(rows, r.coldContextRows()...)
	rows = append(rows, r.fanoutRows()...)
	if sr := r.Soak[tGatehouse]; sr != nil {
		row := summaryRow{measure: fmt.Sprintf("7. soak, %d clients for %s: failed pulls; growth after warm-up", sr.Clients, fmtDur(sr.Duration)),
			target: "0 failed, no growth", ratio: "—", peer: "—"}
		row.gatehouse, row.verdict = sr.outcome(), verdict(sr.passed())
		rows = append(rows, row)
	}
	return rows
}

// ratioRows are the rows of scenarios 1 to 3 whose target is a ratio of
// gatehouse's median to a peer's.
func (r *results) ratioRows() []summaryRow {
	gh := slices.Contains(r.Proxies, tGatehouse)
	ratioRow := func(measure string, g, p float64, peer, unit string, target float64, targetText string) summaryRow {
		row := summaryRow{measure: measure, peer: fmt.Sprintf("%s: %s", peer, fmtNum(p, unit)), target: targetText}
		if !gh || g == 0 || p == 0 {
			row.gatehouse, row.ratio, row.verdict = "—", "—", verdictNotMeasured
			return row
		}
		ratio := g / p
		row.gatehouse = fmtNum(g, unit)
		row.ratio = fmt.Sprintf("%.2f×", ratio)
		row.verdict = verdict(ratio >= target)
		return row
	}
	rows := []summaryRow{
		ratioRow("2. warm manifest by digest, req/s", r.loadMedian(tGatehouse+"/digest"), r.loadMedian(tDistribution+"/digest"),
			"distribution", "req/s", targetDigest, fmt.Sprintf("≥ %.0f× distribution", targetDigest)),
		ratioRow("2. warm manifest by tag, req/s", r.loadMedian(tGatehouse+"/tag"), r.loadMedian(tDistribution+"/tag"),
			"distribution", "req/s", targetTag, fmt.Sprintf("≥ %.0f× distribution", targetTag)),
	}
	return append(r.clientRows(), rows...)
}

// coldContextRows are the rows of scenario 3 without a target: the
// distribution proxy's cold ratio, the bare relay's, and gatehouse's
// against the relay.
func (r *results) coldContextRows() []summaryRow {
	size := fmtBytes(r.Size)
	var rows []summaryRow
	if d, ok := r.Cold[tDistribution]; ok && len(d) > 0 {
		// Not a target: the distribution proxy's own cold ratio, for context.
		rows = append(rows, summaryRow{
			measure:   "3. cold " + size + " blob, distribution proxy (context)",
			gatehouse: "",
			peer:      fmt.Sprintf("distribution: %s", fmtNum(r.rateMedian(r.Cold, tDistribution), "MB/s")),
			ratio:     fmt.Sprintf("%.2f× direct", r.rateMedian(r.Cold, tDistribution)/r.rateMedian(r.Cold, tUpstream)),
			target:    "—",
			verdict:   "—",
		})
	}
	rl, up := r.rateMedian(r.Cold, tRelay), r.rateMedian(r.Cold, tUpstream)
	if rl <= 0 || up <= 0 {
		return rows
	}
	// Not a target: one bare hop between client and upstream, the
	// least any proxy costs here, and gatehouse measured against it.
	rows = append(rows, summaryRow{
		measure:   "3. cold " + size + " blob, bare relay: nginx proxy_pass, no cache, no digest check (context)",
		gatehouse: "",
		peer:      "nginx relay: " + fmtNum(rl, "MB/s"),
		ratio:     fmt.Sprintf("%.2f× direct", rl/up),
		target:    "—",
		verdict:   "—",
	})
	if g := r.rateMedian(r.Cold, tGatehouse); slices.Contains(r.Proxies, tGatehouse) && g > 0 {
		rows = append(rows, summaryRow{
			measure:   "3. cold " + size + " blob, gatehouse against the bare relay (context)",
			gatehouse: fmtNum(g, "MB/s"),
			peer:      "nginx relay: " + fmtNum(rl, "MB/s"),
			ratio:     fmt.Sprintf("%.2f× relay", g/rl),
			target:    "—",
			verdict:   "—",
		})
	}
	return rows
}

// fanoutRows are the rows of scenarios 4 and 5.
func (r *results) fanoutRows() []summaryRow {
	g, gok := r.Fanout[tGatehouse]
	d, dok := r.Fanout[tDistribution]
	n := 8
	if gok {
		n = g.Clients
	} else if dok {
		n = d.Clients
	}
	row := summaryRow{measure: fmt.Sprintf("4. %d cold clients: upstream blob bytes", n), target: "= 1× blob", gatehouse: "—", ratio: "—", verdict: verdictNotMeasured}
	if dok {
		row.peer = fmt.Sprintf("distribution: %.2f× blob (%d GETs)", float64(d.Upstream.BlobBytes)/float64(r.Size), d.Upstream.BlobGets)
	}
	if gok {
		x := float64(g.Upstream.BlobBytes) / float64(r.Size)
		row.gatehouse = fmt.Sprintf("%.2f× blob (%d GETs)", x, g.Upstream.BlobGets)
		row.ratio = fmt.Sprintf("%.2f×", x)
		row.verdict = verdict(g.Upstream.BlobBytes == int64(targetFanoutBytes*float64(r.Size)))
	}
	rows := []summaryRow{row}

	row = summaryRow{measure: fmt.Sprintf("4. %d cold clients: wall time", n), target: fmt.Sprintf("≤ %.1f× distribution", targetFanoutTime), gatehouse: "—", ratio: "—", verdict: verdictNotMeasured}
	if dok {
		row.peer = "distribution: " + fmtDur(d.Wall)
	}
	if gok {
		row.gatehouse = fmtDur(g.Wall)
		if dok {
			x := g.Wall.Seconds() / d.Wall.Seconds()
			row.ratio = fmt.Sprintf("%.2f×", x)
			row.verdict = verdict(x <= targetFanoutTime)
		}
	}
	rows = append(rows, row)

	row = summaryRow{measure: fmt.Sprintf("5. peak RSS during the %d-client run", n), target: fmt.Sprintf("< %d MiB", targetRSSMiB), gatehouse: "—", ratio: "—", verdict: verdictNotMeasured}
	if dok {
		row.peer = fmt.Sprintf("distribution: %.0f MiB", float64(d.PeakRSS)/mib)
	}
	if gok {
		row.gatehouse = fmt.Sprintf("%.0f MiB", float64(g.PeakRSS)/mib)
		row.verdict = verdict(g.PeakRSS < targetRSSMiB*mib)
	}
	return append(rows, row)
}

func writeSummaryTable(w io.Writer, rows []summaryRow) {
	fmt.Fprintln(w, "| measurement | gatehouse | peer | ratio | target | result |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		v := r.verdict
		if v == verdictPass || v == verdictFail {
			v = "**" + v + "**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.measure, r.gatehouse, r.peer, r.ratio, r.target, v)
	}
}

// printSummary writes the summary table to the terminal.
func printSummary(w io.Writer, opts options, r *results) {
	fmt.Fprintln(w)
	writeSummaryTable(w, r.summary())
	if rows := r.beforeAfter(); len(rows) > 0 {
		fmt.Fprintf(w, "\nbefore/after (%s against %s):\n", label[tGatehouse], label[tBaseline])
		writeBeforeAfterTable(w, rows)
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(w, "\nfailures:")
		for _, k := range sortedKeys(r.Failures) {
			fmt.Fprintf(w, "  %s: %s\n", k, r.Failures[k])
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
