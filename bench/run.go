package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Target names, as they appear in results and in the report.
const (
	tGatehouse    = "gatehouse"
	tBaseline     = "baseline" // a second gatehouse binary (-baseline), measured like the first
	tDistribution = "distribution"
	tNginx        = "nginx"
	tUpstream     = "upstream"
	tRelay        = "relay" // nginx relaying the upstream: no cache, no hash
)

// results holds every figure of one run.
type results struct {
	Started, Finished time.Time
	Machine           machine
	Versions          map[string]string // target -> version line
	Size              int64
	LayerDigest       string
	ManifestDigest    string
	Proxies           []string // proxies measured, in report order

	Cold    map[string][]time.Duration // target -> cold GET times (upstream: direct)
	ColdCPU map[string][]time.Duration // target -> CPU time of its process during each cold GET
	Write   []time.Duration            // writing the blob's size to a fresh file, once per cold round
	// CPU time of the work every verifying cache does for a cold blob,
	// measured in this program once per cold round: writing the blob's
	// size to a fresh file, hashing it, and (the client's share of the
	// direct GET) reading it from a socket.
	WriteCPU, HashCPU, ClientCPU []time.Duration
	Warm                         map[string][]time.Duration // target -> warm GET times (the bench client's)
	// The blob scenarios per client (clients.go), in BlobClients order.
	BlobClients []string
	ByClient    map[string]*clientFigures
	Parts       map[string]*partProfile // gatehouse target -> where its cold GET's CPU time went (profile.go)
	PartsErr    map[string]string       // gatehouse target -> why it has no profile
	Manifest    map[string][]loadResult // target+"/"+mode -> one result per round
	Fanout      map[string]fanout       // target -> the concurrent cold clients run
	Failures    map[string]string       // scenario+"/"+target -> why it has no figure
	Verdict     *verdictResult          // scenario 6; nil when not run
	Soak        map[string]*soakResult  // scenario 7: gatehouse target -> its figures; nil when not run
	Scaleout    *scaleoutResult         // the scale-out section; nil when not run
}

// client returns the figures of client c, making them on first use.
func (r *results) client(c string) *clientFigures {
	f := r.ByClient[c]
	if f == nil {
		f = newClientFigures()
		r.ByClient[c] = f
	}
	return f
}

// fanout is the outcome of N concurrent cold clients of one blob.
type fanout struct {
	Clients   int
	Wall      time.Duration   // start of the first request to the end of the last body
	PerClient []time.Duration // each client's time
	Upstream  counts          // what the upstream served meanwhile
	PeakRSS   int64           // VmHWM of the (fresh) proxy process; 0 for the upstream row
	StartRSS  int64           // its VmHWM before the clients started
	PeakAnon  int64           // the largest RssAnon sampled during the run
	CPU       time.Duration   // CPU time of the proxy process (0 for the upstream row)
	UpCPU     time.Duration   // CPU time of the upstream docker-registry
}

// proxyKind starts one kind of pull-through proxy of upstream (a base URL)
// in a fresh private directory. Every scenario that measures proxies
// measures each kind in b.kinds, in that order; the gatehouse kinds (bin
// set: gatehouse and, with -baseline, the baseline) are also those of the
// gatehouse-only scenarios 6 and 7.
type proxyKind struct {
	name  string
	bin   string // the gatehouse binary; "" for a peer
	start func(ctx context.Context, dir, upstream string) (*server, error)
	// stored waits until the proxy s has the blob in its own store, after
	// a first GET (nil: the proxy stores before the first GET ends).
	stored func(ctx context.Context, s *server, desc descriptor) error
}

// bench is the state of one run: its directory, its servers, its results.
type bench struct {
	opts     options
	root     string
	img      *testImage
	upstream *server
	nginx    *server
	counter  *counter
	kinds    []proxyKind
	client   *http.Client // for blob GETs
	res      *results

	mu      sync.Mutex
	servers []*server // every server started, stopped by close
	dirs    int
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.opts.progress, "bench: "+format+"\n", args...)
}

// newDir makes a fresh directory under the run's root.
func (b *bench) newDir(name string) (string, error) {
	b.mu.Lock()
	b.dirs++
	dir := filepath.Join(b.root, fmt.Sprintf("%02d-%s", b.dirs, name))
	b.mu.Unlock()
	return dir, os.MkdirAll(dir, 0o755)
}

func (b *bench) track(s *server) *server {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.servers = append(b.servers, s)
	return s
}

// retire stops a proxy and deletes its directory (its cache copy of the
// blob), so that disk use stays at a few copies of the blob.
func (b *bench) retire(s *server) {
	if s == nil {
		return
	}
	s.stop()
	if !b.opts.keep {
		_ = os.RemoveAll(s.dir)
	}
}

// close stops every server and the counter and removes the directory.
func (b *bench) close() {
	b.mu.Lock()
	servers := b.servers
	b.mu.Unlock()
	for i := len(servers) - 1; i >= 0; i-- {
		servers[i].stop()
	}
	if b.counter != nil {
		b.counter.close()
	}
	if b.root != "" {
		if b.opts.keep {
			b.logf("kept %s", b.root)
		} else {
			_ = os.RemoveAll(b.root)
		}
	}
}

// run performs the whole benchmark and writes the report.
func run(ctx context.Context, opts options) error {
	res, err := measure(ctx, opts)
	if err != nil {
		return err
	}
	w := io.Writer(os.Stdout)
	if opts.out != "" {
		f, err := os.Create(opts.out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if err := writeReport(w, opts, res); err != nil {
		return err
	}
	if opts.out != "" {
		fmt.Fprintf(opts.progress, "bench: wrote %s\n", opts.out)
		if opts.only == "" {
			printSummary(opts.progress, opts, res)
		}
	}
	return nil
}

// measure sets everything up, runs the scenarios and tears everything
// down, also when ctx is canceled.
func measure(ctx context.Context, opts options) (res *results, err error) {
	if opts.progress == nil {
		opts.progress = io.Discard
	}
	if len(opts.blobClients) == 0 {
		opts.blobClients = []string{cBench, cCurl, cGGCR}
	}
	b := &bench{opts: opts, client: newBlobClient()}
	b.res = &results{
		Started:     time.Now().UTC(),
		Machine:     readMachine(),
		Versions:    map[string]string{},
		Size:        opts.size,
		Cold:        map[string][]time.Duration{},
		ColdCPU:     map[string][]time.Duration{},
		Warm:        map[string][]time.Duration{},
		ByClient:    map[string]*clientFigures{},
		BlobClients: opts.blobClients,
		Parts:       map[string]*partProfile{},
		PartsErr:    map[string]string{},
		Manifest:    map[string][]loadResult{},
		Fanout:      map[string]fanout{},
		Failures:    map[string]string{},
	}
	b.root, err = os.MkdirTemp(opts.tmpRoot, "gatehouse-bench-")
	if err != nil {
		return nil, err
	}
	defer b.close()
	defer b.client.CloseIdleConnections()

	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	if opts.only == onlyScaleout {
		if err := b.runScaleout(ctx); err != nil {
			return nil, err
		}
		b.res.Machine.LoadEnd = readLoadavg()
		b.res.Finished = time.Now().UTC()
		return b.res, nil
	}
	if err := b.coldAndWarm(ctx); err != nil {
		return nil, err
	}
	if opts.only == onlyBlobs {
		b.res.Machine.LoadEnd = readLoadavg()
		b.res.Finished = time.Now().UTC()
		return b.res, nil
	}
	if err := b.fanout(ctx); err != nil {
		return nil, err
	}
	// The gatehouse-only scenarios: an error of the part they share is
	// every gatehouse's.
	for _, sc := range []struct {
		name string
		run  func(context.Context) error
	}{{sVerdict, b.verdict}, {sSoak, b.soak}} {
		if err := sc.run(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			for _, k := range b.gatehouses() {
				b.fail(sc.name, k.name, err)
			}
		}
	}
	if err := b.runScaleout(ctx); err != nil {
		return nil, err
	}
	b.res.Machine.LoadEnd = readLoadavg()
	b.res.Finished = time.Now().UTC()
	return b.res, nil
}

// setup writes the layer, starts the upstream and pushes the image to it,
// starts nginx on the same file and the counting proxy.
func (b *bench) setup(ctx context.Context) error {
	opts := b.opts
	b.res.Versions[tUpstream] = toolVersion(opts.registry, "--version")
	b.res.Versions[tDistribution] = b.res.Versions[tUpstream]
	b.res.Versions[tNginx] = toolVersion(opts.nginx, "-v")

	if err := b.setupKinds(); err != nil {
		return err
	}

	www, err := b.newDir("www")
	if err != nil {
		return err
	}
	layerPath := filepath.Join(www, "layer.tar")
	b.logf("writing a %s layer of random bytes to %s", fmtBytes(opts.size), layerPath)
	layer, err := writeLayer(layerPath, opts.size)
	if err != nil {
		return fmt.Errorf("write layer: %w", err)
	}

	b.img, err = newTestImage("bench/big", "v1", layerPath, layer)
	if err != nil {
		return err
	}
	b.res.LayerDigest, b.res.ManifestDigest = layer.Digest, b.img.digest
	// The same file at the blob's registry path, for nginx's second
	// server, which clients that speak the registry API (ggcr) can read.
	regPath := filepath.Join(www, filepath.FromSlash(b.img.blobPath()))
	if err := os.MkdirAll(filepath.Dir(regPath), 0o755); err != nil {
		return err
	}
	if err := os.Link(layerPath, regPath); err != nil {
		return err
	}

	dir, err := b.newDir("upstream")
	if err != nil {
		return err
	}
	s, err := startRegistry(ctx, opts.registry, "upstream docker-registry", dir, "")
	if err != nil {
		return err
	}
	b.upstream = b.track(s)
	b.logf("upstream docker-registry at %s; pushing %s:%s", s.base, b.img.repo, b.img.tag)
	if err := b.img.push(ctx, s.base); err != nil {
		return fmt.Errorf("push to upstream: %w", err)
	}

	dir, err = b.newDir("nginx")
	if err != nil {
		return err
	}
	s, err = startNginx(ctx, opts.nginx, dir, www, "/layer.tar", b.upstream.base)
	if err != nil {
		return err
	}
	b.nginx = b.track(s)

	b.counter, err = startCounter(b.upstream.base)
	if err != nil {
		return err
	}
	b.logf("nginx at %s, counting proxy at %s", b.nginx.base, b.counter.base)
	return nil
}

// setupKinds lists the proxies to measure: gatehouse, the baseline and
// the distribution proxy, each present when its binary is given.
func (b *bench) setupKinds() error {
	opts := b.opts
	b.kinds = nil
	for _, g := range []struct{ name, flag, bin string }{
		{tGatehouse, "-gatehouse", opts.gatehouse},
		{tBaseline, "-baseline", opts.baseline},
	} {
		if g.bin == "" {
			continue
		}
		bin, err := b.ownCopy(g.name, g.bin)
		if err != nil {
			return fmt.Errorf("%s: %w", g.flag, err)
		}
		if g.name == tGatehouse {
			b.opts.gatehouse = bin
		}
		b.res.Versions[g.name] = toolVersion(bin, "version")
		b.kinds = append(b.kinds, gatehouseKind(g.name, bin))
	}
	b.kinds = append(b.kinds, proxyKind{
		name: tDistribution,
		start: func(ctx context.Context, dir, upstream string) (*server, error) {
			return startRegistry(ctx, opts.registry, tDistribution, dir, upstream)
		},
		stored: registryStored,
	})
	for _, k := range b.kinds {
		b.res.Proxies = append(b.res.Proxies, k.name)
	}
	return nil
}

// ownCopy copies the binary bin into a directory of the bench and returns
// the copy's path, so that every gatehouse measured runs from a file
// written the same way. Part of a process's RSS is the pages of its binary
// the kernel maps in, and how many it maps depends on how the file sits in
// the page cache: a binary just linked by go build mapped 26 MB more at
// start than a copy of it (RssFile 109 against 85 MB, the same anonymous
// memory), and the RSS rows compared files, not code.
func (b *bench) ownCopy(name, bin string) (string, error) {
	src, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dir, err := b.newDir("bin-" + name)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "gatehouse")
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", err
	}
	return path, dst.Close()
}

// gatehouseKind is the proxy kind of one gatehouse binary, gate off.
func gatehouseKind(name, bin string) proxyKind {
	return proxyKind{
		name: name,
		bin:  bin,
		start: func(ctx context.Context, dir, upstream string) (*server, error) {
			return startGatehouse(ctx, bin, dir, hostPort(upstream))
		},
	}
}

// gatehouses returns the gatehouse kinds, in measuring order.
func (b *bench) gatehouses() []proxyKind {
	var out []proxyKind
	for _, k := range b.kinds {
		if k.bin != "" {
			out = append(out, k)
		}
	}
	return out
}

// startProxy starts a fresh proxy of kind k in front of upstream.
func (b *bench) startProxy(ctx context.Context, k proxyKind, upstream string) (*server, error) {
	dir, err := b.newDir(k.name)
	if err != nil {
		return nil, err
	}
	s, err := k.start(ctx, dir, upstream)
	if err != nil {
		return nil, err
	}
	return b.track(s), nil
}

// fail records why target has no figure in scenario and logs it.
func (b *bench) fail(scenario, target string, err error) {
	key := scenario + "/" + target
	if _, ok := b.res.Failures[key]; !ok {
		b.res.Failures[key] = err.Error()
	}
	b.logf("%s: %s: %v", scenario, target, err)
}

// Scenario names (keys of results.Failures).
const (
	sCold     = "cold"
	sWarm     = "warm"
	sManifest = "manifest"
	sFanout   = "fanout"
	sProfile  = "cold-profile"
)
