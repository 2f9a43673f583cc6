package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// Scenario 6: time to first verdict. Gatehouse runs with the gate on and
// a test vulnerability DB (scantest.V1) imported before it starts; image A
// is the scantest CleanAlpine base layer plus opts.verdictLayers layers of
// random files (opts.verdictLayerSize each), image B the same base and all
// but the last of A's layers plus one new layer.

const (
	sVerdict = "verdict"

	mediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"

	// pullConcurrency is how many blobs a client pulls at once (containerd's
	// default max_concurrent_downloads).
	pullConcurrency = 3

	gateOn = `gate:
  db: {updateInterval: 0s}
  maxWait: 5m
  policy:
    rules:
      - {name: bench, mode: enforce, block: [CRITICAL]}
`
)

// verdictResult holds the figures of scenario 6.
type verdictResult struct {
	LayerSize          int64 // size of each random layer
	ALayers, BLayers   int   // layers of A and B (base included)
	ASize, BSize, BNew int64 // bytes of all blobs of A, of B, of B's new layer
	ADigest, BDigest   string

	Direct time.Duration          // plain pull of A from the upstream
	Runs   map[string]*verdictRun // gatehouse target -> its figures
}

// verdictRun holds the figures of one gatehouse binary in scenario 6.
type verdictRun struct {
	GateOff    time.Duration // cold pull of A through gatehouse, gate off
	GateOffUp  counts
	FirstA     time.Duration // manifest GET of A until its 200, gate on, cold
	FirstAUp   counts
	CachedPull time.Duration // then the pull of A (manifest + blobs), cached
	FirstB     time.Duration // manifest GET of B after A
	FirstBUp   counts
	ScanA      time.Duration // the scan's own duration (log line "image scanned")
	ScanB      time.Duration
	VerdictA   string // from GET /api/v1/images: admitted, denied
	VerdictB   string
	DBVersion  string
}

// blobFile is one blob of a verdict image, on disk or in memory.
type blobFile struct {
	desc descriptor
	path string
	data []byte
}

func (f blobFile) open() (io.ReadCloser, error) {
	if f.path != "" {
		return os.Open(f.path)
	}
	return io.NopCloser(bytes.NewReader(f.data)), nil
}

// multiImage is a multi-layer OCI image.
type multiImage struct {
	repo, tag string
	blobs     []blobFile // config first, then the layers
	manifest  []byte
	digest    string
}

func newMultiImage(repo, tag string, layers []blobFile, diffIDs []string) (*multiImage, error) {
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Cmd": []string{"/bin/sh"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return nil, err
	}
	descs := make([]descriptor, len(layers))
	for i, l := range layers {
		descs[i] = l.desc
	}
	cfg := blobFile{desc: descriptor{MediaType: mediaTypeConfig, Digest: digestOf(config), Size: int64(len(config))}, data: config}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        cfg.desc,
		"layers":        descs,
	})
	if err != nil {
		return nil, err
	}
	return &multiImage{repo: repo, tag: tag, blobs: append([]blobFile{cfg}, layers...), manifest: manifest, digest: digestOf(manifest)}, nil
}

func (img *multiImage) size() int64 {
	var n int64
	for _, b := range img.blobs {
		n += b.desc.Size
	}
	return n
}

func (img *multiImage) manifestURL(base string) string {
	return base + "/v2/" + img.repo + "/manifests/" + img.tag
}

// push uploads every blob, then the manifest under its tag.
func (img *multiImage) push(ctx context.Context, base string) error {
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for _, b := range img.blobs {
		if err := pushBlob(ctx, client, base, img.repo, b.desc, b.open); err != nil {
			return err
		}
	}
	_, err := putManifest(ctx, client, img.manifestURL(base), img.manifest)
	return err
}

// getManifest GETs the manifest by tag, as a client resolving it does,
// and returns the time until the whole 200 response was read.
func getManifest(ctx context.Context, base string, img *multiImage) (time.Duration, error) {
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Minute}
	defer client.CloseIdleConnections()
	start := time.Now()
	err := oneRequest(ctx, client, http.MethodGet, img.manifestURL(base), make([]byte, 32<<10))
	return time.Since(start), err
}

// pull does what a client pulling img does: GET the manifest by tag, then
// every blob (config and layers), pullConcurrency at a time, each checked
// for length and sha256 (as a client does). It returns the wall time.
func pull(ctx context.Context, base string, img *multiImage) (time.Duration, error) {
	client := newBlobClient()
	defer client.CloseIdleConnections()
	start := time.Now()
	if err := oneRequest(ctx, client, http.MethodGet, img.manifestURL(base), make([]byte, 32<<10)); err != nil {
		return 0, err
	}
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, pullConcurrency)
		errs = make([]error, len(img.blobs))
	)
	for i, b := range img.blobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, errs[i] = fetch(ctx, client, base+"/v2/"+img.repo+"/blobs/"+b.desc.Digest, b.desc.Size, b.desc.Digest)
		}()
	}
	wg.Wait()
	d := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return d, nil
}

// verdicts reads GET /api/v1/images: digest -> verdict, and a DB version.
func verdicts(ctx context.Context, base string) (map[string]string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/images", nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("GET /api/v1/images: %s: %s", resp.Status, snippet(resp.Body))
	}
	var list struct {
		Images []struct {
			Digest    string `json:"digest"`
			Verdict   string `json:"verdict"`
			DBVersion string `json:"dbVersion"`
		} `json:"images"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("GET /api/v1/images: %w", err)
	}
	out, db := map[string]string{}, ""
	for _, im := range list.Images {
		out[im.Digest] = im.Verdict
		if im.DBVersion != "" {
			db = im.DBVersion
		}
	}
	return out, db, nil
}

// verdictImages are the images of scenario 6 and the test DB.
type verdictImages struct {
	a, b    *multiImage
	archive []byte // scantest.V1, a db.tar.gz
}

// verdict runs scenario 6 (only with a gatehouse binary): it writes and
// pushes the images, pulls A straight from the upstream, then runs the
// gatehouse steps for each gatehouse binary in turn.
func (b *bench) verdict(ctx context.Context) error {
	gs := b.gatehouses()
	if len(gs) == 0 || b.opts.verdictLayers < 1 {
		return nil
	}
	vr := &verdictResult{LayerSize: b.opts.verdictLayerSize, Runs: map[string]*verdictRun{}}
	imgs, err := b.verdictImages(ctx, vr)
	if err != nil {
		return err
	}

	// (c) A plain pull straight from the upstream.
	settleDisk()
	if vr.Direct, err = pull(ctx, b.upstream.base, imgs.a); err != nil {
		return fmt.Errorf("pull from the upstream: %w", err)
	}
	b.logf("verdict: plain pull of A (%s) from the upstream %s", fmtBytes(vr.ASize), fmtDur(vr.Direct))

	for _, k := range gs {
		run := &verdictRun{}
		vr.Runs[k.name] = run
		err := b.verdictGateOff(ctx, k, imgs, run)
		if err == nil {
			err = b.verdictGateOn(ctx, k, imgs, run)
		}
		if err != nil {
			if err := b.miss(ctx, sVerdict, k.name, err); err != nil {
				return err
			}
		}
	}
	return nil
}

// verdictImages writes the layers of images A and B, records their shape
// in vr (which becomes the run's Verdict) and pushes them to the upstream.
func (b *bench) verdictImages(ctx context.Context, vr *verdictResult) (*verdictImages, error) {
	n, size := b.opts.verdictLayers, b.opts.verdictLayerSize
	www, err := b.newDir("verdict-layers")
	if err != nil {
		return nil, err
	}
	baseBlob, baseDiff, err := alpineBase()
	if err != nil {
		return nil, err
	}
	b.logf("verdict: writing %d+1 layers of %s of random bytes", n, fmtBytes(size))
	var random []blobFile
	for i := range n + 1 {
		path := filepath.Join(www, fmt.Sprintf("layer-%d.tar", i))
		d, err := writeLayer(path, size)
		if err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
		random = append(random, blobFile{desc: d, path: path})
	}
	diffs := func(ls []blobFile) []string {
		out := []string{baseDiff}
		for _, l := range ls {
			out = append(out, l.desc.Digest) // uncompressed: digest = diff ID
		}
		return out
	}
	aLayers := append([]blobFile{baseBlob}, random[:n]...)
	bRandom := append(append([]blobFile{}, random[:n-1]...), random[n])
	bLayers := append([]blobFile{baseBlob}, bRandom...)
	imgs := &verdictImages{}
	if imgs.a, err = newMultiImage("bench/verdict-a", "v1", aLayers, diffs(random[:n])); err != nil {
		return nil, err
	}
	if imgs.b, err = newMultiImage("bench/verdict-b", "v1", bLayers, diffs(bRandom)); err != nil {
		return nil, err
	}
	vr.ALayers, vr.BLayers = len(aLayers), len(bLayers)
	vr.ASize, vr.BSize, vr.BNew = imgs.a.size(), imgs.b.size(), random[n].desc.Size
	vr.ADigest, vr.BDigest = imgs.a.digest, imgs.b.digest
	b.res.Verdict = vr
	for _, img := range []*multiImage{imgs.a, imgs.b} {
		if err := img.push(ctx, b.upstream.base); err != nil {
			return nil, fmt.Errorf("push %s to the upstream: %w", img.repo, err)
		}
	}
	if imgs.archive, err = scantest.V1().ArchiveBytes(); err != nil {
		return nil, fmt.Errorf("test vulnerability DB: %w", err)
	}
	return imgs, nil
}

// alpineBase is the scantest CleanAlpine layer as a blob, and its diff ID.
func alpineBase() (blobFile, string, error) {
	base := scantest.CleanAlpineLayer()
	rc, err := base.Compressed()
	if err != nil {
		return blobFile{}, "", err
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return blobFile{}, "", err
	}
	diff, err := base.DiffID()
	if err != nil {
		return blobFile{}, "", err
	}
	desc := descriptor{MediaType: mediaTypeLayerGzip, Digest: digestOf(data), Size: int64(len(data))}
	return blobFile{desc: desc, data: data}, diff.String(), nil
}

// verdictGateOff is step (c) for gatehouse k: a cold pull of A through a
// fresh gatehouse with the gate off, through the counting hop.
func (b *bench) verdictGateOff(ctx context.Context, k proxyKind, imgs *verdictImages, run *verdictRun) error {
	dir, err := b.newDir(k.name + "-gate-off")
	if err != nil {
		return err
	}
	s, err := startGatehouseGate(ctx, k.bin, dir, hostPort(b.counter.base), "warn", gateOff, nil)
	if err != nil {
		return err
	}
	b.track(s)
	b.counter.reset()
	settleDisk()
	run.GateOff, err = pull(ctx, s.base, imgs.a)
	if err == nil {
		err = b.counter.settle(ctx)
	}
	run.GateOffUp = b.counter.snapshot()
	b.retire(s)
	if err != nil {
		return fmt.Errorf("cold pull through %s, gate off: %w", k.name, err)
	}
	b.logf("verdict: cold pull of A through %s (gate off) %s", k.name, fmtDur(run.GateOff))
	return nil
}

// verdictGateOn is steps (a), (b), (d) for gatehouse k: gate on, a fresh
// data directory with the test DB; the first verdict for A, a pull of A,
// the first verdict for B, then the verdicts and the scans' durations.
func (b *bench) verdictGateOn(ctx context.Context, k proxyKind, imgs *verdictImages, run *verdictRun) error {
	dir, err := b.newDir(k.name + "-gate-on")
	if err != nil {
		return err
	}
	s, err := startGatehouseGate(ctx, k.bin, dir, hostPort(b.counter.base), "info", gateOn, imgs.archive)
	if err != nil {
		return err
	}
	b.track(s)
	defer b.retire(s)
	settleDisk()
	if run.FirstA, run.FirstAUp, err = b.firstVerdict(ctx, s, imgs.a); err != nil {
		return fmt.Errorf("first verdict for A: %w", err)
	}
	b.logf("verdict: %s: first verdict for A %s (upstream served %s)", k.name, fmtDur(run.FirstA), fmtBytes(run.FirstAUp.BlobBytes))
	if run.CachedPull, err = pull(ctx, s.base, imgs.a); err != nil {
		return fmt.Errorf("pull of A after its verdict: %w", err)
	}
	b.logf("verdict: %s: pull of A after its verdict %s", k.name, fmtDur(run.CachedPull))
	if run.FirstB, run.FirstBUp, err = b.firstVerdict(ctx, s, imgs.b); err != nil {
		return fmt.Errorf("first verdict for B: %w", err)
	}
	b.logf("verdict: %s: first verdict for B %s (upstream served %s)", k.name, fmtDur(run.FirstB), fmtBytes(run.FirstBUp.BlobBytes))
	v, db, err := verdicts(ctx, s.base)
	if err != nil {
		return err
	}
	run.VerdictA, run.VerdictB, run.DBVersion = v[imgs.a.digest], v[imgs.b.digest], db
	scans := scanDurations(s.logPath)
	run.ScanA, run.ScanB = scans[imgs.a.digest], scans[imgs.b.digest]
	return nil
}

// firstVerdict times the manifest GET of img through s until its 200 and
// counts what the upstream served for it.
func (b *bench) firstVerdict(ctx context.Context, s *server, img *multiImage) (time.Duration, counts, error) {
	b.counter.reset()
	d, err := getManifest(ctx, s.base, img)
	if err == nil {
		err = b.counter.settle(ctx)
	}
	return d, b.counter.snapshot(), err
}

// scanDurations reads gatehouse's JSON log for its "image scanned" lines:
// manifest digest -> duration of the scan.
func scanDurations(logPath string) map[string]time.Duration {
	out := map[string]time.Duration{}
	data, err := os.ReadFile(logPath)
	if err != nil {
		return out
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var rec struct {
			Msg      string `json:"msg"`
			Digest   string `json:"digest"`
			Duration int64  `json:"duration"` // slog's JSON handler: nanoseconds
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "image scanned" {
			out[rec.Digest] = time.Duration(rec.Duration)
		}
	}
	return out
}
