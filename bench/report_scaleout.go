package main

import (
	"fmt"
	"time"
)

// The report of the scale-out section (run_scaleout.go).

// warmRates is the aggregate MB/s of each warm round of s.
func (so *scaleoutResult) warmRates(s *scaleoutSetup) []float64 {
	out := make([]float64, len(s.Warm))
	for i, d := range s.Warm {
		out[i] = float64(int64(so.WarmClients)*so.Size) / mb / d.Seconds()
	}
	return out
}

// upstreamRatio is what the upstream served for the cold clients of s, in
// blobs; ok is false without figures.
func (so *scaleoutResult) upstreamRatio(s *scaleoutSetup) (float64, bool) {
	if s == nil || s.Cold == nil || so.Size <= 0 {
		return 0, false
	}
	return float64(s.Cold.Upstream.BlobBytes) / float64(so.Size), true
}

// scaleoutRow is one line of the section's table: a measurement, its
// value for each set-up, and whether higher is better (for the ratios).
type scaleoutRow struct {
	measure string
	cells   []string    // one per set-up
	values  []float64   // the medians the ratios divide; 0 for none
	runs    [][]float64 // every round's figure, per set-up, for judge
	lower   bool        // lower is better (times, bytes)
}

// rows computes the table of the section, set-ups in so.Setups order.
func (so *scaleoutResult) rows() []scaleoutRow {
	n := len(so.Setups)
	mk := func(measure string) scaleoutRow {
		return scaleoutRow{measure: measure, cells: make([]string, n), values: make([]float64, n), runs: make([][]float64, n)}
	}
	warm := mk(fmt.Sprintf("warm %s blob, %d clients at once spread over the replicas: MB/s in all, median (min–max)", fmtBytes(so.Size), so.WarmClients))
	coldWall := mk(fmt.Sprintf("%d cold clients at once spread over the replicas: wall time", so.ColdClients))
	coldUp := mk(fmt.Sprintf("%d cold clients: upstream blob bytes (blob GETs)", so.ColdClients))
	man := mk(fmt.Sprintf("manifest GET by digest, %d connections spread over the replicas: req/s in all, median (min–max)", so.Concurrency))
	manErr := mk("failed manifest requests")
	coldWall.lower, coldUp.lower, manErr.lower = true, true, true
	for i, s := range so.Setups {
		for _, r := range []*scaleoutRow{&warm, &coldWall, &coldUp, &man, &manErr} {
			r.cells[i] = "—"
		}
		if xs := so.warmRates(s); len(xs) > 0 {
			warm.cells[i] = spread(xs, func(x float64) string { return fmt.Sprintf("%.0f MB/s", x) })
			warm.values[i], warm.runs[i] = median(xs), xs
		}
		if s.Cold != nil {
			coldWall.cells[i] = fmtDur(s.Cold.Wall)
			coldWall.values[i] = s.Cold.Wall.Seconds()
			coldWall.runs[i] = []float64{s.Cold.Wall.Seconds()}
			ratio, _ := so.upstreamRatio(s)
			coldUp.cells[i] = fmt.Sprintf("%s = %.2f× blob (%d)", fmtBytes(s.Cold.Upstream.BlobBytes), ratio, s.Cold.Upstream.BlobGets)
			coldUp.values[i], coldUp.runs[i] = ratio, []float64{ratio}
		}
		if xs := perSecond(s.Manifest); len(xs) > 0 {
			man.cells[i] = spread(xs, func(x float64) string { return fmt.Sprintf("%.0f req/s", x) })
			man.values[i], man.runs[i] = median(xs), xs
			errs := 0
			for _, lr := range s.Manifest {
				errs += lr.Errors
			}
			manErr.cells[i] = fmt.Sprint(errs)
			manErr.runs[i] = []float64{float64(errs)}
		}
	}
	return []scaleoutRow{warm, coldWall, coldUp, man, manErr}
}

// ratioCell is values[a] ÷ values[b], or "—".
func ratioCell(values []float64, a, b int) string {
	if a < 0 || b < 0 || a >= len(values) || b >= len(values) || values[a] == 0 || values[b] == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", values[a]/values[b])
}

// judgeCell judges set-up a against set-up b (see judge), or "—".
func (row scaleoutRow) judgeCell(a, b int) string {
	if a < 0 || b < 0 || a >= len(row.runs) || b >= len(row.runs) {
		return "—"
	}
	return judge(row.runs[a], row.runs[b], row.lower)
}

// setupTitle names a set-up in the table's header.
func setupTitle(s *scaleoutSetup) string {
	switch {
	case !s.Shared:
		return "local stores, 1 process (reference)"
	case s.Replicas == 1:
		return "shared stores, 1 replica"
	}
	return fmt.Sprintf("shared stores, %d replicas", s.Replicas)
}

// writeScaleout writes the section "Scale-out: replicas on shared storage".
func writeScaleout(p printer, r *results) {
	so := r.Scaleout
	if so == nil {
		if why, ok := r.Failures[sScaleout+"/stores"]; ok {
			p("\n## Scale-out: replicas on shared storage\n\nNot measured: %s\n", oneLine(why))
		}
		return
	}
	p("\n## Scale-out: replicas on shared storage\n\n")
	p("gatehouse (gate off, as above) in three set-ups, measured one after the other in this run, each started cold in front of the counting hop: ")
	p("*local stores* — one process with the default stores (blobs in dataDir, records in bbolt), the single-node reference; ")
	p("*shared stores* — blobs in an S3 bucket (versitygw serving a directory on the same disk, path-style, no `localTier`) and records in PostgreSQL (a local server, fsync off), ")
	p("as 1 replica and as 3 replicas, each replica with its own data directory and peer port, all of a set-up on the same database and bucket; ")
	p("each shared set-up gets a new database and bucket, so the 3 replicas start cold too. ")
	p("The blob is a %s layer of random bytes (`%s`). Client *i* talks to replica *i* mod *n*. ", fmtBytes(so.Size), so.LayerDigest)
	p("Cold: after an untimed resolution of the tag and the manifest on every replica, the %d clients GET the blob at the same moment; ", so.ColdClients)
	p("wall time from the first request to the last byte; upstream bytes are what the counting hop relayed for blob GETs until the upstream went quiet. ")
	p("Warm: after one digest-checked GET per replica, %d clients GET the whole blob at the same moment, each round; MB/s is all their bytes over the wall time. ", so.WarmClients)
	p("Manifests: %d keep-alive connections shared out over the replicas for %s per round, the replicas' successful requests added up.\n\n", so.Concurrency, so.Duration)

	rows := so.rows()
	local, one, three := -1, -1, -1
	for i, s := range so.Setups {
		switch {
		case !s.Shared:
			local = i
		case s.Replicas == 1:
			one = i
		default:
			three = i
		}
	}
	p("| measurement |")
	for _, s := range so.Setups {
		p(" %s |", setupTitle(s))
	}
	p(" 3 replicas ÷ 1 replica | 3 replicas ÷ local | 3 replicas against 1 replica |\n|---|")
	for range so.Setups {
		p("---:|")
	}
	p("---:|---:|---|\n")
	for i, row := range rows {
		p("| %s |", row.measure)
		for _, c := range row.cells {
			p(" %s |", c)
		}
		if i == len(rows)-1 { // failed requests: no ratio
			p(" — | — | %s |\n", row.judgeCell(three, one))
			continue
		}
		p(" %s | %s | %s |\n", ratioCell(row.values, three, one), ratioCell(row.values, three, local), row.judgeCell(three, one))
	}
	for _, s := range so.Setups {
		if s.Err != "" {
			p("\n*%s: %s*\n", setupTitle(s), oneLine(s.Err))
		}
	}

	if three >= 0 {
		if ratio, ok := so.upstreamRatio(so.Setups[three]); ok {
			c := so.Setups[three].Cold
			p("\n**%d cold clients over %d replicas cost the upstream %.2f× the blob (%d blob GET(s)): %s** (target: = 1× blob, one upstream fetch per digest for the whole cluster).\n",
				so.ColdClients, so.Setups[three].Replicas, ratio, c.Upstream.BlobGets, verdict(c.Upstream.BlobBytes == so.Size))
		}
	}
	cpus := r.Machine.CPUs
	p("\n**What these numbers mean here.** Everything — the replicas, PostgreSQL, versitygw, the upstream, the counting hop and the clients — ")
	p("runs on this machine's %d CPUs. Three replicas on one %d-core machine share the same CPUs: they split the CPU time one replica had, ", cpus, cpus)
	p("so the throughput gains of scaling out (more CPUs, disks and network links per replica added) cannot show here, and the 3-replica figures are not a capacity. ")
	p("What this section proves is, first, that the cluster fetches a blob from the upstream once however many clients ask whichever replicas (1× upstream bytes), ")
	p("and second, whether serving as replicas on the shared stores regresses against one replica on them: the last column judges it as the before/after section does ")
	p("(*within noise* when one median lies within the other's min–max range of rounds; the cold clients run once per set-up and are not judged). ")
	p("A cold blob through several replicas also pays the peer hop: the replicas that do not fetch it stream it from the one that does, on the same CPUs. ")
	p("The local column is the single-node set-up for reference: on the shared stores every warm read and every record goes through versitygw and PostgreSQL, one hop more than a local file and bbolt.\n")
}

// writeScaleoutOnly writes the report of a run of -only scaleout: what was
// run, the machine and the section.
func writeScaleoutOnly(p printer, opts options, r *results) {
	p("# Benchmarks: scale-out section only\n\n")
	p("Generated by `bench/` with `-only scaleout`; `make bench` runs this section with all the others.\n\n")
	p("- **Date:** %s (%s of running)\n", r.Started.Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	p("- **Command:** `%s`\n", opts.command)
	if opts.quick {
		p("- **Mode:** `-quick` (smoke test; figures are not representative)\n")
	}
	if len(r.Failures) > 0 {
		p("\n**Failures** (no figure for these):\n\n")
		for _, k := range sortedKeys(r.Failures) {
			p("- `%s`: %s\n", k, oneLine(r.Failures[k]))
		}
	}
	writeMachine(p, r)
	writeScaleout(p, r)
}
