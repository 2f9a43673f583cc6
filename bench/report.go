package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Targets of the acceptance issue, checked against the figures of the same
// run.
const (
	targetWarmBlob     = 0.9  // gatehouse warm blob MB/s ≥ 0.9 × nginx
	targetDigest       = 10.0 // manifest by digest req/s ≥ 10 × distribution proxy
	targetTag          = 30.0 // manifest by tag req/s ≥ 30 × distribution proxy
	targetCold         = 0.8  // cold blob MB/s ≥ 0.8 × direct from the upstream
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
	var xs []float64
	for _, lr := range r.Manifest[key] {
		xs = append(xs, lr.PerSecond())
	}
	return median(xs)
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
	size := fmtBytes(r.Size)
	gh := slices.Contains(r.Proxies, tGatehouse)
	var rows []summaryRow

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
	rows = append(rows,
		ratioRow("1. warm "+size+" blob, median MB/s", r.rateMedian(r.Warm, tGatehouse), r.rateMedian(r.Warm, tNginx),
			"nginx", "MB/s", targetWarmBlob, fmt.Sprintf("≥ %.1f× nginx", targetWarmBlob)),
		ratioRow("2. warm manifest by digest, req/s", r.loadMedian(tGatehouse+"/digest"), r.loadMedian(tDistribution+"/digest"),
			"distribution", "req/s", targetDigest, fmt.Sprintf("≥ %.0f× distribution", targetDigest)),
		ratioRow("2. warm manifest by tag, req/s", r.loadMedian(tGatehouse+"/tag"), r.loadMedian(tDistribution+"/tag"),
			"distribution", "req/s", targetTag, fmt.Sprintf("≥ %.0f× distribution", targetTag)),
		ratioRow("3. cold "+size+" blob, median MB/s", r.rateMedian(r.Cold, tGatehouse), r.rateMedian(r.Cold, tUpstream),
			"direct from upstream", "MB/s", targetCold, fmt.Sprintf("≥ %.1f× direct", targetCold)),
	)
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

	if rl, up := r.rateMedian(r.Cold, tRelay), r.rateMedian(r.Cold, tUpstream); rl > 0 && up > 0 {
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
		if g := r.rateMedian(r.Cold, tGatehouse); gh && g > 0 {
			rows = append(rows, summaryRow{
				measure:   "3. cold " + size + " blob, gatehouse against the bare relay (context)",
				gatehouse: fmtNum(g, "MB/s"),
				peer:      "nginx relay: " + fmtNum(rl, "MB/s"),
				ratio:     fmt.Sprintf("%.2f× relay", g/rl),
				target:    "—",
				verdict:   "—",
			})
		}
	}

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
	rows = append(rows, row)

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
	rows = append(rows, row)

	if sr := r.Soak; sr != nil {
		row = summaryRow{measure: fmt.Sprintf("7. soak, %d clients for %s: failed pulls; growth after warm-up", sr.Clients, fmtDur(sr.Duration)),
			target: "0 failed, no growth", ratio: "—", peer: "—"}
		grew := sr.grew()
		row.gatehouse = fmt.Sprintf("%d of %d failed; %s", sr.Failures, sr.Pulls, orDash(strings.Join(grew, ", ")))
		row.verdict = verdict(sr.Failures == 0 && sr.Pulls > 0 && len(grew) == 0)
		rows = append(rows, row)
	}
	return rows
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

// label names a target in the detail tables.
var label = map[string]string{
	tGatehouse:    "gatehouse",
	tDistribution: "distribution proxy (docker-registry, proxy mode)",
	tNginx:        "nginx (file, sendfile)",
	tUpstream:     "upstream docker-registry (direct)",
	tRelay:        "nginx relaying the upstream (proxy_pass; no cache, no digest check)",
}

// writeReport writes BENCHMARKS.md.
func writeReport(w io.Writer, opts options, r *results) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	size := fmtBytes(r.Size)

	p("# Benchmarks\n\n")
	p("gatehouse measured side by side with its peers, in one run, on loopback.\n")
	p("Generated by `bench/` — do not edit by hand; run `make bench` to refresh.\n\n")
	p("- **Date:** %s (%s of running)\n", r.Started.Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	p("- **Command:** `%s` (what `make bench` runs after `make build`)\n", opts.command)
	p("- **Blob:** %s (%d bytes), an uncompressed tar layer of random bytes, `%s`\n", size, r.Size, r.LayerDigest)
	if opts.quick {
		p("- **Mode:** `-quick` (smoke test; figures are not representative)\n")
	}
	p("\n## Summary\n\n")
	writeSummaryTable(&b, r.summary())
	if note := r.coldBound(); note != "" {
		p("\n%s\n", note)
	}
	if len(r.Failures) > 0 {
		p("\n**Failures** (no figure for these):\n\n")
		for _, k := range sortedKeys(r.Failures) {
			p("- `%s`: %s\n", k, oneLine(r.Failures[k]))
		}
	}

	p("\n## Machine\n\n")
	m := r.Machine
	p("| | |\n|---|---|\n")
	p("| CPUs (nproc) | %d × %s |\n", m.CPUs, m.CPUModel)
	p("| memory | %s |\n", m.MemTotal)
	p("| kernel | Linux %s (%s) |\n", m.Kernel, m.Arch)
	p("| Go | %s (GOEXPERIMENT=jsonv2) |\n", m.GoVersion)
	p("| load average (1/5/15 min) at start / end | %s / %s |\n", m.LoadStart, m.LoadEnd)
	for _, t := range []string{tGatehouse, tUpstream, tNginx} {
		if v := r.Versions[t]; v != "" {
			name := map[string]string{tGatehouse: "gatehouse", tUpstream: "docker-registry (upstream and distribution proxy)", tNginx: "nginx"}[t]
			p("| %s | `%s` |\n", name, v)
		}
	}
	p("\nEverything — servers, load generator, clients — shares these CPUs; the\n")
	p("figures are for comparison within this run, not absolute capacities.\n")

	p("\n## Details\n\n")
	p("### 1. Warm %s blob\n\n", size)
	p("| target | median MB/s | best MB/s | runs |\n|---|---:|---:|---:|\n")
	for _, t := range []string{tGatehouse, tDistribution, tNginx, tUpstream} {
		if xs := rates(r.Size, r.Warm[t]); len(xs) > 0 {
			p("| %s | %.0f | %.0f | %d |\n", label[t], median(xs), best(xs), len(xs))
		}
	}

	p("\n### 2. Warm manifest requests\n\n")
	p("%d concurrent keep-alive connections, %d round(s) of %s per target and kind.\n\n", opts.concurrency, opts.loadRounds, opts.duration)
	p("| target | request | median req/s | best req/s | p50 | p99 | errors |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, mode := range []string{"digest", "tag"} {
		for _, t := range []string{tGatehouse, tDistribution, tUpstream} {
			lrs := r.Manifest[t+"/"+mode]
			if len(lrs) == 0 {
				continue
			}
			var xs []float64
			errs := 0
			for _, lr := range lrs {
				xs = append(xs, lr.PerSecond())
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

	p("\n### 3. Cold %s blob\n\n", size)
	p("| target | median MB/s | best MB/s | runs | CPU time of the server process (median) |\n|---|---:|---:|---:|---:|\n")
	for _, t := range []string{tGatehouse, tDistribution, tRelay, tUpstream} {
		if xs := rates(r.Size, r.Cold[t]); len(xs) > 0 {
			p("| %s | %.0f | %.0f | %d | %s |\n", label[t], median(xs), best(xs), len(xs), fmtDur(medianDur(r.ColdCPU[t])))
		}
	}
	if xs := rates(r.Size, r.Write); len(xs) > 0 {
		p("| *for context: writing a fresh %s file (page cache, no fsync)* | %.0f | %.0f | %d | %s |\n", size, median(xs), best(xs), len(xs), fmtDur(medianDur(r.WriteCPU)))
	}
	if b, ok := r.coldBudget(); ok {
		p("\n**CPU budget of a cold GET** (CPU time for the %s blob, the least of the rounds; the direct time is the median). ", size)
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
		p("\nWith every CPU busy all the time, such a cache could reach at most %.2f× direct here.\n", b.bestRatio)
	}

	p("\n### 4 and 5. Concurrent cold clients of one %s blob\n\n", size)
	p("| target | clients | wall time | median client time | upstream blob GETs | upstream blob bytes | all upstream requests | peak RSS (before the clients) | peak anonymous RSS | proxy CPU | upstream CPU |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, t := range []string{tGatehouse, tDistribution, tUpstream} {
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

	writeVerdict(p, r)
	writeSoak(p, r)

	p(explanation, size, opts.clients, opts.warmRuns, opts.coldRuns, opts.concurrency, opts.duration, opts.loadRounds)
	_, err := io.WriteString(w, b.String())
	return err
}

const explanation = `
## What is measured

Every server runs on 127.0.0.1 with its own temporary directory, and all
of them serve the same image: one OCI manifest whose single layer is the
%[1]s blob. Access logs are off everywhere (docker-registry at level error,
gatehouse at level warn, nginx ` + "`access_log off`" + `). Within each round the
targets take turns, so that background noise on the machine spreads over
all of them. MB/s are 10^6 bytes per second of blob body, measured from
sending the request to reading the last byte; a client reads to a discard
sink with 1 MiB reads and checks the length of every body (and the sha256
of the untimed ones).

- **gatehouse** runs with the configuration of the issue (one plain-HTTP
  upstream, tag TTL 1 h, JSON logs at level warn) plus a gate that is off
  (` + "`gate: {blobs: any, db: {updateInterval: 0s}, policy: {rules: [{name: bench, mode: \"off\"}]}}`" + `):
  these figures are for the proxy and its cache; vulnerability scanning
  and its verdict store are not measured here.
- **The peers.** The *upstream* is Debian's docker-registry (distribution
  2.8) with filesystem storage; the image is pushed into it first. The
  *distribution proxy* is a second docker-registry configured with
  ` + "`proxy: {remoteurl: <upstream>}`" + ` and its own storage: the pull-through cache
  of the reference implementation. *nginx* serves the layer file from disk
  with ` + "`sendfile on`" + ` (one process): the cost of shipping a file from the page
  cache to a socket, the ceiling for a cache hit.
- **1. Warm blob.** Each proxy has the blob in its store (fetched once
  before); one untimed GET checks the digest, then %[3]d timed GETs per
  target. The summary compares medians: gatehouse against nginx.
- **2. Warm manifests.** A load generator in this program keeps
  %[5]d concurrent keep-alive connections busy for %[6]s per run (%[7]d
  round(s), after a short unmeasured warm-up), with containerd's ` + "`Accept`" + `
  header: ` + "`GET /v2/<repo>/manifests/<digest>`" + ` (how a client fetches a
  manifest it has resolved) and ` + "`HEAD /v2/<repo>/manifests/<tag>`" + ` (how
  containerd resolves a tag). The tag is within gatehouse's tag TTL (1 h),
  so gatehouse answers from its cache; the distribution proxy asks the
  upstream on every tag request by design. Only 2xx answers count.
- **3. Cold blob.** A GET of the blob through a freshly started proxy with
  an empty store, against a GET straight from the upstream. As in a real
  pull, the client first resolves the tag (HEAD) and fetches the manifest
  by digest (untimed), so the proxy has already talked to the upstream
  about the repository. %[4]d run(s) per target, each proxy run on a new
  process with an empty store. The proxies talk to the upstream directly
  here (no counting hop). Before every timed cold transfer (and the
  concurrent clients below) the benchmark calls sync(2), so that the
  gigabytes it wrote earlier are not still being written back: left
  pending, they make the kernel throttle the next writer to the disk's
  speed. Each round also GETs the blob through nginx relaying the
  upstream (` + "`proxy_pass`" + ` with 4 MiB of buffers in memory, no cache, no
  temporary file, no digest check): the cost of one extra hop between
  client and upstream on this machine, which every proxy pays before it
  does any work of its own. For context, each round also
  times writing a fresh file of the blob's size (256 KiB writes, no
  fsync): a proxy that streams to its clients from the file it is writing
  cannot go faster than that, while the distribution proxy writes its copy
  in the background, off the client's path.
- **4. %[2]d cold clients.** A fresh proxy (empty store) in front of a
  counting reverse proxy (Go ` + "`httputil.ReverseProxy`" + ` in this program) that
  sits before the upstream; after one untimed manifest resolution (as
  above), %[2]d clients GET the blob at the same moment.
  Wall time runs from the first request to the last byte of the last
  client; *upstream blob bytes* is what the counting hop relayed for blob
  GETs. The direct row sends the same clients to the upstream through the
  same hop, as a reference.
- **CPU time.** User plus system CPU time of the server process over the
  transfer (from ` + "`/proc/<pid>/stat`" + `, 10 ms resolution): the work each
  server does for the same bytes, which other load on the machine barely
  changes, unlike the wall-clock figures. For a cold GET it covers the
  transfer to the client only; for the concurrent clients it runs until
  the upstream has gone quiet (the distribution proxy goes on storing its
  copy after the clients are served).
- **5. Peak RSS.** VmHWM from ` + "`/proc/<pid>/status`" + ` of the proxy process,
  read at the end of the run of scenario 4. Each proxy is a new process for
  that run, so the high-water mark belongs to it alone. VmHWM counts the
  pages of the executable that were touched (file-backed, shared, dropped
  first under memory pressure) as well as heap and stacks; the value in
  brackets is VmHWM before the clients started, and *peak anonymous RSS*
  (RssAnon sampled every 50 ms) is the memory the process allocated.

## Targets

| measurement | target | why |
|---|---|---|
| warm blob | ≥ 0.9× nginx | a cache hit should cost little more than sending the file |
| warm manifest by digest | ≥ 10× distribution proxy | digests are immutable: answer from memory or disk |
| warm manifest by tag | ≥ 30× distribution proxy | within the tag TTL no upstream round trip is needed |
| cold blob | ≥ 0.8× direct from upstream | streaming while caching must not slow the first pull much |
| concurrent cold clients, bytes | = 1× blob from upstream | one upstream fetch per digest, shared by every reader |
| concurrent cold clients, time | ≤ 0.5× distribution proxy's | "well under": the distribution proxy fetches once per client |
| peak RSS, concurrent cold clients | < 150 MiB | blobs are streamed, never held in memory |
`

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func fmtRate(size int64, d time.Duration) string {
	return fmt.Sprintf("%.0f MB/s (%s)", float64(size)/mb/d.Seconds(), fmtDur(d))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}

func fmtLatency(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmtDur(d)
}

func fmtNum(x float64, unit string) string {
	return fmt.Sprintf("%.0f %s", x, unit)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ⏎ ")
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 600 {
		s = s[:600] + "…"
	}
	return s
}

// writeVerdict writes the section of scenario 6.
func writeVerdict(p func(string, ...any), r *results) {
	v := r.Verdict
	if v == nil {
		if why, ok := r.Failures[sVerdict+"/"+tGatehouse]; ok {
			p("\n### 6. Time to first verdict\n\nNot measured: %s\n", oneLine(why))
		}
		return
	}
	p("\n### 6. Time to first verdict (gate on) against a plain pull\n\n")
	p("Image A: %d layers, %s in all (the scantest CleanAlpine base layer and %d layers of one %s file of random bytes each). "+
		"Image B: the base and the first %d random layers of A plus one new %s layer (%s in all). "+
		"One run each; every gatehouse starts with an empty data directory.\n\n",
		v.ALayers, fmtBytes(v.ASize), v.ALayers-1, fmtBytes(v.LayerSize), v.BLayers-2, fmtBytes(v.BNew), fmtBytes(v.BSize))
	p("| what | time | upstream blob bytes | upstream blob GETs |\n|---|---:|---:|---:|\n")
	row := func(what string, d time.Duration, c *counts) {
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
	row("plain pull of A straight from the upstream docker-registry", v.Direct, nil)
	row("cold pull of A through gatehouse, gate off", v.GateOff, &v.GateOffUp)
	row("**first verdict for A**: gate on, cold: manifest GET until its 200", v.FirstA, &v.FirstAUp)
	row("then pull of A through gatehouse (manifest + blobs, now cached)", v.CachedPull, nil)
	if v.FirstA > 0 && v.CachedPull > 0 {
		row("first verdict + pull of A (a cold pull of A, gate on)", v.FirstA+v.CachedPull, nil)
	}
	row("**first verdict for B** after A: manifest GET until its 200", v.FirstB, &v.FirstBUp)
	if v.ScanA > 0 || v.ScanB > 0 {
		p("\nOf these times, gatehouse's scan (the duration in its \"image scanned\" log line, reading the layers through the cache included) took %s for A and %s for B.\n",
			fmtDurOrDash(v.ScanA), fmtDurOrDash(v.ScanB))
	}
	p("\nVerdicts (GET /api/v1/images): A %s, B %s; vulnerability DB %s.\n", orDash(v.VerdictA), orDash(v.VerdictB), orDash(v.DBVersion))
	if why, ok := r.Failures[sVerdict+"/"+tGatehouse]; ok {
		p("\nIncomplete: %s\n", oneLine(why))
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

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func fmtDurOrDash(d time.Duration) string {
	if d <= 0 {
		return "—"
	}
	return fmtDur(d)
}

func writeSoak(p func(string, ...any), r *results) {
	sr := r.Soak
	if sr == nil {
		if why, ok := r.Failures[sSoak+"/"+tGatehouse]; ok {
			p("\n### 7. Soak\n\nNot measured: %s\n", oneLine(why))
		}
		return
	}
	p("\n### 7. Soak: %d clients pulling cached and cold images\n\n", sr.Clients)
	p("%d images of %d layers of %s of random bytes at the upstream; %d of them pulled through gatehouse before the clients start (cached). "+
		"%d clients then pull without pause for a warm-up and %s more: the other images are released one by one, evenly over the run, each to the next pull that starts (cold); every other pull takes a random cached image.\n\n",
		sr.Images, soakLayers, fmtBytes(soakLayerSize), sr.Cached, sr.Clients, fmtDur(sr.Duration))
	p("| pulls | of them cold | failed | blob bytes read | pulls/s |\n|---:|---:|---:|---:|---:|\n")
	rate := 0.0
	if sr.Duration > 0 {
		rate = float64(sr.Pulls) / sr.Duration.Seconds()
	}
	p("| %d | %d | %d | %s | %.0f |\n", sr.Pulls, sr.ColdPulls, sr.Failures, fmtBytes(sr.Bytes), rate)
	if sr.FirstError != "" {
		p("\nFirst failure: %s\n", oneLine(sr.FirstError))
	}
	p("\n| gatehouse | after warm-up (settled) | peak (1 s samples) | at the end (settled) |\n|---|---:|---:|---:|\n")
	p("| goroutines (`go_goroutines`) | %d | %d | %d |\n", sr.Warm.Goroutines, sr.Peak.Goroutines, sr.End.Goroutines)
	p("| open files (`process_open_fds`) | %d | %d | %d |\n", sr.Warm.FDs, sr.Peak.FDs, sr.End.FDs)
	p("| RSS (VmRSS) | %s | %s | %s |\n", fmtBytes(sr.Warm.RSS), fmtBytes(sr.Peak.RSS), fmtBytes(sr.End.RSS))
	grew := sr.grew()
	p("\nGrowth from the warm-up to the end beyond the slack (%d goroutines or files; RSS over twice the warm value + 64 MiB): %s.\n",
		soakSlack, orDash(strings.Join(grew, ", ")))
	if why, ok := r.Failures[sSoak+"/"+tGatehouse]; ok {
		p("\nIncomplete: %s\n", oneLine(why))
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
