package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario 7: soak. One gatehouse (gate off) in front of the upstream
// holding opts.soakImages small images; a part of them is pulled once
// beforehand (cached), the rest stays cold. opts.soakClients clients then
// pull for opts.soakDuration: the cold images are released one by one,
// evenly over the run, each to the next pull that starts; every other pull
// takes a random cached image. Each pull is what a
// client does (manifest by tag, then every blob, checked by length and
// sha256). The figures: pulls, failures, and gatehouse's goroutines, open
// file descriptors and RSS, settled after a warm-up (a fifth of the
// duration) and at the end, with the peaks in between.

const (
	sSoak = "soak"

	soakLayers    = 2
	soakLayerSize = 256 << 10
	// cachedShare is the part of the images pulled before the clients start.
	cachedShare = 4
)

// soakResult holds the figures of scenario 7.
type soakResult struct {
	Duration   time.Duration // of the measured phase after the warm-up
	Clients    int
	Images     int // images at the upstream
	Cached     int // of them pulled before the clients started
	Pulls      int64
	ColdPulls  int64
	Failures   int64
	FirstError string // the first failed pull, warm-up included
	Bytes      int64  // blob bytes the clients read in the measured phase

	// WarmupPulls and WarmupFailures count the pulls of the warm-up (not
	// in Pulls): a failed one fails the soak as much as a measured one.
	WarmupPulls, WarmupFailures int64
	// Finished is set once the measured phase ran its whole length and
	// the settled sample at the end was taken: without it End is not a
	// figure and nothing can be said about growth.
	Finished bool

	Warm, End procSample // settled, after the warm-up and after the last pull
	Peak      procSample // the largest of each, sampled every second meanwhile
}

// procSample is gatehouse's use of resources at one moment.
type procSample struct {
	Goroutines int64 // go_goroutines on /metrics
	FDs        int64 // process_open_fds on /metrics
	RSS        int64 // VmRSS in /proc, bytes
}

func (s *procSample) max(o procSample) {
	s.Goroutines, s.FDs, s.RSS = max(s.Goroutines, o.Goroutines), max(s.FDs, o.FDs), max(s.RSS, o.RSS)
}

// soakSlack is the growth of goroutines and open files from the warm-up to
// the end that still counts as none (idle upstream connections, a timer).
const soakSlack = 16

// grew reports what grew beyond the slack from Warm to End: goroutines or
// file descriptors by more than soakSlack, RSS to more than twice its
// warm value plus 64 MiB. Empty when nothing did.
func (r *soakResult) grew() []string {
	var out []string
	if r.End.Goroutines > r.Warm.Goroutines+soakSlack {
		out = append(out, fmt.Sprintf("goroutines %d → %d", r.Warm.Goroutines, r.End.Goroutines))
	}
	if r.End.FDs > r.Warm.FDs+soakSlack {
		out = append(out, fmt.Sprintf("open files %d → %d", r.Warm.FDs, r.End.FDs))
	}
	if r.End.RSS > 2*r.Warm.RSS+64<<20 {
		out = append(out, fmt.Sprintf("RSS %s → %s", fmtBytes(r.Warm.RSS), fmtBytes(r.End.RSS)))
	}
	return out
}

// passed reports whether the soak meets its target: it finished, pulled,
// no pull failed (warm-up included) and nothing grew.
func (r *soakResult) passed() bool {
	return r.Finished && r.Pulls > 0 && r.Failures == 0 && r.WarmupFailures == 0 && len(r.grew()) == 0
}

// outcome is the summary's account of the soak: failed pulls of the
// measured phase and of the warm-up, growth, and whether it finished.
func (r *soakResult) outcome() string {
	out := fmt.Sprintf("%d of %d failed (warm-up: %d of %d); %s", r.Failures, r.Pulls, r.WarmupFailures, r.WarmupPulls, orDash(strings.Join(r.grew(), ", ")))
	if !r.Finished {
		out = "unfinished; " + out
	}
	return out
}

// rate is the pulls per second of the measured phase.
func (r *soakResult) rate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Pulls) / r.Duration.Seconds()
}

// soak runs scenario 7 (only with a gatehouse binary): it pushes the
// images once, then soaks each gatehouse binary in turn, each a fresh
// process with an empty cache.
func (b *bench) soak(ctx context.Context) error {
	gs := b.gatehouses()
	if len(gs) == 0 || b.opts.soakDuration <= 0 {
		return nil
	}
	b.res.Soak = map[string]*soakResult{}
	for _, k := range gs {
		b.res.Soak[k.name] = &soakResult{Clients: b.opts.soakClients, Images: b.opts.soakImages, Cached: max(1, b.opts.soakImages/cachedShare)}
	}
	imgs, err := b.soakImages(ctx)
	if err != nil {
		return err
	}
	for _, k := range gs {
		sk := &soakRun{b: b, k: k, imgs: imgs, sr: b.res.Soak[k.name]}
		if err := sk.run(ctx); err != nil {
			if err := b.miss(ctx, sSoak, k.name, err); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// soakImages pushes opts.soakImages images of soakLayers random layers to
// the upstream.
func (b *bench) soakImages(ctx context.Context) ([]*multiImage, error) {
	b.logf("soak: pushing %d images of %d × %s", b.opts.soakImages, soakLayers, fmtBytes(soakLayerSize))
	rng := rand.New(rand.NewPCG(7, 7))
	imgs := make([]*multiImage, b.opts.soakImages)
	for i := range imgs {
		var layers []blobFile
		var diffs []string
		for range soakLayers {
			data := make([]byte, soakLayerSize)
			for j := 0; j < len(data); j += 8 {
				v := rng.Uint64()
				for k := range 8 {
					data[j+k] = byte(v >> (8 * k))
				}
			}
			d := descriptor{MediaType: mediaTypeLayer, Digest: digestOf(data), Size: int64(len(data))}
			layers = append(layers, blobFile{desc: d, data: data})
			diffs = append(diffs, d.Digest)
		}
		img, err := newMultiImage(fmt.Sprintf("bench/soak-%d", i), "v1", layers, diffs)
		if err != nil {
			return nil, err
		}
		if err := img.push(ctx, b.upstream.base); err != nil {
			return nil, fmt.Errorf("push %s: %w", img.repo, err)
		}
		imgs[i] = img
	}
	return imgs, nil
}

// soakRun is the soak of one gatehouse binary.
type soakRun struct {
	b    *bench
	k    proxyKind
	imgs []*multiImage
	sr   *soakResult
	gh   *server

	next  atomic.Int64  // index of the next cold image
	begin time.Time     // the cold images are due from here on,
	every time.Duration // one every so often
	mu    sync.Mutex    // guards sr's counts
}

// run starts a fresh gatehouse, caches the first sr.Cached images, runs
// the warm-up and the measured phase and samples gatehouse around them.
func (s *soakRun) run(ctx context.Context) error {
	b, sr := s.b, s.sr
	dir, err := b.newDir(s.k.name + "-soak")
	if err != nil {
		return err
	}
	if s.gh, err = startGatehouse(ctx, s.k.bin, dir, hostPort(b.upstream.base)); err != nil {
		return err
	}
	b.track(s.gh)
	defer b.retire(s.gh)
	for _, img := range s.imgs[:sr.Cached] {
		if _, err := pull(ctx, s.gh.base, img); err != nil {
			return fmt.Errorf("caching %s: %w", img.repo, err)
		}
	}
	return s.phases(ctx)
}

// phases runs the warm-up and the measured phase against s.gh, whose
// first sr.Cached images are cached, and samples gatehouse around them.
// sr.Finished is set only when all of it ran to the end.
func (s *soakRun) phases(ctx context.Context) error {
	b, sr := s.b, s.sr
	var err error
	// The cold images are released one by one, evenly over the whole run,
	// so that cold pulls go on until the end.
	s.next.Store(int64(sr.Cached))
	s.begin, s.every = time.Now(), b.opts.soakDuration/time.Duration(sr.Images-sr.Cached+1)

	warmup := b.opts.soakDuration / 5
	b.logf("soak: %s: %d clients, warm-up %v", s.k.name, sr.Clients, warmup)
	s.load(ctx, warmup, false)
	if sr.WarmupFailures > 0 {
		b.fail(sSoak, s.k.name, fmt.Errorf("%d of %d warm-up pulls failed; first: %s", sr.WarmupFailures, sr.WarmupPulls, sr.FirstError))
	}
	if sr.Warm, err = settled(ctx, s.gh); err != nil {
		return err
	}
	sr.Peak = sr.Warm
	b.logf("soak: %s: measuring %v (settled after warm-up: %+v)", s.k.name, b.opts.soakDuration-warmup, sr.Warm)
	stop := s.samplePeak(ctx)
	start := time.Now()
	s.load(ctx, b.opts.soakDuration-warmup, true)
	sr.Duration = time.Since(start)
	stop()
	if sr.End, err = settled(ctx, s.gh); err != nil {
		return err
	}
	sr.Peak.max(sr.End)
	b.logf("soak: %s: %d pulls (%d cold), %d failed; settled at the end: %+v; peak %+v", s.k.name, sr.Pulls, sr.ColdPulls, sr.Failures, sr.End, sr.Peak)
	if err := ctx.Err(); err != nil {
		return err
	}
	sr.Finished = true
	return nil
}

// samplePeak samples gatehouse every second into sr.Peak until the
// returned function is called.
func (s *soakRun) samplePeak(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if v, err := sample(ctx, s.gh); err == nil {
					s.sr.Peak.max(v)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-sampled
	}
}

// load runs the clients for d and counts their pulls in sr: as measured
// ones or as the warm-up's.
func (s *soakRun) load(ctx context.Context, d time.Duration, measured bool) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for c := range s.sr.Clients {
		rng := rand.New(rand.NewPCG(uint64(c), 1))
		wg.Go(func() {
			for ctx.Err() == nil {
				img, cold := s.pick(rng)
				// A pull under way when the phase ends runs to its end:
				// only the start is bounded by the phase.
				_, err := pull(context.WithoutCancel(ctx), s.gh.base, img)
				if measured {
					s.record(img, cold, err)
				} else {
					s.recordWarmup(img, err)
				}
			}
		})
	}
	wg.Wait()
}

// pick chooses the image of the next pull: the next cold one when it is
// due, else a random cached one.
func (s *soakRun) pick(rng *rand.Rand) (img *multiImage, cold bool) {
	img, cold = s.imgs[rng.IntN(s.sr.Cached)], false
	if i := s.next.Load(); i < int64(len(s.imgs)) && time.Now().After(s.coldDue(i)) && s.next.CompareAndSwap(i, i+1) {
		img, cold = s.imgs[i], true
	}
	return img, cold
}

func (s *soakRun) coldDue(i int64) time.Time {
	return s.begin.Add(time.Duration(i-int64(s.sr.Cached)+1) * s.every)
}

// record counts one measured pull.
func (s *soakRun) record(img *multiImage, cold bool, err error) {
	sr := s.sr
	s.mu.Lock()
	defer s.mu.Unlock()
	sr.Pulls++
	if cold {
		sr.ColdPulls++
	}
	if err != nil {
		sr.Failures++
		if sr.FirstError == "" {
			sr.FirstError = img.repo + ": " + err.Error()
		}
	} else {
		sr.Bytes += img.size() - img.blobs[0].desc.Size
	}
}

// recordWarmup counts one pull of the warm-up.
func (s *soakRun) recordWarmup(img *multiImage, err error) {
	sr := s.sr
	s.mu.Lock()
	defer s.mu.Unlock()
	sr.WarmupPulls++
	if err != nil {
		sr.WarmupFailures++
		if sr.FirstError == "" {
			sr.FirstError = "warm-up pull of " + img.repo + ": " + err.Error()
		}
	}
}

// settled samples gatehouse five times, 200 ms apart, and keeps the
// smallest of each figure: what remains once the requests just finished
// have wound down (a leak stays; a connection closing does not count).
func settled(ctx context.Context, s *server) (procSample, error) {
	var out procSample
	for i := range 5 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return out, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		v, err := sample(ctx, s)
		if err != nil {
			return out, err
		}
		if i == 0 {
			out = v
			continue
		}
		out.Goroutines, out.FDs, out.RSS = min(out.Goroutines, v.Goroutines), min(out.FDs, v.FDs), min(out.RSS, v.RSS)
	}
	return out, nil
}

// sample reads go_goroutines and process_open_fds from gatehouse's
// /metrics and VmRSS from /proc.
func sample(ctx context.Context, s *server) (procSample, error) {
	var out procSample
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/metrics", nil)
	if err != nil {
		return out, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	want := map[string]*int64{"go_goroutines": &out.Goroutines, "process_open_fds": &out.FDs}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if p := want[name]; ok && p != nil {
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				return out, fmt.Errorf("/metrics %s: %w", name, err)
			}
			*p = int64(f)
			delete(want, name)
		}
	}
	if err := sc.Err(); err != nil {
		return out, err
	}
	if len(want) > 0 {
		return out, errors.New("/metrics lacks go_goroutines or process_open_fds")
	}
	out.RSS, err = procStatusKB(s.proc.pid(), "VmRSS:")
	return out, err
}
