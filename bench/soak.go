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
	FirstError string
	Bytes      int64 // blob bytes the clients read in the measured phase

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

func (b *bench) soak(ctx context.Context) error {
	if b.opts.gatehouse == "" || b.opts.soakDuration <= 0 {
		return nil
	}
	sr := &soakResult{Clients: b.opts.soakClients, Images: b.opts.soakImages, Cached: max(1, b.opts.soakImages/cachedShare)}
	b.res.Soak = sr

	b.logf("soak: pushing %d images of %d × %s", sr.Images, soakLayers, fmtBytes(soakLayerSize))
	rng := rand.New(rand.NewPCG(7, 7))
	imgs := make([]*multiImage, sr.Images)
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
			return err
		}
		if err := img.push(ctx, b.upstream.base); err != nil {
			return fmt.Errorf("push %s: %w", img.repo, err)
		}
		imgs[i] = img
	}

	dir, err := b.newDir("gatehouse-soak")
	if err != nil {
		return err
	}
	gh, err := startGatehouse(ctx, b.opts.gatehouse, dir, hostPort(b.upstream.base))
	if err != nil {
		return err
	}
	b.track(gh)
	defer b.retire(gh)
	for _, img := range imgs[:sr.Cached] {
		if _, err := pull(ctx, gh.base, img); err != nil {
			return fmt.Errorf("caching %s: %w", img.repo, err)
		}
	}

	// The load: clients pull until their phase ends.
	var (
		next atomic.Int64 // index of the next cold image
		mu   sync.Mutex
	)
	next.Store(int64(sr.Cached))
	// The cold images are released one by one, evenly over the whole run,
	// so that cold pulls go on until the end.
	begin, every := time.Now(), b.opts.soakDuration/time.Duration(sr.Images-sr.Cached+1)
	coldDue := func(i int64) time.Time { return begin.Add(time.Duration(i-int64(sr.Cached)+1) * every) }
	load := func(ctx context.Context, d time.Duration, measured bool) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		var wg sync.WaitGroup
		for c := range sr.Clients {
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			wg.Go(func() {
				for ctx.Err() == nil {
					img, cold := imgs[rng.IntN(sr.Cached)], false
					if i := next.Load(); i < int64(len(imgs)) && time.Now().After(coldDue(i)) && next.CompareAndSwap(i, i+1) {
						img, cold = imgs[i], true
					}
					// A pull under way when the phase ends runs to its end:
					// only the start is bounded by the phase.
					_, err := pull(context.WithoutCancel(ctx), gh.base, img)
					if !measured {
						if err != nil {
							b.fail(sSoak, tGatehouse, fmt.Errorf("warm-up pull of %s: %w", img.repo, err))
						}
						continue
					}
					mu.Lock()
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
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}

	warmup := b.opts.soakDuration / 5
	b.logf("soak: %d clients, warm-up %v", sr.Clients, warmup)
	load(ctx, warmup, false)
	if sr.Warm, err = settled(ctx, gh); err != nil {
		return err
	}
	sr.Peak = sr.Warm
	b.logf("soak: measuring %v (settled after warm-up: %+v)", b.opts.soakDuration-warmup, sr.Warm)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if s, err := sample(ctx, gh); err == nil {
					sr.Peak.max(s)
				}
			}
		}
	}()
	start := time.Now()
	load(ctx, b.opts.soakDuration-warmup, true)
	sr.Duration = time.Since(start)
	close(stop)
	<-sampled
	if sr.End, err = settled(ctx, gh); err != nil {
		return err
	}
	sr.Peak.max(sr.End)
	b.logf("soak: %d pulls (%d cold), %d failed; settled at the end: %+v; peak %+v", sr.Pulls, sr.ColdPulls, sr.Failures, sr.End, sr.Peak)
	return ctx.Err()
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
