package scan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bberrors "go.etcd.io/bbolt/errors"

	"github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/metadata"
	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy/pkg/cache"
	"github.com/aquasecurity/trivy/pkg/fanal/analyzer"
	"github.com/aquasecurity/trivy/pkg/fanal/applier"
	"github.com/aquasecurity/trivy/pkg/fanal/artifact"
	imageartifact "github.com/aquasecurity/trivy/pkg/fanal/artifact/image"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/javadb"
	"github.com/aquasecurity/trivy/pkg/scan/langpkg"
	"github.com/aquasecurity/trivy/pkg/scan/local"
	"github.com/aquasecurity/trivy/pkg/scan/ospkg"
	"github.com/aquasecurity/trivy/pkg/types"
	"github.com/aquasecurity/trivy/pkg/vulnerability"
)

// ErrNoDB is returned by Scan, Rescan and DBStatus while no vulnerability DB
// is loaded.
var ErrNoDB = errors.New("scan: no vulnerability DB loaded")

// ErrClosed is returned by a Scanner after Close.
var ErrClosed = errors.New("scan: scanner closed")

// errBusy: a second Scanner while one is open. Trivy keeps the vulnerability
// DB in one package-level handle, so two Scanners would read and swap each
// other's DB.
var errBusy = errors.New("scan: another Scanner is open in this process (Trivy's DB handle is process-global)")

// active guards Trivy's process-global DB handle: at most one open Scanner.
var active atomic.Bool

// osNone is Trivy's OS family for packages found without an OS.
const osNone ftypes.OSType = "none"

// DefaultParallel is the number of layers one scan analyses at once when
// Options.Parallel is 0 (Trivy's own default).
const DefaultParallel = 5

// Options configure a Scanner. The zero value of every field but DBDir is
// usable.
type Options struct {
	// DBDir holds the vulnerability DB: DBDir/trivy.db and
	// DBDir/metadata.json, the layout of Trivy's own "<cache>/db" directory
	// and of the trivy-db OCI artifact's tarball. Import writes there.
	// Required.
	DBDir string
	// CacheDir holds the layer analysis cache (Trivy's bbolt "fanal" cache,
	// CacheDir/fanal/fanal.db), keyed by layer diffID and analyser versions,
	// so a layer shared by many images is analysed once. Empty: an in-memory
	// cache that lives as long as the Scanner.
	CacheDir string
	// JavaDBDir is a Trivy cache directory holding the Java DB
	// (JavaDBDir/java-db/trivy-java.db and metadata.json). The JAR analyser
	// needs it to identify jars; when it is empty or the Java DB is missing,
	// the JAR analyser is disabled and jars are not scanned (Maven lock
	// files, pom.xml, Gradle and sbt lock files still are). It is never
	// downloaded.
	JavaDBDir string
	// Log receives the Scanner's own messages (DB loads and swaps). Trivy's
	// messages go to slog.Default(). Nil: slog.Default().
	Log *slog.Logger
	// MaxLayerSize, when > 0, is the largest uncompressed layer analysed, in
	// bytes: both the layer's tar stream and the sum of the sizes its tar
	// headers declare (a sparse file's holes take no stream bytes). A larger
	// layer fails the scan with a *gate.LimitError as soon as it is read
	// past the limit.
	MaxLayerSize int64
	// MaxLayerFiles, when > 0, is the largest number of tar entries (files,
	// directories, links) of a layer; the header of one more fails the scan
	// with a *gate.LimitError before Trivy sees it.
	MaxLayerFiles int64
	// MaxImageSize, when > 0, is the most uncompressed bytes one Scan reads
	// over all the layers it analyses (layers found in the layer cache are
	// not read); more fail the scan with a *gate.LimitError.
	MaxImageSize int64
	// Parallel is the number of layers one scan reads and analyses at once.
	// 0 means DefaultParallel.
	Parallel int
}

// Scanner scans images with Trivy. Its methods are safe for concurrent use.
type Scanner struct {
	opts   Options
	log    *slog.Logger
	svc    local.Service
	javaDB bool

	cacheMu     sync.Mutex
	cache       cache.Cache // nil until the first scan
	applier     applier.Applier
	cacheClosed bool

	// mu guards Trivy's global DB handle and meta: detection holds the read
	// lock, a DB swap and Close the write lock.
	mu     sync.RWMutex
	meta   *metadata.Metadata // nil: no DB loaded
	closed bool

	// importMu serialises Imports, which build the new DB outside mu.
	importMu sync.Mutex

	// flight makes concurrent scans analyse a layer they share once.
	flight layerFlight
	// artifactMu serialises the creation of Trivy artifacts.
	artifactMu sync.Mutex

	stats struct {
		scans, rescans, layersAnalysed, layersCached atomic.Uint64
	}
}

// New returns a Scanner. It opens the DB in opts.DBDir if there is one; a
// missing or unreadable DB is not an error here (it is logged), Scan then
// returns ErrNoDB until Import loads one. Only one Scanner may be open at a
// time in a process.
func New(opts Options) (*Scanner, error) {
	if opts.DBDir == "" {
		return nil, errors.New("scan: Options.DBDir is required")
	}
	if !active.CompareAndSwap(false, true) {
		return nil, errBusy
	}
	s := &Scanner{opts: opts, log: opts.Log}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "scan")
	if s.opts.Parallel <= 0 {
		s.opts.Parallel = DefaultParallel
	}

	// Detection only: layers are merged by s.applier, before it.
	s.svc = local.NewService(nil, ospkg.NewScanner(), langpkg.NewScanner(), vulnerability.NewClient(db.Config{}))

	if opts.JavaDBDir != "" {
		if _, err := os.Stat(filepath.Join(opts.JavaDBDir, "java-db", "metadata.json")); err == nil {
			// skip=true: use what is there, never download.
			javadb.Init(opts.JavaDBDir, nil, true, true, ftypes.RegistryOptions{})
			s.javaDB = true
		} else {
			s.log.Warn("Java DB not found: JAR analyser disabled", "dir", opts.JavaDBDir, "err", err)
		}
	}

	if err := os.MkdirAll(opts.DBDir, 0o755); err != nil {
		active.Store(false)
		return nil, fmt.Errorf("scan: %w", err)
	}
	switch meta, err := openDB(opts.DBDir); {
	case err == nil:
		s.meta = &meta
		s.log.Info("vulnerability DB loaded", "version", dbVersion(meta), "updatedAt", meta.UpdatedAt, "nextUpdate", meta.NextUpdate)
	case errors.Is(err, os.ErrNotExist):
		s.log.Warn("no vulnerability DB: scans fail until one is imported", "dir", opts.DBDir)
	default:
		s.log.Error("vulnerability DB unusable: scans fail until one is imported", "dir", opts.DBDir, "err", err)
	}
	return s, nil
}

// Close closes the DB and the layer cache. Detections in flight finish
// first; scans still analysing layers fail.
func (s *Scanner) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.meta != nil {
		errs = append(errs, db.Close())
		s.meta = nil
	}
	s.cacheMu.Lock()
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	s.cacheClosed = true
	s.cacheMu.Unlock()
	active.Store(false)
	return errors.Join(errs...)
}

// layerCache opens the layer cache on first use, so that a Scanner used
// only for DB management (gatehouse db status / import) never touches it.
// When another process holds the cache (bbolt locks it), scans go on with
// an in-memory cache: the cache saves work, it decides nothing.
func (s *Scanner) layerCache() (cache.Cache, applier.Applier, error) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	switch {
	case s.cacheClosed:
		return nil, nil, ErrClosed
	case s.cache != nil:
		return s.cache, s.applier, nil
	}
	if s.opts.CacheDir == "" {
		s.cache = cache.NewMemoryCache()
	} else {
		c, err := cache.NewFSCache(s.opts.CacheDir)
		switch {
		case errors.Is(err, bberrors.ErrTimeout):
			s.log.Warn("layer cache in use by another process: caching layer analyses in memory", "dir", s.opts.CacheDir)
			s.cache = cache.NewMemoryCache()
		case err != nil:
			return nil, nil, fmt.Errorf("open layer cache: %w", err)
		default:
			s.cache = c
		}
	}
	s.applier = applier.NewApplier(s.cache)
	return s.cache, s.applier, nil
}

// Stats are counters since New.
type Stats struct {
	Scans, Rescans uint64
	// LayersAnalysed were read and analysed; LayersCached came from the
	// layer cache.
	LayersAnalysed, LayersCached uint64
}

// Stats returns the counters since New.
func (s *Scanner) Stats() Stats {
	return Stats{
		Scans:          s.stats.scans.Load(),
		Rescans:        s.stats.rescans.Load(),
		LayersAnalysed: s.stats.layersAnalysed.Load(),
		LayersCached:   s.stats.layersCached.Load(),
	}
}

// scanOptions are the detection options. Two of them fail open when left
// empty, which is why they are built in one place and a test pins them:
// an empty PkgRelationships makes Trivy drop every package before
// detection, and an empty VulnSeveritySources turns every severity into
// UNKNOWN (which no policy blocks).
func scanOptions() types.ScanOptions {
	return types.ScanOptions{
		PkgTypes:            []string{types.PkgTypeOS, types.PkgTypeLibrary},
		PkgRelationships:    slices.Clone(ftypes.Relationships),
		Scanners:            types.Scanners{types.VulnerabilityScanner},
		VulnSeveritySources: []dbTypes.SourceID{"auto"},
	}
}

// artifactOption is built anew for each scan: Trivy sorts its slices in
// place while computing cache keys, which would race between scans sharing
// one.
func (s *Scanner) artifactOption() artifact.Option {
	disabled := []analyzer.Type{
		analyzer.TypeSecret,
		analyzer.TypeLicenseFile,
		analyzer.TypeDpkgLicense,
		analyzer.TypeHistoryDockerfile,
		analyzer.TypeImageConfigSecret,
		// Looks up apk commands of the image history on the network.
		analyzer.TypeApkCommand,
		// Only feeds Rekor SBOM lookups (network).
		analyzer.TypeExecutable,
		// Experimental in Trivy, off unless an environment variable says so.
		analyzer.TypeRpmArchive,
	}
	disabled = append(disabled, analyzer.TypeConfigFiles...)
	if !s.javaDB {
		disabled = append(disabled, analyzer.TypeJar)
	}
	slices.Sort(disabled)
	return artifact.Option{
		DisabledAnalyzers: disabled,
		DisabledHandlers:  []ftypes.HandlerType{ftypes.UnpackagedPostHandler},
		Parallel:          s.opts.Parallel,
		Offline:           true,
		NoProgress:        true,
	}
}

// Scan analyses the layers of img (OS packages and language packages) and
// detects their vulnerabilities with the current DB. name is used in the
// report's targets. Any analysis or detection error is returned: a Report
// is never partial because something failed.
//
// Layers are read with img.LayerByDiffID(...).Uncompressed(), up to
// Options.Parallel at once, each only when the layer cache does not know
// its diffID yet, within Options.MaxLayerSize, MaxLayerFiles and
// MaxImageSize; a layer whose content does not hash to the diffID the
// image config declares fails the scan.
func (s *Scanner) Scan(ctx context.Context, img v1.Image, name string) (*Report, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	s.stats.scans.Add(1)
	wrapped := &image{Image: img, name: name, limits: limits{bytes: s.opts.MaxLayerSize, files: s.opts.MaxLayerFiles, image: s.opts.MaxImageSize}}
	defer wrapped.closeAll()
	lc, ap, err := s.layerCache()
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	cc := &scanCache{Cache: lc, flight: &s.flight, broken: wrapped.breached}
	defer cc.release()
	// NewArtifact calls Init on Trivy's registered analyser instances, which
	// are process-global (the Python egg analyser writes its fields there).
	s.artifactMu.Lock()
	art, err := imageartifact.NewArtifact(wrapped, cc, s.artifactOption())
	s.artifactMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	ref, err := art.Inspect(ctx)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	defer art.Clean(ref)
	if err := wrapped.breached(""); err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	s.stats.layersAnalysed.Add(uint64(cc.missing.Load()))
	s.stats.layersCached.Add(uint64(len(ref.BlobIDs)) - uint64(cc.missing.Load()))

	inv, warnings, err := inventory(ctx, ap, ref, name)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	rep, err := s.detect(ctx, inv, scanOptions())
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", name, err)
	}
	rep.Warnings = append(warnings, rep.Warnings...)
	rep.Layers = len(ref.BlobIDs)
	rep.LayersAnalysed = int(cc.missing.Load())
	return rep, nil
}

// Rescan detects the vulnerabilities of a stored inventory again with the
// current DB, without reading any layer.
func (s *Scanner) Rescan(ctx context.Context, inv *Inventory) (*Report, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	s.stats.rescans.Add(1)
	rep, err := s.detect(ctx, inv.clone(), scanOptions())
	if err != nil {
		return nil, fmt.Errorf("rescan %s: %w", inv.Name, err)
	}
	return rep, nil
}

// ready fails fast, before any layer is read, when no DB is loaded.
func (s *Scanner) ready() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.meta == nil:
		return ErrNoDB
	}
	return nil
}

// inventory merges the analysed layers into the image's package inventory,
// as Trivy's local scan service does before detection.
func inventory(ctx context.Context, ap applier.Applier, ref artifact.Reference, name string) (Inventory, []string, error) {
	detail, err := ap.ApplyLayers(ctx, ref.ID, ref.BlobIDs)
	var warnings []string
	switch {
	case errors.Is(err, analyzer.ErrUnknownOS):
		// OS packages without an OS release (as Trivy's local service does).
		if len(detail.Packages) != 0 {
			detail.OS = ftypes.OS{Family: osNone}
		}
		// An OS package repository without an OS release file: Trivy
		// takes the repository's release as the OS.
		if detail.Repository != nil {
			detail.OS = ftypes.OS{Family: detail.Repository.Family, Name: detail.Repository.Release}
		}
		if !detail.OS.Detected() || detail.OS.Family == osNone {
			warnings = append(warnings, "no OS detected: OS packages not scanned")
		}
	case errors.Is(err, analyzer.ErrNoPkgsDetected):
		if detail.OS.Family.HasOSPackages() {
			warnings = append(warnings, fmt.Sprintf("%s %s detected but no OS package database found", detail.OS.Family, detail.OS.Name))
		}
	case err != nil:
		return Inventory{}, nil, fmt.Errorf("apply layers: %w", err)
	}
	apps := make([]ftypes.Application, len(detail.Applications))
	for i, app := range detail.Applications {
		app.Packages = strip(app.Packages)
		apps[i] = app
	}
	inv := Inventory{
		Name:         name,
		ImageID:      ref.ImageMetadata.ID,
		DiffIDs:      ref.ImageMetadata.DiffIDs,
		OS:           osFrom(detail.OS),
		Repository:   detail.Repository,
		Packages:     strip(detail.Packages),
		Applications: apps,
	}
	return inv, warnings, nil
}

// detect runs Trivy's detection on a copy of an inventory under
// the DB read lock, so a DB swap waits for it and it never sees a closed DB.
func (s *Scanner) detect(ctx context.Context, inv Inventory, opts types.ScanOptions) (*Report, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return nil, ErrClosed
	case s.meta == nil:
		return nil, ErrNoDB
	}
	work := inv.clone() // Trivy filters and sorts the target's slices in place
	target := types.ScanTarget{
		Name:         work.Name,
		OS:           work.OS.trivy(),
		Repository:   work.Repository,
		Packages:     work.Packages,
		Applications: work.Applications,
	}
	results, osInfo, err := s.svc.ScanTarget(ctx, target, opts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	inv.OS.EOSL = osInfo.Eosl
	rep := &Report{
		Inventory: inv,
		Vulns:     vulnsFrom(results),
		DBVersion: dbVersion(*s.meta),
	}
	if osInfo.Eosl {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s %s is past its end of support: it gets no security fixes", osInfo.Family, osInfo.Name))
	}
	if osInfo.Detected() && osInfo.Family != osNone && osInfo.Family.HasOSPackages() && len(inv.Packages) > 0 &&
		!slices.ContainsFunc(results, func(r types.Result) bool { return r.Class == types.ClassOSPkg }) {
		// Trivy skips an OS it has no detector for without an error.
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s %s is not supported: OS packages not scanned", osInfo.Family, osInfo.Name))
	}
	return rep, nil
}
