package main

import (
	"strings"
	"time"
)

// The detail sections of the gatehouse-only scenarios 6 and 7: one set of
// rows per gatehouse binary (gatehouse and, with -baseline, the baseline).

// who is what names gatehouse t in a row that would otherwise not say:
// nothing with one gatehouse binary, ", gatehouse (baseline)" and the like
// with two.
func (r *results) who(t string) string {
	if len(r.gatehouseTargets()) < 2 {
		return ""
	}
	return ", " + label[t]
}

// whose is the prefix of a sentence about gatehouse t: nothing with one
// gatehouse binary.
func (r *results) whose(t string) string {
	if len(r.gatehouseTargets()) < 2 {
		return ""
	}
	return label[t] + ": "
}

// writeVerdict writes the section of scenario 6.
func writeVerdict(p printer, r *results) {
	v := r.Verdict
	if v == nil {
		if why := r.failuresOf(sVerdict); why != "" {
			p("\n### 6. Time to first verdict\n\nNot measured: %s\n", why)
		}
		return
	}
	p("\n### 6. Time to first verdict (gate on) against a plain pull\n\n")
	p("Image A: %d layers, %s in all (the scantest CleanAlpine base layer and %d layers of one %s file of random bytes each). "+
		"Image B: the base and the first %d random layers of A plus one new %s layer (%s in all). "+
		"One run each; every gatehouse starts with an empty data directory.\n\n",
		v.ALayers, fmtBytes(v.ASize), v.ALayers-1, fmtBytes(v.LayerSize), v.BLayers-2, fmtBytes(v.BNew), fmtBytes(v.BSize))
	p("| what | time | upstream blob bytes | upstream blob GETs |\n|---|---:|---:|---:|\n")
	verdictRow(p, "plain pull of A straight from the upstream docker-registry", v.Direct, nil)
	for _, t := range r.gatehouseTargets() {
		writeVerdictRows(p, label[t], r.who(t), v.run(t))
	}
	for _, t := range r.gatehouseTargets() {
		if run := v.run(t); run.ScanA > 0 || run.ScanB > 0 {
			p("\n%sOf these times, gatehouse's scan (the duration in its \"image scanned\" log line, reading the layers through the cache included) took %s for A and %s for B.\n",
				r.whose(t), fmtDurOrDash(run.ScanA), fmtDurOrDash(run.ScanB))
		}
	}
	for _, t := range r.gatehouseTargets() {
		run := v.run(t)
		p("\n%sVerdicts (GET /api/v1/images): A %s, B %s; vulnerability DB %s.\n", r.whose(t), orDash(run.VerdictA), orDash(run.VerdictB), orDash(run.DBVersion))
	}
	if why := r.failuresOf(sVerdict); why != "" {
		p("\nIncomplete: %s\n", why)
	}
	p(`
A pull is what a client does: GET the manifest by tag, then the config
and every layer, %d blobs at a time (containerd's default
max_concurrent_downloads), each body checked for length and sha256. The
gate-on gatehouse has the test vulnerability DB of gate/scan/scantest
(V1) imported with `+"`gatehouse db import`"+` before `+"`serve`"+` and the gate
`+"`{db: {updateInterval: 0s}, maxWait: 5m, policy: {rules: [{name: bench, mode: enforce, block: [CRITICAL]}]}}`"+`:
the first GET of A's manifest waits while gatehouse fetches every layer
from the upstream into its cache and scans the image, and answers 200
once the image is admitted; the time to first verdict is that wait. Both
gatehouse instances reach the upstream through the counting hop, whose
counts show what each step fetched from the upstream. For B, the shared
layers are already in gatehouse's blob cache, and its scanner keeps the
analysis of each layer by diff ID, so only B's new layer should be read
and analysed; gatehouse reports the number of analysed layers neither in
its API (`+"`layersAnalysed`"+` is not part of GET /api/v1/images/<digest>) nor in
its logs, so the table shows the time and the upstream bytes only. The
gate-on gatehouse logs at level info (for its "image scanned" line; a
handful of lines in this scenario), the gate-off one at warn.
`, pullConcurrency)
}

// run is the figures of gatehouse t; empty when it has none.
func (v *verdictResult) run(t string) *verdictRun {
	if run := v.Runs[t]; run != nil {
		return run
	}
	return &verdictRun{}
}

// writeVerdictRows writes the rows of one gatehouse binary, named name;
// suffix follows the rows that do not name it.
func writeVerdictRows(p printer, name, suffix string, run *verdictRun) {
	verdictRow(p, "cold pull of A through "+name+", gate off", run.GateOff, &run.GateOffUp)
	verdictRow(p, "**first verdict for A**: gate on, cold: manifest GET until its 200"+suffix, run.FirstA, &run.FirstAUp)
	verdictRow(p, "then pull of A through "+name+" (manifest + blobs, now cached)", run.CachedPull, nil)
	if run.FirstA > 0 && run.CachedPull > 0 {
		verdictRow(p, "first verdict + pull of A (a cold pull of A, gate on)"+suffix, run.FirstA+run.CachedPull, nil)
	}
	verdictRow(p, "**first verdict for B** after A: manifest GET until its 200"+suffix, run.FirstB, &run.FirstBUp)
}

// verdictRow is one row of the table of scenario 6.
func verdictRow(p printer, what string, d time.Duration, c *counts) {
	if d == 0 {
		p("| %s | — | | |\n", what)
		return
	}
	if c == nil {
		p("| %s | %s | | |\n", what, fmtDur(d))
		return
	}
	p("| %s | %s | %s | %d |\n", what, fmtDur(d), fmtBytes(c.BlobBytes), c.BlobGets)
}

// failuresOf is why the gatehouse binaries have no or incomplete figures
// in scenario, one line; "" when nothing failed.
func (r *results) failuresOf(scenario string) string {
	var whys []string
	for _, t := range []string{tGatehouse, tBaseline} {
		if why, ok := r.Failures[scenario+"/"+t]; ok {
			if t != tGatehouse {
				why = label[t] + ": " + why
			}
			whys = append(whys, oneLine(why))
		}
	}
	return strings.Join(whys, "; ")
}

// writeSoak writes the section of scenario 7.
func writeSoak(p printer, r *results) {
	ts := r.soakTargets()
	if len(ts) == 0 {
		if why := r.failuresOf(sSoak); why != "" {
			p("\n### 7. Soak\n\nNot measured: %s\n", why)
		}
		return
	}
	sr := r.Soak[ts[0]]
	multi := len(ts) > 1
	p("\n### 7. Soak: %d clients pulling cached and cold images\n\n", sr.Clients)
	p("%d images of %d layers of %s of random bytes at the upstream; %d of them pulled through gatehouse before the clients start (cached). "+
		"%d clients then pull without pause for a warm-up and %s more: the other images are released one by one, evenly over the run, each to the next pull that starts (cold); every other pull takes a random cached image.\n\n",
		sr.Images, soakLayers, fmtBytes(soakLayerSize), sr.Cached, sr.Clients, fmtDur(sr.Duration))
	writeSoakPulls(p, r, ts, multi)
	writeSoakResources(p, r, ts, multi)
	var grew []string
	for _, t := range ts {
		grew = append(grew, r.whose(t)+orDash(strings.Join(r.Soak[t].grew(), ", ")))
	}
	p("\nGrowth from the warm-up to the end beyond the slack (%d goroutines or files; RSS over twice the warm value + 64 MiB): %s.\n",
		soakSlack, strings.Join(grew, "; "))
	if why := r.failuresOf(sSoak); why != "" {
		p("\nIncomplete: %s\n", why)
	}
	p(`
Each pull is a client's: the manifest by tag, then the config and every
layer, %d blobs at a time on fresh connections, each body checked for
length and sha256; a failed pull is any error, status other than 200 or
mismatch. "Settled" is the smallest of five samples 200 ms apart once the
clients have stopped, so requests just finished do not count while a leak
(a goroutine or file per pull) would. Gatehouse runs with the gate off:
the scenario measures the proxy and its cache, not the scanner.
`, pullConcurrency)
}

// soakTargets are the gatehouse binaries with soak figures.
func (r *results) soakTargets() []string {
	var out []string
	for _, t := range r.gatehouseTargets() {
		if r.Soak[t] != nil {
			out = append(out, t)
		}
	}
	return out
}

// writeSoakPulls writes the table of pulls (with a column of targets when
// there are several) and the first failures.
func writeSoakPulls(p printer, r *results, ts []string, multi bool) {
	head, sep := "", ""
	if multi {
		head, sep = "| target ", "|---"
	}
	p("%s| pulls | of them cold | failed | blob bytes read | pulls/s |\n%s|---:|---:|---:|---:|---:|\n", head, sep)
	for _, t := range ts {
		sr, name := r.Soak[t], ""
		if multi {
			name = "| " + label[t] + " "
		}
		p("%s| %d | %d | %d | %s | %.0f |\n", name, sr.Pulls, sr.ColdPulls, sr.Failures, fmtBytes(sr.Bytes), sr.rate())
	}
	for _, t := range ts {
		if sr := r.Soak[t]; sr.FirstError != "" {
			p("\n%sFirst failure: %s\n", r.whose(t), oneLine(sr.FirstError))
		}
	}
}

// writeSoakResources writes gatehouse's goroutines, open files and RSS,
// one block of rows per gatehouse binary.
func writeSoakResources(p printer, r *results, ts []string, multi bool) {
	p("\n| gatehouse | after warm-up (settled) | peak (1 s samples) | at the end (settled) |\n|---|---:|---:|---:|\n")
	for _, t := range ts {
		sr, of := r.Soak[t], ""
		if multi {
			of = ", " + label[t]
		}
		p("| goroutines (`go_goroutines`)%s | %d | %d | %d |\n", of, sr.Warm.Goroutines, sr.Peak.Goroutines, sr.End.Goroutines)
		p("| open files (`process_open_fds`)%s | %d | %d | %d |\n", of, sr.Warm.FDs, sr.Peak.FDs, sr.End.FDs)
		p("| RSS (VmRSS)%s | %s | %s | %s |\n", of, fmtBytes(sr.Warm.RSS), fmtBytes(sr.Peak.RSS), fmtBytes(sr.End.RSS))
	}
}
