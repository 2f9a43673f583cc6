// Command bench measures gatehouse side by side with its peers on loopback
// and writes the results to a Markdown file (BENCHMARKS.md).
//
// In one run it starts, in a private temporary directory:
//
//   - the upstream: Debian's docker-registry (distribution 2.8) with
//     filesystem storage, holding one test image whose single layer is a
//     -size blob of random bytes;
//   - the distribution pull-through cache: a second docker-registry with
//     "proxy: {remoteurl: ...}" and its own storage;
//   - nginx serving the same blob file from disk with sendfile;
//   - gatehouse (the binary given by -gatehouse; left out when empty);
//   - with -baseline, a second gatehouse binary (say, built from the commit
//     before a change), measured in every scenario exactly as gatehouse
//     is, in the same rounds, and compared with it in a before/after
//     section of the report;
//   - a counting reverse proxy (in this process) in front of the upstream,
//     used where the bytes the upstream serves must be known.
//
// and measures warm and cold blob throughput, warm manifest requests per
// second, eight concurrent cold clients of one blob (wall time, upstream
// bytes) and the peak RSS of each proxy. See report.go for the explanation
// written next to the figures.
//
// Scenario 6 (verdict.go, gatehouse only) times the first verdict of the
// gate for a cold multi-layer image (about 300 MB; 30 MiB with -quick)
// against a plain pull of it, and for a second image on the same layers.
//
// Scenario 7 (soak.go, gatehouse only) runs many clients pulling a mix of
// cached and cold small images for minutes and records failed pulls and
// gatehouse's goroutines, open files and RSS after a warm-up and at the end.
//
// The scale-out section (run_scaleout.go, gatehouse only) starts
// PostgreSQL and versitygw (internal/testsvc) and measures gatehouse on
// its local stores, as 1 replica and as 3 replicas on the shared stores:
// warm blob throughput of many clients, concurrent cold clients (upstream
// bytes) and manifest requests, spread over the replicas. -only scaleout
// runs it alone.
//
// Usage:
//
//	go run ./bench -gatehouse ./bin/gatehouse -out BENCHMARKS.md
//	go run ./bench -gatehouse ./bin/gatehouse -only scaleout -out /tmp/scaleout.md
//	go run ./bench -gatehouse ./bin/gatehouse -baseline /tmp/gatehouse-before -out /tmp/before-after.md
//	go run ./bench -quick          # 64 MiB blob, 2 s loads: a smoke test
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options is everything one benchmark run needs to know.
type options struct {
	gatehouse string // gatehouse binary; empty leaves gatehouse out
	baseline  string // a second gatehouse binary to compare with; empty leaves it out
	registry  string // docker-registry binary
	nginx     string // nginx binary
	out       string // Markdown report; empty writes it to stdout
	command   string // the command line recorded in the report

	size        int64         // blob size in bytes (a multiple of 512)
	quick       bool          // smoke-test mode (recorded in the report)
	duration    time.Duration // length of one manifest load run
	concurrency int           // goroutines of the manifest load generator
	clients     int           // concurrent cold clients of scenario 4
	warmRuns    int           // timed warm GETs per target
	coldRuns    int           // cold GETs per target, each on a fresh proxy
	loadRounds  int           // rounds of manifest load runs per target
	verify      bool          // hash every body read, not only the untimed ones
	keep        bool          // keep the temporary directory
	tmpRoot     string        // parent of the temporary directory ("" = os.TempDir)

	// Scenario 6 (time to first verdict): image A has verdictLayers random
	// layers of verdictLayerSize bytes on a small base layer; 0 skips it.
	verdictLayers    int
	verdictLayerSize int64

	// Scenario 7 (soak): soakClients clients pull a mix of cached and cold
	// images out of soakImages for soakDuration; 0 duration skips it.
	soakDuration time.Duration
	soakClients  int
	soakImages   int

	// Scale-out (run_scaleout.go, gatehouse only): a blob of scaleoutSize
	// bytes, scaleoutClients warm clients; 0 size skips it. only names the
	// one section to run ("" runs everything).
	scaleoutSize    int64
	scaleoutClients int
	only            string

	// blobClients are the clients of the blob scenarios (clients.go).
	blobClients []string

	progress io.Writer // progress lines; never nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == clientFlag {
		os.Exit(clientMain(os.Args[2:]))
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills the program at once;
		// the child processes die with it (Pdeathsig).
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var (
		opts options
		size string
	)
	fs.StringVar(&opts.gatehouse, "gatehouse", "", "gatehouse binary (empty: measure the peers only)")
	fs.StringVar(&opts.baseline, "baseline", "", "a second gatehouse binary (e.g. built before a change), measured alongside -gatehouse in every scenario and compared with it")
	fs.StringVar(&opts.registry, "registry", "docker-registry", "docker-registry (distribution 2.8) binary")
	fs.StringVar(&opts.nginx, "nginx", "nginx", "nginx binary")
	fs.StringVar(&opts.out, "out", "", "write the Markdown report here (default: stdout)")
	fs.StringVar(&size, "size", "", "blob size, e.g. 1GiB, 64MiB, 512MB, 1048576 (default 1GiB, 64MiB with -quick)")
	fs.BoolVar(&opts.quick, "quick", false, "smoke test: small blob, short loads, fewer repetitions")
	fs.DurationVar(&opts.duration, "duration", 0, "length of one manifest load run (default 5s, 2s with -quick)")
	fs.IntVar(&opts.concurrency, "concurrency", 32, "concurrent keep-alive connections of the manifest load generator")
	fs.IntVar(&opts.clients, "clients", 8, "concurrent cold clients of one blob")
	fs.IntVar(&opts.warmRuns, "warm-runs", 0, "timed warm GETs per target (default 9, 3 with -quick)")
	fs.IntVar(&opts.coldRuns, "cold-runs", 0, "cold GETs per target, each on a fresh proxy (default 5, 1 with -quick)")
	fs.IntVar(&opts.loadRounds, "rounds", 0, "rounds of manifest load runs (default 3, 1 with -quick)")
	fs.BoolVar(&opts.verify, "verify", false, "check the sha256 of every body read (slows the clients down)")
	fs.IntVar(&opts.verdictLayers, "verdict-layers", 0, "random layers of the first-verdict image A (default 6, 3 with -quick; B shares all but one)")
	var verdictSize string
	fs.StringVar(&verdictSize, "verdict-layer-size", "", "size of each random layer of the first-verdict images (default 50MB, 10MiB with -quick)")
	fs.DurationVar(&opts.soakDuration, "soak", 0, "length of the soak scenario (default 5m, 45s with -quick; negative skips it)")
	fs.IntVar(&opts.soakClients, "soak-clients", 32, "concurrent clients of the soak scenario")
	fs.IntVar(&opts.soakImages, "soak-images", 0, "images at the upstream for the soak scenario (default 400, 80 with -quick)")
	var scaleoutSize string
	fs.StringVar(&scaleoutSize, "scaleout-size", "", "blob size of the scale-out section (default 256MiB, 32MiB with -quick)")
	fs.IntVar(&opts.scaleoutClients, "scaleout-clients", 16, "concurrent warm clients of the scale-out section, spread over the replicas")
	fs.StringVar(&opts.only, "only", "", `run one section only: "scaleout" (gatehouse as 1 and 3 replicas on shared storage, and on local storage) or "blobs" (the warm and cold blob and warm manifest scenarios)`)
	blobClients := fs.String("blob-clients", strings.Join([]string{cBench, cCurl, cGGCR}, ","), "clients of the warm and cold blob scenarios, from bench, curl and ggcr")
	fs.BoolVar(&opts.keep, "keep", false, "keep the temporary directory (logs, configs, stores)")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if opts.baseline != "" && opts.gatehouse == "" {
		return opts, fmt.Errorf("-baseline needs -gatehouse (the binary to compare with it)")
	}
	opts.blobClients = nil
	for _, c := range strings.Split(*blobClients, ",") {
		if _, ok := clientLabels[c]; !ok {
			return opts, fmt.Errorf("-blob-clients: unknown client %q (want bench, curl or ggcr)", c)
		}
		opts.blobClients = append(opts.blobClients, c)
	}
	if !slices.Contains(opts.blobClients, cBench) {
		return opts, fmt.Errorf("-blob-clients: must include bench (its figures are the CPU budget's and the before/after comparison's)")
	}
	switch opts.only {
	case "", onlyBlobs:
	case onlyScaleout:
		if opts.gatehouse == "" {
			return opts, fmt.Errorf("-only %s needs -gatehouse", opts.only)
		}
	default:
		return opts, fmt.Errorf("-only %q: the sections that run alone are %q and %q", opts.only, onlyScaleout, onlyBlobs)
	}
	if err := opts.defaults(size, verdictSize); err != nil {
		return opts, err
	}
	if err := opts.scaleoutDefaults(scaleoutSize); err != nil {
		return opts, err
	}
	opts.command = "go run ./bench " + strings.Join(args, " ")
	opts.progress = os.Stderr
	return opts, nil
}

// defaults fills in what the flags left at zero (full or -quick values),
// parses the sizes and checks the counts.
func (o *options) defaults(size, verdictSize string) error {
	def := func(v *int, full, quick int) {
		if *v == 0 {
			*v = full
			if o.quick {
				*v = quick
			}
		}
	}
	def(&o.warmRuns, 9, 3)
	def(&o.coldRuns, 5, 1)
	def(&o.loadRounds, 3, 1)
	def(&o.verdictLayers, 6, 3)
	def(&o.soakImages, 400, 80)
	if o.soakDuration == 0 {
		o.soakDuration = 5 * time.Minute
		if o.quick {
			o.soakDuration = 45 * time.Second
		}
	}
	switch {
	case verdictSize != "":
		n, err := parseSize(verdictSize)
		if err != nil {
			return err
		}
		o.verdictLayerSize = n
	case o.quick:
		o.verdictLayerSize = 10 << 20
	default:
		o.verdictLayerSize, _ = parseSize("50MB")
	}
	if o.duration == 0 {
		o.duration = 5 * time.Second
		if o.quick {
			o.duration = 2 * time.Second
		}
	}
	switch {
	case size != "":
		n, err := parseSize(size)
		if err != nil {
			return err
		}
		o.size = n
	case o.quick:
		o.size = 64 << 20
	default:
		o.size = 1 << 30
	}
	if o.concurrency < 1 || o.clients < 1 || o.warmRuns < 1 || o.coldRuns < 1 || o.loadRounds < 1 || o.verdictLayers < 1 ||
		o.soakClients < 1 || o.soakImages < cachedShare {
		return fmt.Errorf("-concurrency, -clients, -warm-runs, -cold-runs, -rounds, -verdict-layers and -soak-clients must be positive, -soak-images at least %d", cachedShare)
	}
	return nil
}

// parseSize reads "1GiB", "64MiB", "512KiB", "1GB", "10MB", "4096" and
// rounds the result up to a multiple of 512 bytes (the layer is a tar
// archive, see image.go). Sizes run from 4 KiB to just under 8 GiB (the
// limit of a ustar header).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3},
		{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f <= 0 || f*float64(mult) > 8<<30-4096 {
		return 0, fmt.Errorf("bad -size %q (want e.g. 1GiB, 64MiB, 1048576)", s)
	}
	n := int64(f * float64(mult))
	n = (n + 511) / 512 * 512
	return max(n, 4096), nil
}
