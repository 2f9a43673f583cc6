package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/internal/testsvc"
)

// The scale-out section: gatehouse as one replica on its local stores
// (dataDir blobs, bbolt), as one replica on the shared stores (versitygw
// for blobs, PostgreSQL for records) and as three replicas on the shared
// stores, each measured the same way: a cold blob fetched by
// opts.clients clients at once spread over the replicas (wall time and
// what the upstream served), warm blob throughput of
// opts.scaleoutClients clients spread over the replicas, and manifest
// requests by digest spread over the replicas.

const sScaleout = "scaleout"

// onlyScaleout is the value of -only that runs the scale-out section alone.
const onlyScaleout = "scaleout"

// scaleoutDefaults fills in the blob size of the section (full or -quick
// value) and checks the client count.
func (o *options) scaleoutDefaults(size string) error {
	switch {
	case size != "":
		n, err := parseSize(size)
		if err != nil {
			return fmt.Errorf("-scaleout-size: %w", err)
		}
		o.scaleoutSize = n
	case o.quick:
		o.scaleoutSize = 32 << 20
	default:
		o.scaleoutSize = 256 << 20
	}
	if o.scaleoutClients < 1 {
		return fmt.Errorf("-scaleout-clients must be positive")
	}
	return nil
}

// runScaleout runs the section; a failure of what the set-ups share (the
// image, the stores) is recorded, and the run goes on, unless ctx is done.
func (b *bench) runScaleout(ctx context.Context) error {
	if err := b.scaleout(ctx); err != nil {
		return b.miss(ctx, sScaleout, "stores", err)
	}
	return nil
}

// Names of the set-ups of the scale-out section, in measuring order.
const (
	soLocal   = "local"
	soShared1 = "shared-1"
	soShared3 = "shared-3"
)

// scaleoutResult holds the figures of the scale-out section.
type scaleoutResult struct {
	Size        int64  // the section's blob
	LayerDigest string // its digest
	WarmClients int    // concurrent warm clients
	ColdClients int    // concurrent cold clients
	Concurrency int    // manifest load connections, over all replicas
	Duration    time.Duration
	Setups      []*scaleoutSetup
}

// scaleoutSetup is one set-up of gatehouse and its figures.
type scaleoutSetup struct {
	Name     string
	Replicas int
	Shared   bool // blobs in S3 (versitygw), records in PostgreSQL

	Warm     []time.Duration // wall time of each warm round (WarmClients GETs of the blob)
	Cold     *fanout         // the cold clients (Wall, PerClient, Upstream)
	Manifest []loadResult    // one per round, summed over the replicas
	Err      string          // why figures are missing
}

// setup returns the set-up called name, or nil.
func (so *scaleoutResult) setup(name string) *scaleoutSetup {
	if so == nil {
		return nil
	}
	for _, s := range so.Setups {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// sharedStores is PostgreSQL and versitygw, started once for the section,
// and the files of secrets every shared replica reads.
type sharedStores struct {
	pg                         *testsvc.Server
	s3                         *testsvc.S3Server
	akFile, skFile, secretFile string
	dir                        string
	n                          int
}

func (st *sharedStores) close() {
	if st.s3 != nil {
		st.s3.Close()
	}
	if st.pg != nil {
		st.pg.Close()
	}
}

// fresh returns the storage and cluster sections of a replica's config
// for a new (empty) database and bucket; peers is called per replica.
func (st *sharedStores) fresh() (func(peerPort int) string, error) {
	st.n++
	dsn, err := st.pg.CreateDatabase(fmt.Sprintf("bench_scaleout_%d", st.n))
	if err != nil {
		return nil, err
	}
	bucket, err := st.s3.CreateBucket()
	if err != nil {
		return nil, err
	}
	dsnFile := filepath.Join(st.dir, fmt.Sprintf("dsn-%d", st.n))
	if err := os.WriteFile(dsnFile, []byte(dsn), 0o600); err != nil {
		return nil, err
	}
	return func(peer int) string {
		return fmt.Sprintf(`storage:
  blobs:
    type: s3
    s3: {endpoint: %q, bucket: %q, prefix: "bench/", region: %q, pathStyle: true, accessKeyIdFile: %q, secretAccessKeyFile: %q}
  metadata:
    type: postgres
    postgres: {dsnFile: %q}
cluster: {peerListen: "127.0.0.1:%d", advertise: "http://127.0.0.1:%d", secretFile: %q}
`, st.s3.Endpoint, bucket, st.s3.Region, st.akFile, st.skFile, dsnFile, peer, peer, st.secretFile)
	}, nil
}

// scaleout runs the section: the image, the stores, then each set-up.
func (b *bench) scaleout(ctx context.Context) error {
	opts := b.opts
	if opts.gatehouse == "" || opts.scaleoutSize <= 0 {
		return nil
	}
	img, err := b.scaleoutImage(ctx)
	if err != nil {
		return err
	}
	so := &scaleoutResult{
		Size: img.layer.Size, LayerDigest: img.layer.Digest,
		WarmClients: opts.scaleoutClients, ColdClients: opts.clients,
		Concurrency: opts.concurrency, Duration: opts.duration,
	}
	b.res.Scaleout = so

	dir, err := b.newDir("scaleout-stores")
	if err != nil {
		return err
	}
	st := &sharedStores{dir: dir}
	defer st.close()
	b.logf("scale-out: starting PostgreSQL and versitygw")
	if st.pg, err = testsvc.StartPostgres(); err != nil {
		return err
	}
	if st.s3, err = testsvc.StartS3(dir); err != nil {
		return err
	}
	write := func(name, content string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte(content), 0o600)
	}
	for _, f := range []struct {
		path    *string
		name, v string
	}{{&st.akFile, "ak", st.s3.AccessKey}, {&st.skFile, "sk", st.s3.SecretKey}, {&st.secretFile, "secret", "gatehouse-bench-cluster-secret-0123456789"}} {
		if *f.path, err = write(f.name, f.v); err != nil {
			return err
		}
	}

	for _, sc := range []struct {
		name     string
		replicas int
		shared   bool
	}{{soLocal, 1, false}, {soShared1, 1, true}, {soShared3, 3, true}} {
		set := &scaleoutSetup{Name: sc.name, Replicas: sc.replicas, Shared: sc.shared}
		so.Setups = append(so.Setups, set)
		if err := b.scaleoutSetup(ctx, img, st, set); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			set.Err = err.Error()
			b.fail(sScaleout, sc.name, err)
		}
	}
	return nil
}

// scaleoutImage writes the section's layer of opts.scaleoutSize random
// bytes and pushes its image to the upstream.
func (b *bench) scaleoutImage(ctx context.Context) (*testImage, error) {
	www, err := b.newDir("scaleout-www")
	if err != nil {
		return nil, err
	}
	layerPath := filepath.Join(www, "layer.tar")
	b.logf("scale-out: writing a %s layer of random bytes", fmtBytes(b.opts.scaleoutSize))
	layer, err := writeLayer(layerPath, b.opts.scaleoutSize)
	if err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	img, err := newTestImage("bench/scaleout", "v1", layerPath, layer)
	if err != nil {
		return nil, err
	}
	if err := img.push(ctx, b.upstream.base); err != nil {
		return nil, fmt.Errorf("push to upstream: %w", err)
	}
	return img, nil
}

// scaleoutSetup starts the replicas of set (fresh data directories and,
// when shared, a fresh database and bucket, so that it starts cold), in
// front of the counting proxy, measures them and stops them.
func (b *bench) scaleoutSetup(ctx context.Context, img *testImage, st *sharedStores, set *scaleoutSetup) error {
	var storage func(int) string
	if set.Shared {
		var err error
		if storage, err = st.fresh(); err != nil {
			return err
		}
	}
	var replicas []*server
	defer func() {
		for _, s := range replicas {
			b.retire(s)
		}
	}()
	for i := range set.Replicas {
		dir, err := b.newDir(fmt.Sprintf("scaleout-%s-%d", set.Name, i))
		if err != nil {
			return err
		}
		extra := ""
		if storage != nil {
			peer, err := freePort()
			if err != nil {
				return err
			}
			extra = storage(peer)
		}
		s, err := startGatehouseGate(ctx, b.opts.gatehouse, dir, hostPort(b.counter.base), "warn", gateOff+extra, nil)
		if err != nil {
			return fmt.Errorf("replica %d: %w", i, err)
		}
		replicas = append(replicas, b.track(s))
	}
	b.logf("scale-out %s: %d replica(s) ready", set.Name, len(replicas))
	bases := make([]string, len(replicas))
	for i, s := range replicas {
		bases[i] = s.base
	}
	if err := b.scaleoutCold(ctx, img, bases, set); err != nil {
		return fmt.Errorf("cold clients: %w", err)
	}
	if err := b.scaleoutWarm(ctx, img, bases, set); err != nil {
		return fmt.Errorf("warm clients: %w", err)
	}
	if err := b.scaleoutManifests(ctx, img, bases, set); err != nil {
		return fmt.Errorf("manifests: %w", err)
	}
	return nil
}

// scaleoutCold resolves the image on every replica (untimed, as a client
// does before it pulls a layer), then sends opts.clients clients at once
// for the cold blob, client i to replica i mod n, and counts what the
// upstream served until it has gone quiet.
func (b *bench) scaleoutCold(ctx context.Context, img *testImage, bases []string, set *scaleoutSetup) error {
	for _, base := range bases {
		if err := resolveImage(ctx, img, base); err != nil {
			return err
		}
	}
	b.counter.reset()
	settleDisk()
	n := b.opts.clients
	fo := &fanout{Clients: n, PerClient: make([]time.Duration, n)}
	urls := make([]string, n)
	for i := range urls {
		urls[i] = bases[i%len(bases)] + img.blobPath()
	}
	var wantDigest string
	if b.opts.verify {
		wantDigest = img.layer.Digest
	}
	var err error
	fo.Wall, err = concurrentGets(ctx, urls, img.layer.Size, wantDigest, fo.PerClient)
	if serr := b.counter.settle(ctx); serr != nil && err == nil {
		err = serr
	}
	fo.Upstream = b.counter.snapshot()
	if err != nil {
		return err
	}
	set.Cold = fo
	b.logf("scale-out %s: %d cold clients %s wall, upstream served %s in %d blob GETs (%.2f× blob)", set.Name, n,
		fmtDur(fo.Wall), fmtBytes(fo.Upstream.BlobBytes), fo.Upstream.BlobGets, float64(fo.Upstream.BlobBytes)/float64(img.layer.Size))
	return nil
}

// scaleoutWarm checks the blob on every replica (untimed, digest
// checked), then runs opts.loadRounds rounds of opts.scaleoutClients
// clients at once, client i on replica i mod n, each reading the whole
// blob.
func (b *bench) scaleoutWarm(ctx context.Context, img *testImage, bases []string, set *scaleoutSetup) error {
	client := newBlobClient()
	for _, base := range bases {
		if _, err := fetch(ctx, client, base+img.blobPath(), img.layer.Size, img.layer.Digest); err != nil {
			return err
		}
	}
	client.CloseIdleConnections()
	n := b.opts.scaleoutClients
	urls := make([]string, n)
	for i := range urls {
		urls[i] = bases[i%len(bases)] + img.blobPath()
	}
	var wantDigest string
	if b.opts.verify {
		wantDigest = img.layer.Digest
	}
	for r := range b.opts.loadRounds {
		wall, err := concurrentGets(ctx, urls, img.layer.Size, wantDigest, make([]time.Duration, n))
		if err != nil {
			return err
		}
		set.Warm = append(set.Warm, wall)
		b.logf("scale-out %s: warm %d/%d: %d clients, %.0f MB/s in all (%s)", set.Name, r+1, b.opts.loadRounds, n,
			float64(int64(n)*img.layer.Size)/mb/wall.Seconds(), fmtDur(wall))
	}
	return nil
}

// scaleoutManifests primes the manifest on every replica, then runs
// opts.loadRounds rounds of GETs by digest, opts.concurrency connections
// in all, shared out over the replicas, and sums the replicas' figures.
func (b *bench) scaleoutManifests(ctx context.Context, img *testImage, bases []string, set *scaleoutSetup) error {
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	buf := make([]byte, 32<<10)
	for _, base := range bases {
		if err := oneRequest(ctx, client, http.MethodGet, base+img.manifestPath(img.digest), buf); err != nil {
			return err
		}
	}
	client.CloseIdleConnections()
	conc := splitConns(b.opts.concurrency, len(bases))
	for r := range b.opts.loadRounds {
		parts := make([]loadResult, len(bases))
		errs := make([]error, len(bases))
		var wg sync.WaitGroup
		for i, base := range bases {
			if conc[i] == 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				parts[i], errs[i] = load(ctx, http.MethodGet, base+img.manifestPath(img.digest), conc[i], b.opts.duration)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		lr := sumLoads(parts)
		set.Manifest = append(set.Manifest, lr)
		b.logf("scale-out %s: manifest by digest %d/%d: %.0f req/s (%d errors)", set.Name, r+1, b.opts.loadRounds, lr.PerSecond(), lr.Errors)
	}
	return nil
}

// splitConns shares total connections out over n replicas as evenly as
// possible, the first ones getting the remainder.
func splitConns(total, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = total / n
		if i < total%n {
			out[i]++
		}
	}
	return out
}

// sumLoads adds up load runs that ran at the same time over the same
// interval: requests and errors add up; the latencies are the worst
// replica's.
func sumLoads(parts []loadResult) loadResult {
	var out loadResult
	for _, p := range parts {
		out.Requests += p.Requests
		out.Errors += p.Errors
		if out.FirstErr == "" {
			out.FirstErr = p.FirstErr
		}
		out.Elapsed = max(out.Elapsed, p.Elapsed)
		out.P50 = max(out.P50, p.P50)
		out.P99 = max(out.P99, p.P99)
	}
	return out
}

// concurrentGets GETs every url at the same moment, each from its own
// client goroutine, and returns the wall time from the first request to
// the last byte; each GET's time goes to per[i].
func concurrentGets(ctx context.Context, urls []string, size int64, wantDigest string, per []time.Duration) (time.Duration, error) {
	client := newBlobClient()
	defer client.CloseIdleConnections()
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	start := time.Now()
	for i, url := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			per[i], errs[i] = fetch(ctx, client, url, size, wantDigest)
		}()
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// resolveImage does what b.resolve does, for img: HEAD the tag, GET the
// manifest by digest.
func resolveImage(ctx context.Context, img *testImage, base string) error {
	client := &http.Client{Transport: &http.Transport{}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	buf := make([]byte, 32<<10)
	if err := oneRequest(ctx, client, http.MethodHead, base+img.manifestPath(img.tag), buf); err != nil {
		return err
	}
	return oneRequest(ctx, client, http.MethodGet, base+img.manifestPath(img.digest), buf)
}
