package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// fanout runs scenarios 4 and 5: opts.clients concurrent GETs of the blob
// against a freshly started proxy (empty store, fresh process so that its
// VmHWM belongs to this run) in front of the counting proxy; as a
// reference, the same clients straight against the upstream, through the
// same counting hop.
func (b *bench) fanout(ctx context.Context) error {
	if err := b.fanoutOne(ctx, tUpstream, b.counter.base+b.img.blobPath(), nil); err != nil {
		return fmt.Errorf("direct clients through the counting proxy: %w", err)
	}
	for _, k := range b.kinds {
		s, err := b.startProxy(ctx, k, b.counter.base)
		if err != nil {
			return err
		}
		err = b.resolve(ctx, s.base)
		if err == nil {
			err = b.fanoutOne(ctx, k.name, s.base+b.img.blobPath(), s)
		}
		b.retire(s)
		if err != nil {
			if err := b.miss(ctx, sFanout, k.name, err); err != nil {
				return err
			}
		}
	}
	return nil
}

// fanoutOne runs the concurrent clients against url, served by s (nil for
// the upstream), and records the outcome under name.
func (b *bench) fanoutOne(ctx context.Context, name, url string, s *server) error {
	b.counter.reset()
	fo := fanout{Clients: b.opts.clients, PerClient: make([]time.Duration, b.opts.clients)}
	if err := b.settleCold(); err != nil {
		return err
	}
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
	clientsErr := b.fanoutClients(ctx, url, &fo)
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
	if clientsErr != nil {
		return clientsErr
	}
	b.res.Fanout[name] = fo
	b.logf("%d clients: %s %s wall, upstream served %s in %d blob GETs, peak RSS %s",
		fo.Clients, name, fo.Wall.Round(time.Millisecond), fmtBytes(fo.Upstream.BlobBytes), fo.Upstream.BlobGets, fmtBytes(fo.PeakRSS))
	return nil
}

// fanoutClients GETs url from fo.Clients clients at once and records each
// client's time and the wall time in fo.
func (b *bench) fanoutClients(ctx context.Context, url string, fo *fanout) error {
	errs := make([]error, fo.Clients)
	client := newBlobClient()
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range fo.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fo.PerClient[i], errs[i] = fetch(ctx, client, url, b.img.layer.Size, b.verifyDigest())
		}()
	}
	wg.Wait()
	fo.Wall = time.Since(start)
	return errors.Join(errs...)
}
