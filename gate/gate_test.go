package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse/gatehouse/api"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
)

// fakeScanner stands in for Trivy in these unit tests of the gate's own
// logic; the scanner itself is tested with a real DB in gate/scan.
type fakeScanner struct {
	mu      sync.Mutex
	db      string
	vulns   map[string][]Vuln // by image name prefix (upstream/repo)
	scans   atomic.Int32
	rescans atomic.Int32
	running atomic.Int32  // scans under way
	most    atomic.Int32  // the most scans ever under way at once
	block   chan struct{} // when set, Scan waits for it
	err     error
}

func (f *fakeScanner) Scan(ctx context.Context, img v1.Image, name string) (*Report, error) {
	f.scans.Add(1)
	n := f.running.Add(1)
	defer f.running.Add(-1)
	for m := f.most.Load(); n > m && !f.most.CompareAndSwap(m, n); m = f.most.Load() {
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// Read every layer, as Trivy would, to exercise the BlobOpener path.
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	repo, _, _ := strings.Cut(name, "@")
	inv, _ := json.Marshal(repo)
	return f.detect(inv)
}

func (f *fakeScanner) detect(inv json.RawMessage) (*Report, error) {
	var repo string
	json.Unmarshal(inv, &repo)
	f.mu.Lock()
	defer f.mu.Unlock()
	return &Report{Inventory: inv, Vulns: f.vulns[repo], DBVersion: f.db}, nil
}

func (f *fakeScanner) Rescan(ctx context.Context, inv json.RawMessage) (*Report, error) {
	f.rescans.Add(1)
	return f.detect(inv)
}

func (f *fakeScanner) DBVersion() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.db
}

// memBlobs serves blobs of in-memory images and counts opens.
type memBlobs struct {
	mu    sync.Mutex
	blobs map[v1.Hash][]byte
	opens int
	// noSize: OpenBlob reports the size as unknown (-1), as for a fetch
	// whose upstream sent no Content-Length.
	noSize bool
}

func (m *memBlobs) add(img v1.Image) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cfg, _ := img.RawConfigFile()
	cd, _ := img.ConfigName()
	m.blobs[cd] = cfg
	ls, _ := img.Layers()
	for _, l := range ls {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		m.blobs[d] = b
	}
}

func (m *memBlobs) OpenBlob(ctx context.Context, up, repo string, d v1.Hash) (io.ReadCloser, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opens++
	b, ok := m.blobs[d]
	if !ok {
		return nil, 0, errors.New("blob unavailable upstream")
	}
	if m.noSize {
		return io.NopCloser(bytes.NewReader(b)), -1, nil
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

const policyYAML = `
upstreams: [{name: up.example}]
gate:
  maxWait: 2s
  policy:
    rules:
      - {name: audit, repositories: [audit/*], mode: audit, block: [CRITICAL]}
      - {name: off, repositories: [off/*], mode: off}
      - {name: strict, block: [CRITICAL, HIGH]}
`

type fixture struct {
	g       *Gate
	scanner *fakeScanner
	blobs   *memBlobs
	now     time.Time
	dir     string // the data directory, kept across open
	meta    storage.MetaStore
	sigs    SignatureVerifier
	atts    AttestationVerifier
	vex     VEXFilter
	log     *slog.Logger // default: discard
}

func newFixture(t testing.TB, yml string) *fixture { return newFixtureWith(t, yml, nil) }

func newGateErr(t *testing.T, yml string) (*Gate, error) {
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	meta := openMeta(t, t.TempDir())
	return New(Options{Config: &cfg.Gate, Meta: meta, Scanner: &fakeScanner{}, Log: slog.New(slog.DiscardHandler)})
}

// openMeta opens the records database in dir, closed when the test ends.
func openMeta(t testing.TB, dir string) *boltmeta.Store {
	t.Helper()
	meta, err := boltmeta.Open(filepath.Join(dir, "gate.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	return meta
}

func newFixtureWith(t testing.TB, yml string, sigs SignatureVerifier) *fixture {
	t.Helper()
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{
		scanner: &fakeScanner{db: "db-1", vulns: map[string][]Vuln{}},
		blobs:   &memBlobs{blobs: map[v1.Hash][]byte{}},
		now:     time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC),
		dir:     t.TempDir(),
		sigs:    sigs,
	}
	f.open(t, cfg)
	return f
}

// open starts a gate on the fixture's data directory, as gatehouse does
// when it starts (again): a gate closed before is restarted on a newly
// opened database.
func (f *fixture) open(t testing.TB, cfg *config.Config) {
	t.Helper()
	f.openOn(t, cfg, nil)
}

// openOn is open with the database wrapped (nil: as it is).
func (f *fixture) openOn(t testing.TB, cfg *config.Config, wrap func(storage.MetaStore) storage.MetaStore) {
	t.Helper()
	log := f.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if f.meta != nil {
		// The caller closed the gate; gatehouse closes its database after.
		f.meta.Close()
	}
	f.meta = openMeta(t, f.dir)
	meta := f.meta
	if wrap != nil {
		meta = wrap(meta)
	}
	g, err := New(Options{Config: &cfg.Gate, Meta: meta, Scanner: f.scanner, Blobs: f.blobs, Signatures: f.sigs,
		Attestations: f.atts, VEX: f.vex, Log: log, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.g = g
	t.Cleanup(func() { g.Close() })
}

// api is the JSON API over the fixture's gate.
func (f *fixture) api() http.Handler { return api.New(api.Options{Model: f.g, Config: f.g.cfg}) }

func (f *fixture) image(t testing.TB, repo string) Subject {
	t.Helper()
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	return f.subject(repo, img)
}

// subject makes img's blobs available and returns its manifest as a
// subject of repo:v1 at up.example.
func (f *fixture) subject(repo string, img v1.Image) Subject {
	f.blobs.add(img)
	raw, _ := img.RawManifest()
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	return Subject{Upstream: "up.example", Repo: repo, Tag: "v1", Digest: d, MediaType: mt, Manifest: raw}
}

var critical = Vuln{ID: "CVE-2026-1111", Severity: "CRITICAL", PkgName: "openssl", Installed: "3.0.1", Fixed: "3.0.9", Title: "bad"}

func TestVulnerableDeniedCleanAdmitted(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad, good := f.image(t, "team/bad"), f.image(t, "team/good")

	v, err := f.g.Check(context.Background(), bad)
	if err != nil {
		t.Fatal(err)
	}
	if v.Admitted || !strings.Contains(v.Message, "CVE-2026-1111") || !strings.Contains(v.Message, `rule "strict"`) ||
		!strings.Contains(v.Message, "openssl 3.0.1, fixed in 3.0.9") {
		t.Fatalf("vulnerable image: %+v", v)
	}
	v, err = f.g.Check(context.Background(), good)
	if err != nil || !v.Admitted || v.Reason != ReasonClean {
		t.Fatalf("clean image: %+v %v", v, err)
	}
	// Blobs: only those of the admitted image may be served.
	var m v1.Manifest
	json.Unmarshal(bad.Manifest, &m)
	if ok, _ := f.g.BlobAllowed(context.Background(), bad.Upstream, bad.Repo, m.Layers[0].Digest); ok {
		t.Fatal("layer of a denied image allowed")
	}
	json.Unmarshal(good.Manifest, &m)
	if ok, _ := f.g.BlobAllowed(context.Background(), good.Upstream, good.Repo, m.Layers[0].Digest); !ok {
		t.Fatal("layer of an admitted image refused")
	}
	// The verdict is stored: no second scan.
	f.g.Check(context.Background(), bad)
	if n := f.scanner.scans.Load(); n != 2 {
		t.Fatalf("%d scans for two images", n)
	}
	if d := f.g.Denials(); len(d) != 2 || d[0].Rule != "strict" {
		t.Fatalf("denials %+v", d)
	}
}

// Ten concurrent checks of one digest cost one scan. The scan is held
// until every caller is durably blocked (synctest.Wait): none can have
// found a stored verdict, as there is none yet, so each is either in the
// scan or waiting for it. How one would slip past: a caller that starts
// its own scan of a digest already being scanned (no single-flight, or a
// job keyed by something else than the verdict key) is then blocked in a
// second scan, counted here; a sleep before releasing the scan, instead,
// let latecomers hit the stored verdict and pass without sharing.
func TestConcurrentChecksShareOneScan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.block = make(chan struct{})
		s := f.image(t, "team/app")
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
					t.Errorf("%+v %v", v, err)
				}
			})
		}
		synctest.Wait() // every caller blocked: in the scan or waiting for it
		if n := f.scanner.scans.Load(); n != 1 {
			t.Errorf("%d scans under way for one digest with 10 callers waiting", n)
		}
		close(f.scanner.block)
		wg.Wait()
		if n := f.scanner.scans.Load(); n != 1 {
			t.Fatalf("%d scans for one digest", n)
		}
	})
}

func TestBoundedWaitThenRetryGetsVerdict(t *testing.T) {
	f := newFixture(t, strings.Replace(policyYAML, "maxWait: 2s", "maxWait: 50ms", 1))
	f.scanner.block = make(chan struct{})
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	s := f.image(t, "team/bad")
	_, err := f.g.Check(context.Background(), s)
	var p *Pending
	if !errors.As(err, &p) || p.RetryAfter <= 0 {
		t.Fatalf("want Pending, got %v", err)
	}
	close(f.scanner.block) // the scan went on in the background
	for i := 0; ; i++ {
		v, err := f.g.Check(context.Background(), s)
		if err == nil {
			if v.Admitted {
				t.Fatal("vulnerable image admitted on retry")
			}
			break
		}
		if !errors.As(err, &p) || i > 100 {
			t.Fatalf("retry: %v", err)
		}
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans", n)
	}
}

func TestFailClosed(t *testing.T) {
	t.Run("no DB", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.db = ""
		_, err := f.g.Check(context.Background(), f.image(t, "team/app"))
		var se *ScanError
		if !errors.As(err, &se) || !errors.Is(err, ErrNoDB) {
			t.Fatalf("want fail-closed ScanError(ErrNoDB), got %v", err)
		}
	})
	t.Run("scan error", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.err = errors.New("analysis exploded")
		s := f.image(t, "team/app")
		_, err := f.g.Check(context.Background(), s)
		if err == nil || !strings.Contains(err.Error(), "analysis exploded") {
			t.Fatalf("want error, got %v", err)
		}
		var m v1.Manifest
		json.Unmarshal(s.Manifest, &m)
		if ok, _ := f.g.BlobAllowed(context.Background(), s.Upstream, s.Repo, m.Layers[0].Digest); ok {
			t.Fatal("blob of an unscanned image allowed")
		}
	})
	t.Run("layer unavailable", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		s := f.image(t, "team/app")
		clear(f.blobs.blobs)
		if _, err := f.g.Check(context.Background(), s); err == nil {
			t.Fatal("image with an unfetchable layer was judged")
		}
	})
	t.Run("audit mode serves", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.err = errors.New("analysis exploded")
		v, err := f.g.Check(context.Background(), f.image(t, "audit/app"))
		if err != nil || !v.Admitted || v.Reason != ReasonScanError {
			t.Fatalf("%+v %v", v, err)
		}
	})
}

func TestAuditOffIndexArtifact(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/audit/app"] = []Vuln{critical}
	v, err := f.g.Check(context.Background(), f.image(t, "audit/app"))
	if err != nil || !v.Admitted || v.Reason != ReasonAudit {
		t.Fatalf("audit: %+v %v", v, err)
	}
	v, err = f.g.Check(context.Background(), f.image(t, "off/app"))
	if err != nil || !v.Admitted || v.Reason != ReasonOff {
		t.Fatalf("off: %+v %v", v, err)
	}
	idx := Subject{Upstream: "up.example", Repo: "team/app", MediaType: types.OCIImageIndex, Manifest: []byte(`{"schemaVersion":2,"manifests":[]}`)}
	if v, err := f.g.Check(context.Background(), idx); err != nil || !v.Admitted || v.Reason != ReasonIndex {
		t.Fatalf("index: %+v %v", v, err)
	}
	sig := Subject{Upstream: "up.example", Repo: "team/app", MediaType: types.OCIManifestSchema1, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)},
		Manifest: []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `","size":1},"layers":[]}`)}
	if v, err := f.g.Check(context.Background(), sig); err != nil || !v.Admitted || v.Reason != ReasonArtifact {
		t.Fatalf("signature: %+v %v", v, err)
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans; only the audit image needs one", n)
	}
}

func TestAllowlistExpiryReevaluates(t *testing.T) {
	f := newFixture(t, `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - {name: d, block: [CRITICAL], allowlist: [{id: CVE-2026-1111, reason: not reachable, expires: 2026-11-30}]}
`)
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	s := f.image(t, "team/app")
	if v, _ := f.g.Check(context.Background(), s); v == nil || !v.Admitted {
		t.Fatalf("allowlisted CVE denied: %+v", v)
	}
	f.now = time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC)
	if v, _ := f.g.Check(context.Background(), s); v == nil || v.Admitted {
		t.Fatalf("allowlist honoured after expiry: %+v", v)
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("expiry rescanned layers (%d scans); the stored report suffices", n)
	}
}

func TestReevaluateFlipsVerdictWithoutLayers(t *testing.T) {
	f := newFixture(t, policyYAML)
	s := f.image(t, "team/app")
	if v, _ := f.g.Check(context.Background(), s); v == nil || !v.Admitted {
		t.Fatal("clean image denied")
	}
	opens := f.blobs.opens
	// A new DB knows a new critical CVE in the image's packages.
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	f.scanner.mu.Unlock()
	res, err := f.g.Reevaluate(context.Background())
	if err != nil || res.Images != 1 || res.Flipped != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if f.blobs.opens != opens {
		t.Fatal("re-evaluation downloaded layers")
	}
	v, err := f.g.Check(context.Background(), s)
	if err != nil || v.Admitted || v.DBVersion != "db-2" {
		t.Fatalf("after re-evaluation: %+v %v", v, err)
	}
	if f.scanner.scans.Load() != 1 || f.scanner.rescans.Load() != 1 {
		t.Fatalf("scans %d rescans %d", f.scanner.scans.Load(), f.scanner.rescans.Load())
	}
	var m v1.Manifest
	json.Unmarshal(s.Manifest, &m)
	if ok, _ := f.g.BlobAllowed(context.Background(), s.Upstream, s.Repo, m.Layers[0].Digest); ok {
		t.Fatal("blobs of a now-denied image still allowed")
	}
}

func TestAPI(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	f.g.Check(context.Background(), bad)
	f.g.Check(context.Background(), f.image(t, "team/good"))
	srv := httptest.NewServer(f.api())
	defer srv.Close()

	var list struct {
		Total  int
		Images []records.ImageSummary
	}
	getJSON(t, srv.URL+"/api/v1/images", 200, &list)
	if list.Total != 2 {
		t.Fatalf("%+v", list)
	}
	getJSON(t, srv.URL+"/api/v1/images?verdict=denied", 200, &list)
	if list.Total != 1 || list.Images[0].Repo != "team/bad" || list.Images[0].Counts["CRITICAL"] != 1 ||
		list.Images[0].Rule != "strict" || list.Images[0].DBVersion != "db-1" || list.Images[0].Tags[0] != "v1" {
		t.Fatalf("%+v", list)
	}
	var d records.ImageDetail
	getJSON(t, srv.URL+"/api/v1/images/"+bad.Digest.String(), 200, &d)
	if len(d.Vulns) != 1 || d.Vulns[0].ID != critical.ID || d.Latest.Admitted || d.Latest.Decision.Blocking[0].Fixed != "3.0.9" {
		t.Fatalf("%+v", d)
	}
	getJSON(t, srv.URL+"/api/v1/images/sha256:"+strings.Repeat("0", 64), 404, nil)
	getJSON(t, srv.URL+"/api/v1/images/nope", 400, nil)
	getJSON(t, srv.URL+"/api/v1/images?limit=0", 400, nil)
}

func getJSON(t *testing.T, url string, status int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
}

// metricValue reads the counter or gauge of c whose labels include label
// (any series when label is "").
func metricValue(t *testing.T, c prometheus.Collector, label string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				match = match || lp.GetValue() == label
			}
			if match {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func TestScanLimitDeniesFailClosed(t *testing.T) {
	limitErr := fmt.Errorf("scan x: analyze error: %w", &LimitError{Limit: LimitLayerFiles, Layer: "sha256:" + strings.Repeat("c", 64), Max: 1000})
	want := "scan failed: layer sha256:" + strings.Repeat("c", 64) + " exceeds gate.scanLimits.maxLayerFiles (1000)"

	t.Run("enforce", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.err = limitErr
		before := metricValue(t, metrics.ScanLimitsExceeded, LimitLayerFiles)
		s := f.image(t, "team/bomb")
		v, err := f.g.Check(context.Background(), s)
		if err != nil || v.Admitted || v.Reason != ReasonScanLimit || v.Message != `denied by rule "strict": `+want {
			t.Fatalf("Check = %+v, %v", v, err)
		}
		if n := metricValue(t, metrics.ScanLimitsExceeded, LimitLayerFiles) - before; n != 1 {
			t.Errorf("gatehouse_scan_limits_exceeded_total{limit=maxLayerFiles} grew by %v", n)
		}
		var m v1.Manifest
		json.Unmarshal(s.Manifest, &m)
		if ok, _ := f.g.BlobAllowed(context.Background(), s.Upstream, s.Repo, m.Layers[0].Digest); ok {
			t.Fatal("layer of an image over a scan limit allowed")
		}
		// A retrying client gets the same denial without another scan.
		v, err = f.g.Check(context.Background(), s)
		if err != nil || v.Admitted || v.Reason != ReasonScanLimit {
			t.Fatalf("second Check = %+v, %v", v, err)
		}
		if n := f.scanner.scans.Load(); n != 1 {
			t.Errorf("%d scans", n)
		}
		if d := f.g.Denials(); len(d) != 2 || d[0].Rule != "strict" || !strings.Contains(d[0].Message, want) {
			t.Errorf("denials %+v", d)
		}
	})
	t.Run("audit serves", func(t *testing.T) {
		f := newFixture(t, policyYAML)
		f.scanner.err = limitErr
		s := f.image(t, "audit/bomb")
		v, err := f.g.Check(context.Background(), s)
		if err != nil || !v.Admitted || v.Reason != ReasonScanLimit || !strings.Contains(v.Message, want) || !strings.Contains(v.Message, "audit mode") {
			t.Fatalf("Check = %+v, %v", v, err)
		}
		var m v1.Manifest
		json.Unmarshal(s.Manifest, &m)
		if ok, _ := f.g.BlobAllowed(context.Background(), s.Upstream, s.Repo, m.Layers[0].Digest); !ok {
			t.Fatal("layer of an image admitted in audit mode refused")
		}
	})
}

func TestLayerSizeMismatchFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		noSize bool
		delta  int64
		larger bool // the read stops past the declared size, not knowing the real one
	}{
		{"size known, manifest understates", false, -100, false},
		{"size known, manifest overstates", false, 100, false},
		{"size unknown, manifest understates", true, -100, true},
		{"size unknown, manifest overstates", true, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, policyYAML)
			f.blobs.noSize = tc.noSize
			s := f.image(t, "team/app")
			var m v1.Manifest
			if err := json.Unmarshal(s.Manifest, &m); err != nil {
				t.Fatal(err)
			}
			real := m.Layers[1].Size
			m.Layers[1].Size = real + tc.delta
			s.Manifest, _ = json.Marshal(&m)
			want := fmt.Sprintf("is %d bytes but manifest %s declares %d", real, s.Digest, m.Layers[1].Size)
			if tc.larger {
				want = fmt.Sprintf("is larger than the %d bytes manifest %s declares", m.Layers[1].Size, s.Digest)
			}
			_, err := f.g.Check(context.Background(), s)
			var se *ScanError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Check = %v; want a ScanError saying %q", err, want)
			}
		})
	}
}

// TestScanConcurrency: gate.scanConcurrency scans run at once; the others
// queue.
func TestScanConcurrency(t *testing.T) {
	f := newFixture(t, strings.Replace(policyYAML, "maxWait: 2s", "maxWait: 60s\n  scanConcurrency: 2", 1))
	f.scanner.block = make(chan struct{})
	queued := metricValue(t, metrics.ScansQueued, "")
	subjects := make([]Subject, 5)
	for i := range subjects {
		subjects[i] = f.image(t, fmt.Sprintf("team/app%d", i))
	}
	var wg sync.WaitGroup
	for _, s := range subjects {
		wg.Go(func() {
			if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
				t.Errorf("%+v %v", v, err)
			}
		})
	}
	// Two scans start; three wait for a worker.
	deadline := time.Now().Add(30 * time.Second)
	for f.scanner.scans.Load() < 2 || metricValue(t, metrics.ScansQueued, "")-queued < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d scans started, %v queued", f.scanner.scans.Load(), metricValue(t, metrics.ScansQueued, "")-queued)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.scanner.scans.Load(); n != 2 {
		t.Fatalf("%d scans running with scanConcurrency 2", n)
	}
	close(f.scanner.block)
	wg.Wait()
	if n, most := f.scanner.scans.Load(), f.scanner.most.Load(); n != 5 || most != 2 {
		t.Fatalf("%d scans, at most %d at once; want 5 and 2", n, most)
	}
}
