package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// The before/after section: with -baseline, each headline figure of
// gatehouse against the same figure of the baseline binary, measured in
// the same run.

// figure is one headline figure of two gatehouse binaries: the value of
// every run of each, in run order.
type figure struct {
	measure     string
	now, base   []float64
	format      func(float64) string
	lowerBetter bool // times, CPU, memory, failures; else rates
}

// beforeAfterRow is one line of the before/after table.
type beforeAfterRow struct {
	measure, now, base, ratio, runs, judgement string
}

// Judgements of a figure (see judge).
const (
	judgeSame   = "same"
	judgeNoise  = "within noise"
	judgeBetter = "better, beyond noise"
	judgeWorse  = "**worse, beyond noise**"
	judgeOneRun = "one run each: not judged"
)

// judge says whether the median of now differs from that of base by more
// than the runs themselves spread: within noise when now's median lies in
// the range (min–max) of base's runs or base's median in the range of
// now's. Beyond that, better or worse as the figure goes. With one run on
// each side there is no spread to judge by.
func judge(now, base []float64, lowerBetter bool) string {
	if len(now) == 0 || len(base) == 0 {
		return verdictNotMeasured
	}
	m, b := median(now), median(base)
	switch {
	case m == b:
		return judgeSame
	case len(now) < 2 && len(base) < 2:
		return judgeOneRun
	case within(m, base) || within(b, now):
		return judgeNoise
	case (m < b) == lowerBetter:
		return judgeBetter
	}
	return judgeWorse
}

// within reports whether x lies in the range of xs.
func within(x float64, xs []float64) bool {
	return x >= slices.Min(xs) && x <= slices.Max(xs)
}

// spread is "median (min–max)", or the one value of a single run.
func spread(xs []float64, format func(float64) string) string {
	switch len(xs) {
	case 0:
		return "—"
	case 1:
		return format(xs[0])
	}
	return fmt.Sprintf("%s (%s–%s)", format(median(xs)), format(slices.Min(xs)), format(slices.Max(xs)))
}

func (f figure) row() beforeAfterRow {
	row := beforeAfterRow{measure: f.measure, now: spread(f.now, f.format), base: spread(f.base, f.format), ratio: "—",
		runs: fmt.Sprintf("%d / %d", len(f.now), len(f.base)), judgement: judge(f.now, f.base, f.lowerBetter)}
	if m, b := median(f.now), median(f.base); len(f.now) > 0 && b != 0 {
		row.ratio = fmt.Sprintf("%.2f×", m/b)
	}
	return row
}

// beforeAfter is the before/after table; nil without a baseline.
func (r *results) beforeAfter() []beforeAfterRow {
	if !slices.Contains(r.Proxies, tBaseline) {
		return nil
	}
	var rows []beforeAfterRow
	for _, f := range r.figures() {
		rows = append(rows, f.row())
	}
	return rows
}

// figures are the headline figures of gatehouse and the baseline.
func (r *results) figures() []figure {
	size, n := fmtBytes(r.Size), r.Fanout[tGatehouse].Clients
	both := func(measure string, lowerBetter bool, format func(float64) string, of func(t string) []float64) figure {
		return figure{measure: measure, now: of(tGatehouse), base: of(tBaseline), format: format, lowerBetter: lowerBetter}
	}
	mbps := func(x float64) string { return fmtNum(x, "MB/s") }
	reqs := func(x float64) string { return fmtNum(x, "req/s") }
	mibs := func(x float64) string { return fmt.Sprintf("%.0f MiB", x/mib) }
	count := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	sizes := func(x float64) string { return fmtBytes(int64(x)) }
	fan := func(v func(fanout) float64) func(string) []float64 {
		return func(t string) []float64 {
			if fo, ok := r.Fanout[t]; ok {
				return []float64{v(fo)}
			}
			return nil
		}
	}
	return []figure{
		both("1. warm "+size+" blob, MB/s", false, mbps, func(t string) []float64 { return rates(r.Size, r.Warm[t]) }),
		both("2. warm manifest by digest, req/s", false, reqs, func(t string) []float64 { return perSecond(r.Manifest[t+"/digest"]) }),
		both("2. warm manifest by tag, req/s", false, reqs, func(t string) []float64 { return perSecond(r.Manifest[t+"/tag"]) }),
		both("3. cold "+size+" blob, MB/s", false, mbps, func(t string) []float64 { return rates(r.Size, r.Cold[t]) }),
		both("3. cold "+size+" blob, CPU time of gatehouse", true, fmtSeconds, func(t string) []float64 { return seconds(r.ColdCPU[t]...) }),
		both(fmt.Sprintf("4. %d cold clients: wall time", n), true, fmtSeconds, fan(func(fo fanout) float64 { return fo.Wall.Seconds() })),
		both(fmt.Sprintf("4. %d cold clients: upstream blob bytes", n), true, sizes, fan(func(fo fanout) float64 { return float64(fo.Upstream.BlobBytes) })),
		both(fmt.Sprintf("5. peak RSS during the %d-client run", n), true, mibs, fan(func(fo fanout) float64 { return float64(fo.PeakRSS) })),
		both("6. first verdict for A", true, fmtSeconds, r.verdictFigure(func(v *verdictRun) time.Duration { return v.FirstA })),
		both("6. first verdict for B after A", true, fmtSeconds, r.verdictFigure(func(v *verdictRun) time.Duration { return v.FirstB })),
		both("7. soak: pulls/s", false, count, r.soakFigure(func(sr *soakResult) float64 { return sr.rate() })),
		both("7. soak: failed pulls", true, count, r.soakFigure(func(sr *soakResult) float64 { return float64(sr.Failures) })),
	}
}

// verdictFigure is a figure of scenario 6 (none when it is 0: not measured).
func (r *results) verdictFigure(v func(*verdictRun) time.Duration) func(string) []float64 {
	return func(t string) []float64 {
		if r.Verdict == nil || r.Verdict.Runs[t] == nil || v(r.Verdict.Runs[t]) <= 0 {
			return nil
		}
		return seconds(v(r.Verdict.Runs[t]))
	}
}

// soakFigure is a figure of scenario 7.
func (r *results) soakFigure(v func(*soakResult) float64) func(string) []float64 {
	return func(t string) []float64 {
		if sr := r.Soak[t]; sr != nil && sr.Pulls > 0 {
			return []float64{v(sr)}
		}
		return nil
	}
}

func seconds(ds ...time.Duration) []float64 {
	var out []float64
	for _, d := range ds {
		out = append(out, d.Seconds())
	}
	return out
}

func fmtSeconds(x float64) string { return fmtDur(time.Duration(x * float64(time.Second))) }

func writeBeforeAfterTable(w io.Writer, rows []beforeAfterRow) {
	fmt.Fprintf(w, "| measurement | %s | %s | new ÷ baseline (medians) | runs (new / baseline) | judgement |\n", label[tGatehouse], label[tBaseline])
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.measure, r.now, r.base, r.ratio, r.runs, r.judgement)
	}
}

// writeBeforeAfter writes the before/after section; nothing without a
// baseline.
func writeBeforeAfter(p printer, r *results) {
	rows := r.beforeAfter()
	if len(rows) == 0 {
		return
	}
	p("\n## Before/after: %s against %s\n\n", label[tGatehouse], label[tBaseline])
	p("Both binaries measured in this run, in the same rounds, in the same way (the baseline is one more target of every scenario). ")
	p("Each cell is the median of the runs with their range (min–max) in brackets. ")
	p("**How it is judged:** a figure is *%s* when the new median lies within the baseline's min–max range, ", judgeNoise)
	p("or the baseline's median within the new one's: the difference is no larger than the runs of one binary differ among themselves. ")
	p("Beyond that it is better or worse as the figure goes (MB/s, req/s and pulls/s higher; times, CPU time, bytes, memory and failures lower). ")
	p("A figure with one run on each side has no spread and is *%s*: read its ratio against the spread of the repeated figures above it.\n\n", judgeOneRun)
	var b strings.Builder
	writeBeforeAfterTable(&b, rows)
	p("%s", b.String())
}
