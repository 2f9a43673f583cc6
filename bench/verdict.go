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

	Direct     time.Duration // plain pull of A from the upstream
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

// verdict runs scenario 6 (only with a gatehouse binary).
func (b *bench) verdict(ctx context.Context) error {
	if b.opts.gatehouse == "" || b.opts.verdictLayers < 1 {
		return nil
	}
	n, size := b.opts.verdictLayers, b.opts.verdictLayerSize
	vr := &verdictResult{LayerSize: size}

	// The images.
	www, err := b.newDir("verdict-layers")
	if err != nil {
		return err
	}
	base := scantest.CleanAlpineLayer()
	rc, err := base.Compressed()
	if err != nil {
		return err
	}
	baseBytes, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return err
	}
	baseDiff, err := base.DiffID()
	if err != nil {
		return err
	}
	baseBlob := blobFile{desc: descriptor{MediaType: mediaTypeLayerGzip, Digest: digestOf(baseBytes), Size: int64(len(baseBytes))}, data: baseBytes}
	b.logf("verdict: writing %d+1 layers of %s of random bytes", n, fmtBytes(size))
	var random []blobFile
	for i := range n + 1 {
		path := filepath.Join(www, fmt.Sprintf("layer-%d.tar", i))
		d, err := writeLayer(path, size)
		if err != nil {
			return fmt.Errorf("write layer: %w", err)
		}
		random = append(random, blobFile{desc: d, path: path})
	}
	diffs := func(ls []blobFile) []string {
		out := []string{baseDiff.String()}
		for _, l := range ls {
			out = append(out, l.desc.Digest) // uncompressed: digest = diff ID
		}
		return out
	}
	aLayers := append([]blobFile{baseBlob}, random[:n]...)
	bRandom := append(append([]blobFile{}, random[:n-1]...), random[n])
	bLayers := append([]blobFile{baseBlob}, bRandom...)
	imgA, err := newMultiImage("bench/verdict-a", "v1", aLayers, diffs(random[:n]))
	if err != nil {
		return err
	}
	imgB, err := newMultiImage("bench/verdict-b", "v1", bLayers, diffs(bRandom))
	if err != nil {
		return err
	}
	vr.ALayers, vr.BLayers = len(aLayers), len(bLayers)
	vr.ASize, vr.BSize, vr.BNew = imgA.size(), imgB.size(), random[n].desc.Size
	vr.ADigest, vr.BDigest = imgA.digest, imgB.digest
	b.res.Verdict = vr
	for _, img := range []*multiImage{imgA, imgB} {
		if err := img.push(ctx, b.upstream.base); err != nil {
			return fmt.Errorf("push %s to the upstream: %w", img.repo, err)
		}
	}
	archive, err := scantest.V1().ArchiveBytes()
	if err != nil {
		return fmt.Errorf("test vulnerability DB: %w", err)
	}

	// (c) A plain pull straight from the upstream.
	settleDisk()
	if vr.Direct, err = pull(ctx, b.upstream.base, imgA); err != nil {
		return fmt.Errorf("pull from the upstream: %w", err)
	}
	b.logf("verdict: plain pull of A (%s) from the upstream %s", fmtBytes(vr.ASize), fmtDur(vr.Direct))

	// (c) A cold pull through gatehouse with the gate off, through the
	// counting hop.
	dir, err := b.newDir("gatehouse-gate-off")
	if err != nil {
		return err
	}
	s, err := startGatehouseGate(ctx, b.opts.gatehouse, dir, hostPort(b.counter.base), "warn", gateOff, nil)
	if err != nil {
		return err
	}
	b.track(s)
	b.counter.reset()
	settleDisk()
	vr.GateOff, err = pull(ctx, s.base, imgA)
	if err == nil {
		err = b.counter.settle(ctx)
	}
	vr.GateOffUp = b.counter.snapshot()
	b.retire(s)
	if err != nil {
		return fmt.Errorf("cold pull through gatehouse, gate off: %w", err)
	}
	b.logf("verdict: cold pull of A through gatehouse (gate off) %s", fmtDur(vr.GateOff))

	// (a), (b), (d): gate on, fresh data directory with the test DB.
	if dir, err = b.newDir("gatehouse-gate-on"); err != nil {
		return err
	}
	if s, err = startGatehouseGate(ctx, b.opts.gatehouse, dir, hostPort(b.counter.base), "info", gateOn, archive); err != nil {
		return err
	}
	b.track(s)
	defer b.retire(s)
	b.counter.reset()
	settleDisk()
	if vr.FirstA, err = getManifest(ctx, s.base, imgA); err == nil {
		err = b.counter.settle(ctx)
	}
	vr.FirstAUp = b.counter.snapshot()
	if err != nil {
		return fmt.Errorf("first verdict for A: %w", err)
	}
	b.logf("verdict: first verdict for A %s (upstream served %s)", fmtDur(vr.FirstA), fmtBytes(vr.FirstAUp.BlobBytes))
	if vr.CachedPull, err = pull(ctx, s.base, imgA); err != nil {
		return fmt.Errorf("pull of A after its verdict: %w", err)
	}
	b.logf("verdict: pull of A after its verdict %s", fmtDur(vr.CachedPull))
	b.counter.reset()
	if vr.FirstB, err = getManifest(ctx, s.base, imgB); err == nil {
		err = b.counter.settle(ctx)
	}
	vr.FirstBUp = b.counter.snapshot()
	if err != nil {
		return fmt.Errorf("first verdict for B: %w", err)
	}
	b.logf("verdict: first verdict for B %s (upstream served %s)", fmtDur(vr.FirstB), fmtBytes(vr.FirstBUp.BlobBytes))
	v, db, err := verdicts(ctx, s.base)
	if err != nil {
		return err
	}
	vr.VerdictA, vr.VerdictB, vr.DBVersion = v[imgA.digest], v[imgB.digest], db
	scans := scanDurations(s.logPath)
	vr.ScanA, vr.ScanB = scans[imgA.digest], scans[imgB.digest]
	return nil
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
