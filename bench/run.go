package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Target names, as they appear in results and in the report.
const (
	tGatehouse    = "gatehouse"
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
	Warm                         map[string][]time.Duration // target -> warm GET times
	Manifest                     map[string][]loadResult    // target+"/"+mode -> one result per round
	Fanout                       map[string]fanout          // target -> the concurrent cold clients run
	Failures                     map[string]string          // scenario+"/"+target -> why it has no figure
	Verdict                      *verdictResult             // scenario 6; nil when not run
	Soak                         *soakResult                // scenario 7; nil when not run
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
// in a fresh private directory.
type proxyKind struct {
	name  string
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
		printSummary(opts.progress, opts, res)
	}
	return nil
}

// measure sets everything up, runs the scenarios and tears everything
// down, also when ctx is canceled.
func measure(ctx context.Context, opts options) (res *results, err error) {
	if opts.progress == nil {
		opts.progress = io.Discard
	}
	b := &bench{opts: opts, client: newBlobClient()}
	b.res = &results{
		Started:  time.Now().UTC(),
		Machine:  readMachine(),
		Versions: map[string]string{},
		Size:     opts.size,
		Cold:     map[string][]time.Duration{},
		ColdCPU:  map[string][]time.Duration{},
		Warm:     map[string][]time.Duration{},
		Manifest: map[string][]loadResult{},
		Fanout:   map[string]fanout{},
		Failures: map[string]string{},
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
	if err := b.coldAndWarm(ctx); err != nil {
		return nil, err
	}
	if err := b.fanout(ctx); err != nil {
		return nil, err
	}
	if err := b.verdict(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b.fail(sVerdict, tGatehouse, err)
	}
	if err := b.soak(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b.fail(sSoak, tGatehouse, err)
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

	b.kinds = nil
	if opts.gatehouse != "" {
		if _, err := os.Stat(opts.gatehouse); err != nil {
			return fmt.Errorf("-gatehouse: %w", err)
		}
		b.res.Versions[tGatehouse] = toolVersion(opts.gatehouse, "version")
		bin := opts.gatehouse
		b.kinds = append(b.kinds, proxyKind{
			name: tGatehouse,
			start: func(ctx context.Context, dir, upstream string) (*server, error) {
				return startGatehouse(ctx, bin, dir, hostPort(upstream))
			},
		})
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
)

// coldAndWarm runs scenarios 3 (cold blob), 1 (warm blob) and 2 (warm
// manifests). The proxies read straight from the upstream (no counting hop
// in between). Each cold GET goes to a freshly started proxy with an empty
// store; the proxies of the last cold round then serve the warm scenarios.
// Targets take turns within each round, so that noise from other work on
// the machine spreads over all of them.
func (b *bench) coldAndWarm(ctx context.Context) error {
	blobURL := func(base string) string { return base + b.img.blobPath() }
	size, dgst := b.img.layer.Size, b.img.layer.Digest
	verify := func() string {
		if b.opts.verify {
			return dgst
		}
		return ""
	}

	// Scenario 3: cold.
	warm := map[string]*server{}
	for r := range b.opts.coldRuns {
		// A caching proxy writes what it fetches; how fast this machine
		// takes a fresh file of that size into the page cache bounds any
		// proxy that serves from the file it writes.
		settleDisk()
		w, wcpu, err := b.writeProbe()
		if err != nil {
			return fmt.Errorf("write probe: %w", err)
		}
		b.res.Write = append(b.res.Write, w)
		b.res.WriteCPU = append(b.res.WriteCPU, wcpu)
		b.res.HashCPU = append(b.res.HashCPU, hashProbe(size))
		b.logf("cold %d/%d: writing a fresh file %s", r+1, b.opts.coldRuns, fmtRate(size, w))
		settleDisk()
		cpu0, self0 := b.upstream.cpuTime(), processCPU()
		d, err := fetch(ctx, b.client, blobURL(b.upstream.base), size, verify())
		if err != nil {
			return fmt.Errorf("direct GET from the upstream: %w", err)
		}
		b.res.ClientCPU = append(b.res.ClientCPU, processCPU()-self0)
		b.res.Cold[tUpstream] = append(b.res.Cold[tUpstream], d)
		b.res.ColdCPU[tUpstream] = append(b.res.ColdCPU[tUpstream], b.upstream.cpuTime()-cpu0)
		b.logf("cold %d/%d: upstream (direct) %s", r+1, b.opts.coldRuns, fmtRate(size, d))
		settleDisk()
		cpu0 = b.nginx.cpuTime()
		d, err = fetch(ctx, b.client, blobURL(b.nginx.base), size, verify())
		if err != nil {
			return fmt.Errorf("GET through the nginx relay: %w", err)
		}
		b.res.Cold[tRelay] = append(b.res.Cold[tRelay], d)
		b.res.ColdCPU[tRelay] = append(b.res.ColdCPU[tRelay], b.nginx.cpuTime()-cpu0)
		b.logf("cold %d/%d: nginx relay %s", r+1, b.opts.coldRuns, fmtRate(size, d))
		for _, k := range b.kinds {
			if _, failed := b.res.Failures[sCold+"/"+k.name]; failed {
				continue
			}
			b.retire(warm[k.name])
			delete(warm, k.name)
			s, err := b.startProxy(ctx, k, b.upstream.base)
			if err != nil {
				return err
			}
			warm[k.name] = s
			if err := b.resolve(ctx, s.base); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(sCold, k.name, err)
				continue
			}
			settleDisk()
			cpu0 := s.cpuTime()
			d, err := fetch(ctx, b.client, blobURL(s.base), size, verify())
			cpu := s.cpuTime() - cpu0
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(sCold, k.name, err)
				continue
			}
			b.res.Cold[k.name] = append(b.res.Cold[k.name], d)
			b.res.ColdCPU[k.name] = append(b.res.ColdCPU[k.name], cpu)
			b.logf("cold %d/%d: %s %s", r+1, b.opts.coldRuns, k.name, fmtRate(size, d))
		}
	}

	// The distribution proxy goes on writing the blob to its store after
	// the client has its last byte (and until then serves further GETs
	// from the upstream again): wait until the blob is stored.
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil && k.stored != nil {
			if err := k.stored(ctx, s, b.img.layer); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(sWarm, k.name, err)
			}
		}
	}

	// Scenario 1: warm blob. One untimed GET per target, with the digest
	// checked, makes sure that the content is cached and right.
	type target struct {
		name string
		url  string
	}
	targets := []target{{tNginx, b.nginx.base + "/layer.tar"}}
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil {
			targets = append(targets, target{k.name, blobURL(s.base)})
		}
	}
	targets = append(targets, target{tUpstream, blobURL(b.upstream.base)})
	live := map[string]bool{}
	for _, t := range targets {
		if _, err := fetch(ctx, b.client, t.url, size, dgst); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if t.name == tNginx || t.name == tUpstream {
				return err
			}
			b.fail(sWarm, t.name, err)
			continue
		}
		live[t.name] = true
	}
	for r := range b.opts.warmRuns {
		// Each round starts with the next target, so that no target always
		// runs first (or right after the same neighbour).
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			if !live[t.name] {
				continue
			}
			d, err := fetch(ctx, b.client, t.url, size, verify())
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(sWarm, t.name, err)
				live[t.name] = false
				continue
			}
			b.res.Warm[t.name] = append(b.res.Warm[t.name], d)
			b.logf("warm %d/%d: %s %s", r+1, b.opts.warmRuns, t.name, fmtRate(size, d))
		}
	}
	b.client.CloseIdleConnections()

	// Scenario 2: warm manifests, by digest (GET, as a client fetches a
	// manifest it has resolved) and by tag (HEAD, as containerd resolves a
	// tag). One request of each first puts the manifest and the tag into
	// the proxy's cache.
	mtargets := []target{}
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil {
			mtargets = append(mtargets, target{k.name, s.base})
		}
	}
	mtargets = append(mtargets, target{tUpstream, b.upstream.base})
	type mode struct{ name, method, ref string }
	modes := []mode{{"digest", http.MethodGet, b.img.digest}, {"tag", http.MethodHead, b.img.tag}}
	buf := make([]byte, 32<<10)
	mclient := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	defer mclient.CloseIdleConnections()
	for _, t := range mtargets {
		for _, m := range modes {
			url := t.url + b.img.manifestPath(m.ref)
			for _, method := range []string{http.MethodGet, m.method} {
				if err := oneRequest(ctx, mclient, method, url, buf); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.fail(sManifest, t.name+"/"+m.name, err)
				}
			}
		}
	}
	for r := range b.opts.loadRounds {
		for _, m := range modes {
			for _, t := range mtargets {
				if _, failed := b.res.Failures[sManifest+"/"+t.name+"/"+m.name]; failed {
					continue
				}
				lr, err := load(ctx, m.method, t.url+b.img.manifestPath(m.ref), b.opts.concurrency, b.opts.duration)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.fail(sManifest, t.name+"/"+m.name, err)
					continue
				}
				key := t.name + "/" + m.name
				b.res.Manifest[key] = append(b.res.Manifest[key], lr)
				b.logf("manifest by %s %d/%d: %s %.0f req/s (%d errors)", m.name, r+1, b.opts.loadRounds, t.name, lr.PerSecond(), lr.Errors)
			}
		}
	}
	for _, s := range warm {
		b.retire(s)
	}
	return nil
}

// resolve does what a client does before it pulls a layer, untimed:
// resolve the tag (HEAD), then GET the manifest by digest. A cold blob GET
// thus meets a proxy that has already talked to the upstream about this
// repository, as it does in a real pull.
func (b *bench) resolve(ctx context.Context, base string) error {
	client := &http.Client{Transport: &http.Transport{}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	buf := make([]byte, 32<<10)
	if err := oneRequest(ctx, client, http.MethodHead, base+b.img.manifestPath(b.img.tag), buf); err != nil {
		return err
	}
	return oneRequest(ctx, client, http.MethodGet, base+b.img.manifestPath(b.img.digest), buf)
}

// settleDisk writes all dirty pages back (sync(2)) before a timed cold
// transfer. The benchmark itself dirties gigabytes (the layer file, the
// upstream's copy, every proxy's copy); left pending, they make the kernel
// throttle the next writer to the disk's writeback speed, which would
// charge this run's history to whichever proxy writes next.
func settleDisk() { syscall.Sync() }

// writeProbe times writing the blob's size of zeros to a new file in 256
// KiB writes (no fsync), and removes the file. It returns the wall time
// and the CPU time the writes took (waiting for the disk is not CPU).
func (b *bench) writeProbe() (time.Duration, time.Duration, error) {
	path := filepath.Join(b.root, "write-probe")
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 256<<10)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, cpu0 := time.Now(), threadCPU()
	for left := b.img.layer.Size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			return 0, 0, err
		}
		left -= n
	}
	return time.Since(start), threadCPU() - cpu0, f.Close()
}

// hashProbe returns the CPU time sha256 takes over size bytes, fed from a
// 256 KiB buffer as a proxy feeds it from the network.
func hashProbe(size int64) time.Duration {
	buf := make([]byte, 256<<10)
	rand.Read(buf)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h := sha256.New()
	cpu0 := threadCPU()
	for left := size; left > 0; left -= int64(len(buf)) {
		h.Write(buf[:min(left, int64(len(buf)))])
	}
	h.Sum(nil)
	return threadCPU() - cpu0
}

// threadCPU is the user and system CPU time of the calling thread.
func threadCPU() time.Duration { return rusage(rusageThread) }

// processCPU is the user and system CPU time of this process.
func processCPU() time.Duration { return rusage(syscall.RUSAGE_SELF) }

const rusageThread = 1 // RUSAGE_THREAD (Linux)

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fanout runs scenarios 4 and 5: opts.clients concurrent GETs of the blob
// against a freshly started proxy (empty store, fresh process so that its
// VmHWM belongs to this run) in front of the counting proxy; as a
// reference, the same clients straight against the upstream, through the
// same counting hop.
func (b *bench) fanout(ctx context.Context) error {
	one := func(name, url string, s *server) error {
		b.counter.reset()
		fo := fanout{Clients: b.opts.clients, PerClient: make([]time.Duration, b.opts.clients)}
		errs := make([]error, b.opts.clients)
		client := newBlobClient()
		defer client.CloseIdleConnections()
		verify := ""
		if b.opts.verify {
			verify = b.img.layer.Digest
		}
		settleDisk()
		var cpu0 time.Duration
		stopSampling := func() {}
		if s != nil {
			cpu0 = s.cpuTime()
			rss, err := s.peakRSS()
			if err != nil {
				return fmt.Errorf("peak RSS of %s: %w", name, err)
			}
			fo.StartRSS = rss
			stopSampling = s.sampleAnon(&fo.PeakAnon)
		}
		upCPU0 := b.upstream.cpuTime()
		var wg sync.WaitGroup
		start := time.Now()
		for i := range b.opts.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fo.PerClient[i], errs[i] = fetch(ctx, client, url, b.img.layer.Size, verify)
			}()
		}
		wg.Wait()
		fo.Wall = time.Since(start)
		// Count what the proxy fetched for these clients, also after they
		// were served.
		if err := b.counter.settle(ctx); err != nil {
			return err
		}
		stopSampling()
		fo.Upstream = b.counter.snapshot()
		fo.UpCPU = b.upstream.cpuTime() - upCPU0
		if s != nil {
			fo.CPU = s.cpuTime() - cpu0
			rss, err := s.peakRSS()
			if err != nil {
				return fmt.Errorf("peak RSS of %s: %w", name, err)
			}
			fo.PeakRSS = rss
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		b.res.Fanout[name] = fo
		b.logf("%d clients: %s %s wall, upstream served %s in %d blob GETs, peak RSS %s",
			fo.Clients, name, fo.Wall.Round(time.Millisecond), fmtBytes(fo.Upstream.BlobBytes), fo.Upstream.BlobGets, fmtBytes(fo.PeakRSS))
		return nil
	}
	if err := one(tUpstream, b.counter.base+b.img.blobPath(), nil); err != nil {
		return fmt.Errorf("direct clients through the counting proxy: %w", err)
	}
	for _, k := range b.kinds {
		s, err := b.startProxy(ctx, k, b.counter.base)
		if err != nil {
			return err
		}
		err = b.resolve(ctx, s.base)
		if err == nil {
			err = one(k.name, s.base+b.img.blobPath(), s)
		}
		b.retire(s)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.fail(sFanout, k.name, err)
		}
	}
	return nil
}
