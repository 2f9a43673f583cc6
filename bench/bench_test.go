package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{in: "1GiB", want: 1 << 30},
		{in: "64MiB", want: 64 << 20},
		{in: "64M", want: 64 << 20},
		{in: "1.5GiB", want: 3 << 29},
		{in: "10MB", want: 10_000_384}, // rounded up to 512 bytes
		{in: "1048576", want: 1 << 20},
		{in: "1", want: 4096},
		{in: "0", err: true},
		{in: "-3MiB", err: true},
		{in: "lots", err: true},
		{in: "9GiB", err: true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestColdBudget checks the CPU arithmetic behind the cold-target note:
// the least of the rounds for each cost, the median direct time, and the
// note only when the least a cache needs exceeds what the target leaves.
func TestColdBudget(t *testing.T) {
	s := time.Second
	r := &results{
		Machine:   machine{CPUs: 2},
		Cold:      map[string][]time.Duration{tUpstream: {s, 3 * s, 2 * s}},
		ColdCPU:   map[string][]time.Duration{tUpstream: {s / 2, s}, tRelay: {s / 2, 2 * s}},
		ClientCPU: []time.Duration{s / 4, s},
		HashCPU:   []time.Duration{s, 2 * s},
		WriteCPU:  []time.Duration{s / 2, s / 4},
	}
	b, ok := r.coldBudget()
	if !ok {
		t.Fatal("no budget")
	}
	// Direct median 2 s → 2.5 s allowed at 0.8×, 5 s of CPU on 2 CPUs;
	// upstream 0.5 s and client 0.25 s leave 4.25 s. The cache needs at
	// least 0.5 + 1 + 0.25 = 1.75 s.
	if b.allowedWall != 2500*time.Millisecond || b.left != 4250*time.Millisecond || b.least != 1750*time.Millisecond {
		t.Errorf("budget %+v: want allowed 2.5s, left 4.25s, least 1.75s", b)
	}
	if got, want := b.bestRatio, 2.0*2/2.5; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("best ratio %v, want %v", got, want)
	}
	if note := r.coldBound(); note != "" {
		t.Errorf("target within reach, yet the note says %q", note)
	}
	r.HashCPU = []time.Duration{4 * s} // now 0.5 + 4 + 0.25 = 4.75 s > 4.25 s
	if note := r.coldBound(); !strings.Contains(note, "out of reach") || !strings.Contains(note, "4.75 s") {
		t.Errorf("note %q, want it to say the target is out of reach and the least is 4.75 s", note)
	}
	r.ColdCPU[tRelay] = nil
	if _, ok := r.coldBudget(); ok {
		t.Error("a budget without the relay's figure")
	}
}

// TestQuick runs the whole benchmark in quick mode against the real peers
// (docker-registry, nginx) and gatehouse built from this tree, and checks
// the behaviour the figures rest on — never wall-clock thresholds: every
// scenario produced figures; the counting hop counts exactly; N concurrent
// cold clients of gatehouse cost one upstream fetch of the blob.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts docker-registry, nginx and gatehouse; not in -short")
	}
	if gatehouse.err != nil {
		t.Fatal(gatehouse.err)
	}
	if gatehouse.bin == "" {
		t.Log("no cmd/gatehouse yet: measuring the peers only")
	}
	dir := t.TempDir()

	var progress strings.Builder
	opts := options{
		gatehouse:   gatehouse.bin,
		baseline:    os.Getenv("GATEHOUSE_BASELINE"), // optional: a second binary, measured alongside
		registry:    "docker-registry",
		nginx:       "nginx",
		command:     "go test ./bench -run TestQuick",
		size:        16 << 20,
		quick:       true,
		duration:    time.Second,
		concurrency: 8,
		clients:     8,
		warmRuns:    2,
		coldRuns:    1,
		loadRounds:  1,
		verify:      true,
		tmpRoot:     dir,
		progress:    &progress,

		verdictLayers:    3,
		verdictLayerSize: 4 << 20,

		soakDuration: 40 * time.Second,
		soakClients:  16,
		soakImages:   60,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := measure(ctx, opts)
	t.Log(progress.String())
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range res.Failures {
		t.Errorf("failure %s: %s", k, v)
	}

	// Every target has figures in every scenario.
	for _, p := range res.Proxies {
		if len(res.Cold[p]) != opts.coldRuns {
			t.Errorf("cold %s: %d runs, want %d", p, len(res.Cold[p]), opts.coldRuns)
		}
		for _, mode := range []string{"digest", "tag"} {
			lrs := res.Manifest[p+"/"+mode]
			if len(lrs) != opts.loadRounds || lrs[0].Requests == 0 {
				t.Errorf("manifest %s by %s: %+v, want %d round(s) with requests", p, mode, lrs, opts.loadRounds)
			}
		}
		fo, ok := res.Fanout[p]
		if !ok || fo.PeakRSS <= 0 {
			t.Errorf("fanout %s: %+v, want a run with a peak RSS", p, fo)
		}
	}
	for _, name := range []string{tRelay, tUpstream} {
		if len(res.Cold[name]) != opts.coldRuns {
			t.Errorf("cold %s: %d runs, want %d", name, len(res.Cold[name]), opts.coldRuns)
		}
	}
	for _, name := range append([]string{tNginx, tUpstream}, res.Proxies...) {
		if len(res.Warm[name]) != opts.warmRuns {
			t.Errorf("warm %s: %d runs, want %d", name, len(res.Warm[name]), opts.warmRuns)
		}
	}

	// The counting hop counts exactly: N direct clients, N blobs.
	up := res.Fanout[tUpstream].Upstream
	if up.BlobGets != int64(opts.clients) || up.BlobBytes != int64(opts.clients)*opts.size {
		t.Errorf("direct clients through the counter: %d blob GETs, %d bytes; want %d, %d",
			up.BlobGets, up.BlobBytes, opts.clients, int64(opts.clients)*opts.size)
	}
	t.Logf("distribution proxy, %d cold clients: %d upstream blob GETs, %d bytes",
		opts.clients, res.Fanout[tDistribution].Upstream.BlobGets, res.Fanout[tDistribution].Upstream.BlobBytes)

	for _, gt := range res.gatehouseTargets() {
		checkGatehouse(t, opts, res, gt)
	}
	if opts.baseline != "" && len(res.beforeAfter()) == 0 {
		t.Errorf("a baseline, yet no before/after figures")
	}

	// The report renders, with every section.
	var report strings.Builder
	if err := writeReport(&report, opts, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Summary", "## Machine", "### 1. Warm", "### 2. Warm manifest", "### 3. Cold", "### 4 and 5.", "### 6. Time to first verdict", "### 7. Soak", "## Targets", label[tRelay], opts.command} {
		if !strings.Contains(report.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(report.String())
	}

	// Nothing is left behind: no temporary directory, no child process.
	if matches, _ := filepath.Glob(filepath.Join(dir, "gatehouse-bench-*")); len(matches) > 0 {
		t.Errorf("temporary directory left behind: %v", matches)
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("child processes left running: %v", kids)
	}
}

// checkGatehouse checks the figures of gatehouse target gt (gatehouse or
// the baseline): its manifests answered, the gate admitted A and B with
// only B's new layer fetched for B, the soak failed no pull and leaked
// nothing, and N cold clients cost one upstream fetch.
func checkGatehouse(t *testing.T, opts options, res *results, gt string) {
	t.Helper()
	for _, mode := range []string{"digest", "tag"} {
		for _, lr := range res.Manifest[gt+"/"+mode] {
			if lr.Errors != 0 {
				t.Errorf("%s manifest by %s: %d failed requests (first: %s)", gt, mode, lr.Errors, lr.FirstErr)
			}
		}
	}
	// Scenario 6: the gate admits A (a 200 after the scan) and B.
	if res.Verdict == nil || res.Verdict.Runs[gt] == nil {
		t.Errorf("%s: no first-verdict figures", gt)
	} else {
		v, vr := res.Verdict.Runs[gt], res.Verdict
		if v.FirstA <= 0 || v.CachedPull <= 0 || v.FirstB <= 0 || vr.Direct <= 0 || v.GateOff <= 0 {
			t.Errorf("first verdict: missing figures: %+v", v)
		}
		if v.VerdictA != "admitted" || v.VerdictB != "admitted" || v.DBVersion == "" {
			t.Errorf("first verdict: A %q, B %q, DB %q; want both admitted by a scan with a DB", v.VerdictA, v.VerdictB, v.DBVersion)
		}
		// For B, only its new layer (and its config) came from the upstream.
		if v.FirstBUp.BlobBytes < vr.BNew || v.FirstBUp.BlobBytes >= vr.BNew+vr.LayerSize {
			t.Errorf("first verdict for B: upstream served %d blob bytes; want its new layer (%d bytes) and no other big layer", v.FirstBUp.BlobBytes, vr.BNew)
		}
	}
	// Scenario 7: every pull succeeded, cold ones included, and
	// gatehouse ended the soak with the goroutines, open files and
	// memory it had after the warm-up (within the slack).
	if sr := res.Soak[gt]; sr == nil {
		t.Errorf("%s: no soak figures", gt)
	} else {
		if sr.Pulls == 0 || sr.ColdPulls == 0 || sr.Failures != 0 {
			t.Errorf("soak: %d pulls, %d cold, %d failed (first: %s); want pulls of both kinds and no failure", sr.Pulls, sr.ColdPulls, sr.Failures, sr.FirstError)
		}
		if grew := sr.grew(); len(grew) > 0 {
			t.Errorf("soak: gatehouse grew from the warm-up to the end: %v (warm %+v, end %+v)", grew, sr.Warm, sr.End)
		}
		if sr.Warm.Goroutines == 0 || sr.Warm.FDs == 0 || sr.Warm.RSS == 0 {
			t.Errorf("soak: samples missing: %+v", sr.Warm)
		}
	}
	g := res.Fanout[gt].Upstream
	if g.BlobGets != 1 || g.BlobBytes != opts.size {
		t.Errorf("%s, %d cold clients: upstream served %d blob GETs, %d bytes; want 1 GET of %d bytes",
			gt, opts.clients, g.BlobGets, g.BlobBytes, opts.size)
	}
}

// children lists the processes whose parent is this test process.
func children(t *testing.T) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may contain spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			kids = append(kids, s[:i+1])
		}
	}
	return kids
}

// gatehouse is the binary TestQuick measures: GATEHOUSE_BIN when set,
// else built by TestMain ("" while there is no cmd/gatehouse yet).
var gatehouse struct {
	bin string
	err error
}

// TestMain builds gatehouse before m.Run, so that the build (minutes when
// the build cache is cold: it embeds Trivy) does not count against the
// test timeout. The flags are those of the e2e tests, so the two share
// the build cache. Run with clientFlag, the test binary is the
// benchmark's client process (measure runs os.Executable for each blob
// GET).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == clientFlag {
		os.Exit(clientMain(os.Args[2:]))
	}
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "bench-gatehouse-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatehouse.bin, gatehouse.err = buildGatehouse(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildGatehouse builds ./cmd/gatehouse into dir, or returns GATEHOUSE_BIN,
// or "" (peers only) while the command does not exist yet.
func buildGatehouse(dir string) (string, error) {
	if bin := os.Getenv("GATEHOUSE_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		_, err = os.Stat(abs)
		return abs, err
	}
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "gatehouse")); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	bin := filepath.Join(dir, "gatehouse")
	var out strings.Builder
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/gatehouse") // shares the compile with make build and the e2e build
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOEXPERIMENT=jsonv2", "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/gatehouse: %v\n%s", err, out.String())
	}
	return bin, nil
}
