package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// endpoint is a target as a client sees it: its name and a URL.
type endpoint struct{ name, url string }

// manifestMode is one kind of manifest request of scenario 2.
type manifestMode struct{ name, method, ref string }

// coldAndWarm runs scenarios 3 (cold blob), 1 (warm blob) and 2 (warm
// manifests). The proxies read straight from the upstream (no counting hop
// in between). Each cold GET goes to a freshly started proxy with an empty
// store; the proxies of the last cold round then serve the warm scenarios.
// Targets take turns within each round, so that noise from other work on
// the machine spreads over all of them.
func (b *bench) coldAndWarm(ctx context.Context) error {
	warm := map[string]*server{} // proxy kind -> its proxy of the last cold round
	for r := range b.opts.coldRuns {
		if err := b.coldRound(ctx, r, warm); err != nil {
			return err
		}
	}
	for _, k := range b.gatehouses() {
		pp, err := b.profileCold(ctx, k)
		if err != nil {
			// Not a failure of gatehouse's: perf may be missing or not
			// allowed (a container without CAP_PERFMON).
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.res.PartsErr[k.name] = err.Error()
			b.logf("%s: %s: %v", sProfile, k.name, err)
			continue
		}
		b.res.Parts[k.name] = pp
		b.logf("profiled a cold GET of %s: %d samples", k.name, pp.Total)
	}
	if err := b.awaitStored(ctx, warm); err != nil {
		return err
	}
	if err := b.warmBlob(ctx, warm); err != nil {
		return err
	}
	if err := b.warmManifests(ctx, warm); err != nil {
		return err
	}
	for _, s := range warm {
		b.retire(s)
	}
	return nil
}

// verifyDigest is the digest every timed GET checks: none unless -verify.
func (b *bench) verifyDigest() string {
	if b.opts.verify {
		return b.img.layer.Digest
	}
	return ""
}

// miss records err as why name has no figure in scenario, unless ctx is
// done: then it returns ctx.Err() and the run ends.
func (b *bench) miss(ctx context.Context, scenario, name string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.fail(scenario, name, err)
	return nil
}

// coldRound is round r of scenario 3: the write and hash probes, then
// with each client in turn (the order rotating from round to round) a
// direct GET from the upstream, one through the nginx relay, and one
// through a fresh proxy of each kind, which then stays in warm; the
// targets' order rotates too.
func (b *bench) coldRound(ctx context.Context, r int, warm map[string]*server) error {
	if err := b.coldProbes(r); err != nil {
		return err
	}
	targets := []string{tUpstream, tRelay}
	for _, k := range b.kinds {
		targets = append(targets, k.name)
	}
	for ci, c := range rotate(b.opts.blobClients, r) {
		for _, t := range rotate(targets, r+ci) {
			var err error
			switch t {
			case tUpstream:
				err = b.coldDirect(ctx, r, c, t, b.upstream, "upstream (direct)")
			case tRelay:
				err = b.coldDirect(ctx, r, c, t, b.nginx, "nginx relay")
			default:
				err = b.coldProxy(ctx, r, c, b.kind(t), warm)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// kind returns the proxy kind called name.
func (b *bench) kind(name string) proxyKind {
	for _, k := range b.kinds {
		if k.name == name {
			return k
		}
	}
	panic("bench: no proxy kind " + name)
}

// coldDirect is a cold GET by client c from the upstream or through the
// relay; either must work.
func (b *bench) coldDirect(ctx context.Context, r int, c, t string, s *server, what string) error {
	run, cpu, err := b.coldGet(ctx, c, s)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if t == tUpstream && c == cBench {
		b.res.ClientCPU = append(b.res.ClientCPU, run.cpu)
	}
	b.recordCold(r, c, t, what, run, cpu)
	return nil
}

// coldProbes times, for round r, what every verifying cache does for a
// cold blob besides relaying it: writing a fresh file of the blob's size
// (a caching proxy writes what it fetches; how fast this machine takes
// such a file into the page cache bounds any proxy that serves from the
// file it writes) and hashing it.
func (b *bench) coldProbes(r int) error {
	if err := b.settleCold(); err != nil {
		return err
	}
	w, wcpu, err := b.writeProbe()
	if err != nil {
		return fmt.Errorf("write probe: %w", err)
	}
	b.res.Write = append(b.res.Write, w)
	b.res.WriteCPU = append(b.res.WriteCPU, wcpu)
	b.res.HashCPU = append(b.res.HashCPU, hashProbe(b.img.layer.Size))
	b.logf("cold %d/%d: writing a fresh file %s", r+1, b.opts.coldRuns, fmtRate(b.img.layer.Size, w))
	return nil
}

// coldGet GETs the blob from s with client c after settleCold and returns
// the client's run and the CPU time s used meanwhile.
func (b *bench) coldGet(ctx context.Context, c string, s *server) (run clientRun, cpu time.Duration, err error) {
	if err := b.settleCold(); err != nil {
		return clientRun{}, 0, err
	}
	cpu0 := s.cpuTime()
	run, err = b.runClient(ctx, c, s.base+b.img.blobPath())
	return run, s.cpuTime() - cpu0, err
}

// recordCold keeps one cold GET by client c of target name and logs it.
// The bench client's figures are also those of the summary's older rows,
// the CPU budget and the before/after comparison.
func (b *bench) recordCold(r int, c, name, what string, run clientRun, cpu time.Duration) {
	f := b.res.client(c)
	f.Cold[name] = append(f.Cold[name], run.wall)
	f.ColdCPU[name] = append(f.ColdCPU[name], run.cpu)
	f.ColdSrv[name] = append(f.ColdSrv[name], cpu)
	if c == cBench {
		b.res.Cold[name] = append(b.res.Cold[name], run.wall)
		b.res.ColdCPU[name] = append(b.res.ColdCPU[name], cpu)
	}
	b.logf("cold %d/%d: %s: %s %s (client CPU %s, server CPU %s)", r+1, b.opts.coldRuns, c, what,
		fmtRate(b.img.layer.Size, run.wall), fmtDur(run.cpu), fmtDur(cpu))
}

// coldProxy replaces warm's proxy of kind k by a fresh one and times a
// cold GET by client c through it, after the untimed manifest resolution.
func (b *bench) coldProxy(ctx context.Context, r int, c string, k proxyKind, warm map[string]*server) error {
	if _, failed := b.res.Failures[sCold+"/"+k.name]; failed {
		return nil
	}
	b.retire(warm[k.name])
	delete(warm, k.name)
	s, err := b.startProxy(ctx, k, b.upstream.base)
	if err != nil {
		return err
	}
	warm[k.name] = s
	var run clientRun
	var cpu time.Duration
	if err = b.resolve(ctx, s.base); err == nil {
		run, cpu, err = b.coldGet(ctx, c, s)
	}
	if err != nil {
		return b.miss(ctx, sCold, k.name, err)
	}
	b.recordCold(r, c, k.name, k.name, run, cpu)
	return nil
}

// awaitStored waits until every proxy in warm has the blob in its store.
// The distribution proxy goes on writing the blob to its store after the
// client has its last byte (and until then serves further GETs from the
// upstream again).
func (b *bench) awaitStored(ctx context.Context, warm map[string]*server) error {
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil && k.stored != nil {
			if err := k.stored(ctx, s, b.img.layer); err != nil {
				if err := b.miss(ctx, sWarm, k.name, err); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// warmBlob runs scenario 1: nginx's file, every warm proxy and the
// upstream, opts.warmRuns rounds, each round starting with the next
// target.
func (b *bench) warmBlob(ctx context.Context, warm map[string]*server) error {
	targets := []endpoint{{tNginx, b.nginx.fileBase + b.img.blobPath()}}
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil {
			targets = append(targets, endpoint{k.name, s.base + b.img.blobPath()})
		}
	}
	targets = append(targets, endpoint{tUpstream, b.upstream.base + b.img.blobPath()})
	live, err := b.checkWarm(ctx, targets)
	if err != nil {
		return err
	}
	size := b.img.layer.Size
	for r := range b.opts.warmRuns {
		// Each round starts with the next client, and each client with the
		// next target, so that no target always runs first (or right
		// after the same neighbour).
		for ci, c := range rotate(b.opts.blobClients, r) {
			for _, t := range rotate(targets, r+ci) {
				if !live[t.name] {
					continue
				}
				run, err := b.runClient(ctx, c, t.url)
				if err != nil {
					live[t.name] = false
					if err := b.miss(ctx, sWarm, t.name, err); err != nil {
						return err
					}
					continue
				}
				f := b.res.client(c)
				f.Warm[t.name] = append(f.Warm[t.name], run.wall)
				f.WarmCPU[t.name] = append(f.WarmCPU[t.name], run.cpu)
				if c == cBench {
					b.res.Warm[t.name] = append(b.res.Warm[t.name], run.wall)
				}
				b.logf("warm %d/%d: %s: %s %s (client CPU %s)", r+1, b.opts.warmRuns, c, t.name, fmtRate(size, run.wall), fmtDur(run.cpu))
			}
		}
	}
	b.client.CloseIdleConnections()
	return nil
}

// checkWarm makes one untimed GET per target, with the digest checked, to
// make sure that the content is cached and right; it returns the targets
// that passed. nginx and the upstream must.
func (b *bench) checkWarm(ctx context.Context, targets []endpoint) (map[string]bool, error) {
	live := map[string]bool{}
	for _, t := range targets {
		if _, err := fetch(ctx, b.client, t.url, b.img.layer.Size, b.img.layer.Digest); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if t.name == tNginx || t.name == tUpstream {
				return nil, err
			}
			b.fail(sWarm, t.name, err)
			continue
		}
		live[t.name] = true
	}
	return live, nil
}

// warmManifests runs scenario 2: warm manifests, by digest (GET, as a
// client fetches a manifest it has resolved) and by tag (HEAD, as
// containerd resolves a tag).
func (b *bench) warmManifests(ctx context.Context, warm map[string]*server) error {
	var targets []endpoint
	for _, k := range b.kinds {
		if s := warm[k.name]; s != nil {
			targets = append(targets, endpoint{k.name, s.base})
		}
	}
	targets = append(targets, endpoint{tUpstream, b.upstream.base})
	modes := []manifestMode{{"digest", http.MethodGet, b.img.digest}, {"tag", http.MethodHead, b.img.tag}}
	if err := b.primeManifests(ctx, targets, modes); err != nil {
		return err
	}
	for r := range b.opts.loadRounds {
		for _, m := range modes {
			for _, t := range targets {
				if err := b.manifestLoad(ctx, r, t, m); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// primeManifests puts the manifest and the tag into each proxy's cache:
// one GET and one request of each mode's method, per target and mode.
func (b *bench) primeManifests(ctx context.Context, targets []endpoint, modes []manifestMode) error {
	buf := make([]byte, 32<<10)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	for _, t := range targets {
		for _, m := range modes {
			url := t.url + b.img.manifestPath(m.ref)
			for _, method := range []string{http.MethodGet, m.method} {
				if err := oneRequest(ctx, client, method, url, buf); err != nil {
					if err := b.miss(ctx, sManifest, t.name+"/"+m.name, err); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// manifestLoad is round r of the manifest load of target t in mode m.
func (b *bench) manifestLoad(ctx context.Context, r int, t endpoint, m manifestMode) error {
	key := t.name + "/" + m.name
	if _, failed := b.res.Failures[sManifest+"/"+key]; failed {
		return nil
	}
	lr, err := load(ctx, m.method, t.url+b.img.manifestPath(m.ref), b.opts.concurrency, b.opts.duration)
	if err != nil {
		return b.miss(ctx, sManifest, key, err)
	}
	b.res.Manifest[key] = append(b.res.Manifest[key], lr)
	b.logf("manifest by %s %d/%d: %s %.0f req/s (%d errors)", m.name, r+1, b.opts.loadRounds, t.name, lr.PerSecond(), lr.Errors)
	return nil
}
