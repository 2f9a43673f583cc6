package scan

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/aquasecurity/trivy-db/pkg/metadata"
	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	trivylog "github.com/aquasecurity/trivy/pkg/log"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// deferredAtInit: the default logger after package initialisation was
// Trivy's buffering one.
var deferredAtInit bool

func TestMain(m *testing.M) {
	_, deferredAtInit = slog.Default().Handler().(*trivylog.DeferredHandler)
	// Trivy logs a few lines per scan at INFO.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	goleak.VerifyTestMain(m)
}

// newScanner opens a Scanner on a fresh directory holding fixture DB d (none
// when d is nil).
func newScanner(t *testing.T, d *scantest.DB, opts ...func(*Options)) *Scanner {
	t.Helper()
	dir := t.TempDir()
	o := Options{DBDir: filepath.Join(dir, "db"), CacheDir: filepath.Join(dir, "cache")}
	if d != nil {
		d.Write(t, o.DBDir)
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func v1DB() *scantest.DB { d := scantest.V1(); return &d }

// want is the part of a Vuln a test pins.
type want struct {
	ID, Severity, PkgName, Installed, Fixed, Status string
}

func got(vulns []Vuln) []want {
	out := make([]want, len(vulns))
	for i, v := range vulns {
		out[i] = want{v.ID, v.Severity, v.PkgName, v.Installed, v.Fixed, v.Status}
	}
	return out
}

func equal(t *testing.T, name string, got, want []want) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: vulns\n got %+v\nwant %+v", name, got, want)
	}
}

func scan(t *testing.T, s *Scanner, img v1.Image, name string) *Report {
	t.Helper()
	rep, err := s.Scan(context.Background(), img, name)
	if err != nil {
		t.Fatalf("Scan(%s): %v", name, err)
	}
	return rep
}

var (
	wantAlpine = []want{
		{scantest.CVEAlpineOpenSSL, "CRITICAL", "libcrypto3", "3.5.0-r0", "3.5.1-r0", "fixed"},
		{scantest.CVEAlpineOpenSSL, "CRITICAL", "libssl3", "3.5.0-r0", "3.5.1-r0", "fixed"},
		{scantest.CVEAlpineBusybox, "MEDIUM", "busybox", "1.37.0-r18", "1.37.0-r19", "fixed"},
	}
	wantDebian = []want{
		{scantest.CVEDebianOpenSSL, "HIGH", "libssl3", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1", "fixed"},
		{scantest.CVEDebianGlibc, "MEDIUM", "libc6", "2.36-9+deb12u10", "", "affected"},
		{scantest.CVEDebianTar, "LOW", "tar", "1.34+dfsg-1.2+deb12u1", "", "will_not_fix"},
	}
	wantNode = []want{
		{scantest.CVENpmMinimist, "CRITICAL", "minimist", "1.2.8", "", "affected"},
		{scantest.CVENpmLodash, "HIGH", "lodash", "4.17.20", "4.17.21", "fixed"},
	}
)

func TestScanOSPackages(t *testing.T) {
	s := newScanner(t, v1DB())
	tests := []struct {
		name       string
		img        v1.Image
		want       []want
		family     string
		osName     string
		pkgs       int
		wantTarget string
	}{
		{"alpine", scantest.VulnerableAlpine(), wantAlpine, "alpine", "3.22.1", 5, "vuln/alpine (alpine 3.22.1)"},
		{"debian", scantest.VulnerableDebian(), wantDebian, "debian", "12.11", 4, "vuln/debian (debian 12.11)"},
		{"clean", scantest.CleanAlpine(), []want{}, "alpine", "3.22.1", 3, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := scan(t, s, tt.img, "vuln/"+tt.name)
			equal(t, tt.name, got(rep.Vulns), tt.want)
			if rep.DBVersion != s.DBVersion() || rep.DBVersion == "" {
				t.Errorf("DBVersion = %q, scanner has %q", rep.DBVersion, s.DBVersion())
			}
			inv := rep.Inventory
			if inv.OS.Family != tt.family || inv.OS.Name != tt.osName || len(inv.Packages) != tt.pkgs {
				t.Errorf("inventory OS %+v with %d packages, want %s %s with %d", inv.OS, len(inv.Packages), tt.family, tt.osName, tt.pkgs)
			}
			if id, _ := tt.img.ConfigName(); inv.ImageID != id.String() {
				t.Errorf("ImageID = %s, want %s", inv.ImageID, id)
			}
			for _, v := range rep.Vulns {
				if v.Target != tt.wantTarget || v.PkgType != tt.family {
					t.Errorf("%s: target %q type %q, want %q %q", v.ID, v.Target, v.PkgType, tt.wantTarget, tt.family)
				}
				if v.Title == "" || v.Description == "" || len(v.References) == 0 || v.PrimaryURL == "" {
					t.Errorf("%s: details missing: %+v", v.ID, v)
				}
			}
			for _, w := range rep.Warnings {
				// Alpine 3.22 reaches its end of support in 2027.
				if !strings.Contains(w, "end of support") {
					t.Errorf("warning: %q", w)
				}
			}
			if c := rep.Counts(); len(tt.want) > 0 && c[tt.want[0].Severity] == 0 {
				t.Errorf("Counts() = %v", c)
			}
		})
	}
}

func TestScanLanguagePackages(t *testing.T) {
	s := newScanner(t, v1DB())

	rep := scan(t, s, scantest.NodeApp(), "node")
	equal(t, "node", got(rep.Vulns), wantNode)
	for _, v := range rep.Vulns {
		if v.Target != "app/package-lock.json" || v.PkgType != "npm" {
			t.Errorf("%s: target %q type %q", v.ID, v.Target, v.PkgType)
		}
	}
	// Trivy finds app/package.json too (type node-pkg: the app itself).
	var names []string
	for _, app := range rep.Inventory.Applications {
		if app.Type != ftypes.Npm || app.FilePath != "app/package-lock.json" {
			continue
		}
		for _, p := range app.Packages {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	// jest is a dev dependency: Trivy drops it at detection, the inventory
	// keeps it (marked Dev).
	if !slices.Equal(names, []string{"jest", "lodash", "minimist", "ms"}) {
		t.Errorf("npm packages %q", names)
	}

	t.Run("go binary", func(t *testing.T) {
		rep := scan(t, s, scantest.GoApp(t), "go")
		if len(rep.Vulns) != 1 {
			t.Fatalf("vulns %+v", got(rep.Vulns))
		}
		v := rep.Vulns[0]
		if v.ID != scantest.CVEGoStdlib || v.PkgName != "stdlib" || v.Severity != "HIGH" ||
			v.Target != "usr/local/bin/app" || v.PkgType != "gobinary" || !strings.HasPrefix(v.Installed, "v1.") {
			t.Errorf("go binary vuln %+v", v)
		}
	})
}

func TestScanWithoutOS(t *testing.T) {
	s := newScanner(t, v1DB())
	img := scantest.Image([]v1.Layer{scantest.Layer(scantest.Files{"app/package-lock.json": []byte(scantest.PackageLock)})})
	rep := scan(t, s, img, "scratch")
	equal(t, "scratch", got(rep.Vulns), wantNode)
	if rep.Inventory.OS.Family != "" || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "no OS") {
		t.Errorf("OS %+v, warnings %q", rep.Inventory.OS, rep.Warnings)
	}
}

// TestFailOpenOptions is the regression test for the two Trivy options that
// make detection silently report nothing (or nothing blockable) when
// empty. It fails if scanOptions drops either.
func TestFailOpenOptions(t *testing.T) {
	opts := scanOptions()
	if !slices.Equal(opts.PkgRelationships, ftypes.Relationships) {
		t.Errorf("PkgRelationships = %v, want all of ftypes.Relationships %v", opts.PkgRelationships, ftypes.Relationships)
	}
	if !slices.Contains(opts.VulnSeveritySources, dbTypes.SourceID("auto")) {
		t.Errorf("VulnSeveritySources = %v, want auto", opts.VulnSeveritySources)
	}

	s := newScanner(t, v1DB())
	rep := scan(t, s, scantest.VulnerableAlpine(), "alpine")
	node := scan(t, s, scantest.NodeApp(), "node")
	// With the options as built: vulns found, OS and language, with real
	// severities.
	equal(t, "alpine", got(rep.Vulns), wantAlpine)
	equal(t, "node", got(node.Vulns), wantNode)

	// The same detection with either option emptied shows what the
	// assertions above catch.
	ctx := context.Background()
	noRel := scanOptions()
	noRel.PkgRelationships = nil
	for _, inv := range []Inventory{rep.Inventory, node.Inventory} {
		r, err := s.detect(ctx, inv, noRel)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Vulns) != 0 {
			t.Errorf("without PkgRelationships Trivy found %d vulns; the fail-open case changed", len(r.Vulns))
		}
	}
	noSev := scanOptions()
	noSev.VulnSeveritySources = nil
	r, err := s.detect(ctx, rep.Inventory, noSev)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range r.Vulns {
		if v.Severity != "UNKNOWN" {
			t.Errorf("without VulnSeveritySources %s is %s; the fail-open case changed", v.ID, v.Severity)
		}
	}
	if len(r.Vulns) == 0 {
		t.Error("no vulns without VulnSeveritySources")
	}
}

func TestRescan(t *testing.T) {
	s := newScanner(t, v1DB())
	ctx := context.Background()

	// Every fixture: Rescan of the JSON-stored inventory equals the scan.
	for name, img := range map[string]v1.Image{
		"alpine": scantest.VulnerableAlpine(), "debian": scantest.VulnerableDebian(),
		"node": scantest.NodeApp(), "clean": scantest.CleanAlpine(),
	} {
		rep := scan(t, s, img, name)
		b, err := json.Marshal(rep.Inventory)
		if err != nil {
			t.Fatal(err)
		}
		var inv Inventory
		if err := json.Unmarshal(b, &inv); err != nil {
			t.Fatal(err)
		}
		again, err := s.Rescan(ctx, &inv)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, name+" rescan", got(again.Vulns), got(rep.Vulns))
		if again.LayersAnalysed != 0 || again.Layers != 0 {
			t.Errorf("rescan read layers: %+v", again)
		}
		b2, _ := json.Marshal(inv)
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: Rescan changed its inventory", name)
		}
	}

	// A new DB release: the clean image stored yesterday is vulnerable today.
	clean := scan(t, s, scantest.CleanAlpine(), "clean")
	if len(clean.Vulns) != 0 {
		t.Fatalf("clean image has vulns under V1: %+v", clean.Vulns)
	}
	v1Version := s.DBVersion()
	if err := s.Import(ctx, bytes.NewReader(scantest.V2().Archive(t))); err != nil {
		t.Fatal(err)
	}
	if s.DBVersion() == v1Version {
		t.Fatalf("DBVersion unchanged by import: %s", v1Version)
	}
	rep, err := s.Rescan(ctx, &clean.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "clean after V2", got(rep.Vulns), []want{{scantest.CVEAlpineMusl, "CRITICAL", "musl", "1.2.5-r10", "1.2.5-r11", "fixed"}})
	if rep.DBVersion != s.DBVersion() {
		t.Errorf("report DBVersion %s, scanner %s", rep.DBVersion, s.DBVersion())
	}
}

func TestLayerCache(t *testing.T) {
	dir := t.TempDir()
	opts := Options{DBDir: filepath.Join(dir, "db"), CacheDir: filepath.Join(dir, "cache")}
	scantest.WriteDB(t, opts.DBDir)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name             string
		img              v1.Image
		layers, analysed int
	}{
		{"base", scantest.CleanAlpine(), 1, 1},
		{"node on base", scantest.NodeApp(), 2, 1},
		{"jar on base", scantest.JarApp(), 2, 1},
		{"node again", scantest.NodeApp(), 2, 0},
	}
	for _, st := range steps {
		rep := scan(t, s, st.img, st.name)
		if rep.Layers != st.layers || rep.LayersAnalysed != st.analysed {
			t.Errorf("%s: %d layers, %d analysed; want %d, %d", st.name, rep.Layers, rep.LayersAnalysed, st.layers, st.analysed)
		}
	}
	if st := s.Stats(); st.Scans != 4 || st.LayersAnalysed != 3 || st.LayersCached != 4 {
		t.Errorf("stats %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The cache outlives the Scanner.
	s, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep := scan(t, s, scantest.NodeApp(), "node")
	if rep.LayersAnalysed != 0 {
		t.Errorf("after reopen: %d layers analysed", rep.LayersAnalysed)
	}
	equal(t, "node from cache", got(rep.Vulns), wantNode)
}

func TestJarWithoutJavaDB(t *testing.T) {
	s := newScanner(t, v1DB(), func(o *Options) { o.JavaDBDir = t.TempDir() })
	rep := scan(t, s, scantest.JarApp(), "jar")
	equal(t, "jar", got(rep.Vulns), []want{})
	if len(rep.Inventory.Applications) != 0 {
		t.Errorf("jar analysed without a Java DB: %+v", rep.Inventory.Applications)
	}
}

func TestNoDB(t *testing.T) {
	s := newScanner(t, nil)
	ctx := context.Background()
	if _, err := s.Scan(ctx, scantest.CleanAlpine(), "x"); !errors.Is(err, ErrNoDB) {
		t.Errorf("Scan: %v, want ErrNoDB", err)
	}
	if _, err := s.Rescan(ctx, &Inventory{}); !errors.Is(err, ErrNoDB) {
		t.Errorf("Rescan: %v, want ErrNoDB", err)
	}
	if _, err := s.DBStatus(); !errors.Is(err, ErrNoDB) {
		t.Errorf("DBStatus: %v, want ErrNoDB", err)
	}
	if v := s.DBVersion(); v != "" {
		t.Errorf("DBVersion = %q", v)
	}

	// A DB that cannot be opened counts as none.
	if err := s.Import(ctx, bytes.NewReader(scantest.CorruptArchive(t))); err == nil {
		t.Error("corrupt import succeeded")
	}
	if _, err := s.Scan(ctx, scantest.CleanAlpine(), "x"); !errors.Is(err, ErrNoDB) {
		t.Errorf("Scan after failed import: %v, want ErrNoDB", err)
	}

	if err := s.Import(ctx, bytes.NewReader(scantest.V1().Archive(t))); err != nil {
		t.Fatal(err)
	}
	st, err := s.DBStatus()
	if err != nil {
		t.Fatal(err)
	}
	v1 := scantest.V1()
	if st.Version != 2 || !st.UpdatedAt.Equal(v1.UpdatedAt) || !st.NextUpdate.Equal(v1.NextUpdate) ||
		st.DownloadedAt.IsZero() || st.DBVersion != s.DBVersion() {
		t.Errorf("status %+v", st)
	}
	equal(t, "after import", got(scan(t, s, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
}

func TestNewWithUnusableDB(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "trivy.db"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "metadata.json"), []byte(`{"Version":2,"UpdatedAt":"2099-01-01T00:00:00Z"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{DBDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Scan(context.Background(), scantest.CleanAlpine(), "x"); !errors.Is(err, ErrNoDB) {
		t.Errorf("Scan: %v, want ErrNoDB", err)
	}
}

func TestImportInvalid(t *testing.T) {
	s := newScanner(t, v1DB())
	before := s.DBVersion()
	ctx := context.Background()
	archive := func(files map[string]string) []byte {
		return tarGz(t, files)
	}
	v2 := scantest.V2().Archive(t)
	dbOnly := untarGz(t, v2)
	tests := map[string][]byte{
		"corrupt trivy.db": scantest.CorruptArchive(t),
		"not gzip":         []byte("hello"),
		"truncated":        v2[:len(v2)/2],
		"no metadata":      archive(map[string]string{"trivy.db": dbOnly["trivy.db"]}),
		"no trivy.db":      archive(map[string]string{"metadata.json": dbOnly["metadata.json"]}),
		"schema 1":         archive(map[string]string{"trivy.db": dbOnly["trivy.db"], "metadata.json": `{"Version":1,"UpdatedAt":"2099-03-01T00:00:00Z"}`}),
		"no UpdatedAt":     archive(map[string]string{"trivy.db": dbOnly["trivy.db"], "metadata.json": `{"Version":2}`}),
		"empty bbolt":      archive(map[string]string{"trivy.db": emptyBolt(t), "metadata.json": dbOnly["metadata.json"]}),
	}
	for name, b := range tests {
		if err := s.Import(ctx, bytes.NewReader(b)); err == nil {
			t.Errorf("%s: import succeeded", name)
		}
		if v := s.DBVersion(); v != before {
			t.Fatalf("%s: DB version %s after failed import, want %s", name, v, before)
		}
		equal(t, name, got(scan(t, s, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
	}
	entries, _ := os.ReadDir(s.opts.DBDir)
	for _, e := range entries {
		if e.Name() != "trivy.db" && e.Name() != "metadata.json" {
			t.Errorf("left behind in DBDir: %s", e.Name())
		}
	}
}

// TestSwapUnderConcurrentScans swaps the DB back and forth while scans and
// rescans run: none may fail, and every one that starts after an Import
// returns sees that import's DB.
func TestSwapUnderConcurrentScans(t *testing.T) {
	s := newScanner(t, v1DB())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v1Archive, v2Archive := scantest.V1().Archive(t), scantest.V2().Archive(t)
	clean := scan(t, s, scantest.CleanAlpine(), "clean")
	v1Version := s.DBVersion()

	versions := map[string]bool{}
	for _, d := range []scantest.DB{scantest.V1(), scantest.V2()} {
		versions[dbVersion(metadata.Metadata{Version: 2, UpdatedAt: d.UpdatedAt})] = true
	}
	if !versions[v1Version] {
		t.Fatalf("DB version %s not derived from the fixture", v1Version)
	}
	var scans atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	imgs := []v1.Image{scantest.VulnerableAlpine(), scantest.NodeApp(), scantest.CleanAlpine()}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				var rep *Report
				var err error
				if w%2 == 0 {
					rep, err = s.Scan(ctx, imgs[i%len(imgs)], "img")
				} else {
					rep, err = s.Rescan(ctx, &clean.Inventory)
				}
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				scans.Add(1)
				if !versions[rep.DBVersion] {
					errs <- errors.New("unexpected DB version " + rep.DBVersion)
					return
				}
				if w%2 == 1 {
					// The findings match the DB version reported.
					hasMusl := len(rep.Vulns) == 1 && rep.Vulns[0].ID == scantest.CVEAlpineMusl
					if hasMusl == (rep.DBVersion == v1Version) {
						errs <- errors.New("rescan result does not match its DB version " + rep.DBVersion)
						return
					}
				}
			}
		}()
	}
	for i := range 6 {
		time.Sleep(50 * time.Millisecond)
		a := v2Archive
		if i%2 == 1 {
			a = v1Archive
		}
		if err := s.Import(context.Background(), bytes.NewReader(a)); err != nil {
			t.Fatal(err)
		}
		// A scan started now sees exactly this DB.
		rep, err := s.Rescan(context.Background(), &clean.Inventory)
		if err != nil {
			t.Fatal(err)
		}
		if rep.DBVersion != s.DBVersion() {
			t.Errorf("after import %d: rescan on %s, current %s", i, rep.DBVersion, s.DBVersion())
		}
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if scans.Load() == 0 {
		t.Error("no scan completed")
	}
	t.Logf("%d scans during 6 swaps", scans.Load())
}

// paxRecord is one "length key=value\n" record of a PAX header.
func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	n := len(rec)
	for len(strconv.Itoa(n))+len(rec) != n {
		n = len(strconv.Itoa(n)) + len(rec)
	}
	return strconv.Itoa(n) + rec
}

// writeSparse writes a GNU sparse file (PAX format 0.1) that declares
// size bytes and holds one byte of data: archive/tar reads it back as size
// bytes, almost all of them holes that take no room in the stream.
// archive/tar's writer drops GNU.sparse records, so the PAX header is
// written as a regular entry and its type flag patched afterwards
// (patchPAX, sparseTar).
func writeSparse(tw *tar.Writer, name string, size int64) error {
	pax := paxRecord("GNU.sparse.size", strconv.FormatInt(size, 10)) +
		paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.map", "0,1")
	if err := tw.WriteHeader(&tar.Header{Name: "PaxHeaders/" + path.Base(name), Typeflag: tar.TypeReg, Size: int64(len(pax)), Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	if _, err := tw.Write([]byte(pax)); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: 1, Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	_, err := tw.Write([]byte{0x7f})
	return err
}

// sparseTar returns a tar holding one sparse file (writeSparse).
func sparseTar(t *testing.T, name string, size int64) []byte {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := writeSparse(tw, name, size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := raw.Bytes()
	patchPAX(b, 0)
	return b
}

// patchPAX turns the header block at off of a tar stream into a PAX
// extended header ('x') and fixes its checksum.
func patchPAX(b []byte, off int) {
	blk := b[off : off+512]
	blk[156] = tar.TypeXHeader
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

func TestLimits(t *testing.T) {
	const limit = 4 << 20 // bytes
	tests := []struct {
		name   string
		opt    func(*Options)
		layer  func(t *testing.T) v1.Layer
		broken string // the limit the scan must break
	}{
		{"size: one file of 32 MiB of zeros", func(o *Options) { o.MaxLayerSize = limit }, func(t *testing.T) v1.Layer {
			return scantest.Zeros(32 << 20)
		}, gate.LimitLayerSize},
		{"size: 32 MiB of zeros after the end of the archive", func(o *Options) { o.MaxLayerSize = limit }, func(t *testing.T) v1.Layer {
			return scantest.GzipLayer(func(w io.Writer, tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}); err != nil {
					return err
				}
				if _, err := tw.Write([]byte("host\n")); err != nil {
					return err
				}
				if err := tw.Close(); err != nil {
					return err
				}
				_, err := w.Write(make([]byte, 32<<20)) // Trivy reads a layer to its end
				return err
			})
		}, gate.LimitLayerSize},
		{"size: sparse file declaring 32 MiB in a few bytes", func(o *Options) { o.MaxLayerSize = limit }, func(t *testing.T) v1.Layer {
			b := sparseTar(t, "usr/local/bin/app", 32<<20)
			// The stream itself is far under the limit: only the declared
			// size can catch this one.
			if len(b) >= limit {
				t.Fatalf("sparse tar is %d bytes", len(b))
			}
			tr := tar.NewReader(bytes.NewReader(b))
			if h, err := tr.Next(); err != nil || h.Size != 32<<20 || h.Name != "usr/local/bin/app" {
				t.Fatalf("sparse entry reads back as %+v, %v", h, err)
			}
			return scantest.GzipLayer(func(w io.Writer, _ *tar.Writer) error { _, err := w.Write(b); return err })
		}, gate.LimitLayerSize},
		{"files: 5000 empty files", func(o *Options) { o.MaxLayerFiles = 1000 }, func(t *testing.T) v1.Layer {
			return scantest.ManyFiles(5000)
		}, gate.LimitLayerFiles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScanner(t, v1DB(), tt.opt)
			l := tt.layer(t)
			compressed, err := l.Size()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("compressed layer: %d bytes", compressed)
			diffID, err := l.DiffID()
			if err != nil {
				t.Fatal(err)
			}
			img := scantest.Append(scantest.VulnerableAlpine(), []v1.Layer{l})
			rep, err := s.Scan(context.Background(), img, "bomb")
			var le *gate.LimitError
			if !errors.As(err, &le) {
				t.Fatalf("Scan = %+v, %v; want a *gate.LimitError", rep, err)
			}
			if le.Limit != tt.broken || le.Layer != diffID.String() {
				t.Fatalf("limit error %+v, want %s of layer %s", le, tt.broken, diffID)
			}
			t.Log(err)
			// Nothing of the layer was cached: the next scan reads it
			// again and fails again.
			if rep, err := s.Scan(context.Background(), img, "bomb"); !errors.As(err, &le) {
				t.Fatalf("second scan = %+v, %v; want a *gate.LimitError", rep, err)
			}
		})
	}
	t.Run("image: three layers of 3 MiB", func(t *testing.T) {
		img := scantest.Append(scantest.VulnerableAlpine(), []v1.Layer{scantest.Zeros(3 << 20), scantest.Zeros(3<<20 + 1), scantest.Zeros(3<<20 + 2)})
		// Each layer is within maxLayerSize.
		s := newScanner(t, v1DB(), func(o *Options) { o.MaxLayerSize = limit })
		scan(t, s, img, "three")
		s.Close()
		s = newScanner(t, v1DB(), func(o *Options) { o.MaxLayerSize = limit; o.MaxImageSize = 8 << 20 })
		rep, err := s.Scan(context.Background(), img, "three")
		var le *gate.LimitError
		if !errors.As(err, &le) || le.Limit != gate.LimitImageSize || le.Max != 8<<20 {
			t.Fatalf("Scan = %+v, %v; want a *gate.LimitError of maxImageSize", rep, err)
		}
		t.Log(err)
	})
	t.Run("within limits", func(t *testing.T) {
		s := newScanner(t, v1DB(), func(o *Options) { o.MaxLayerSize = 1 << 20; o.MaxLayerFiles = 100; o.MaxImageSize = 2 << 20 })
		equal(t, "within limits", got(scan(t, s, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
	})
}

// lyingImage's config names a layer by one diffID while its blob holds
// another layer.
type lyingImage struct {
	v1.Image
	diffID v1.Hash
	layer  v1.Layer
}

func (l lyingImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	if h == l.diffID {
		return l.layer, nil
	}
	return l.Image.LayerByDiffID(h)
}

// TestDiffIDChecked: Trivy caches a layer's analysis under the diffID the
// image config declares. An image that names the vulnerable base layer's
// diffID but ships a clean layer fails its scan, and does not make the
// real image look clean afterwards.
func TestDiffIDChecked(t *testing.T) {
	s := newScanner(t, v1DB())
	vuln := scantest.VulnerableAlpine()
	cf, err := vuln.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	lying := lyingImage{Image: vuln, diffID: cf.RootFS.DiffIDs[0], layer: scantest.CleanAlpineLayer()}
	rep, err := s.Scan(context.Background(), lying, "lying")
	if err == nil || !strings.Contains(err.Error(), "not the diffID its image config declares") {
		t.Fatalf("Scan of an image whose config lies = %+v, %v", rep, err)
	}
	// The gate learns the layer's true diffID from it (gate.LayerError).
	var le *gate.LayerError
	clean, _ := scantest.CleanAlpineLayer().DiffID()
	if !errors.As(err, &le) || le.Layer != cf.RootFS.DiffIDs[0].String() || le.Actual != clean.String() {
		t.Fatalf("Scan error %v (%T); want a *gate.LayerError declaring %s, actually %s", err, err, cf.RootFS.DiffIDs[0], clean)
	}
	equal(t, "the real image after the lying one", got(scan(t, s, vuln, "real").Vulns), wantAlpine)
}

// oddImage's layers read in pieces of at most 7 bytes, with an empty read
// before each: legal for an io.Reader, and the hardest case for the tar
// watcher's hand-over.
type oddImage struct{ v1.Image }

type oddLayer struct{ v1.Layer }

type oddReader struct {
	io.ReadCloser
	empty bool
}

func (o oddImage) Layers() ([]v1.Layer, error) {
	ls, err := o.Image.Layers()
	for i, l := range ls {
		ls[i] = &oddLayer{l}
	}
	return ls, err
}

func (l *oddLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	return &oddReader{ReadCloser: rc}, err
}

func (o *oddReader) Read(p []byte) (int, error) {
	if o.empty = !o.empty; o.empty {
		return 0, nil
	}
	return o.ReadCloser.Read(p[:min(len(p), 7)])
}

// TestLimitHeaderNeverReachesReader: a tar reader on the limited stream —
// as Trivy's walker is — never gets the header that breaks a limit; it
// gets the limit error instead.
func TestLimitHeaderNeverReachesReader(t *testing.T) {
	files := scantest.Files{}
	for i := range 100 {
		files[fmt.Sprintf("d/%03d", i)] = bytes.Repeat([]byte{'x'}, 700)
	}
	sparse := sparseTar(t, "usr/local/bin/app", 1<<40)
	for _, tc := range []struct {
		name string
		l    v1.Layer
		lim  limits
		ok   func(h *tar.Header, n int) bool // whether h, the n-th entry, may pass
	}{
		{"files", scantest.Layer(files), limits{files: 50}, func(_ *tar.Header, n int) bool { return n <= 50 }},
		{"sparse", scantest.GzipLayer(func(w io.Writer, _ *tar.Writer) error { _, err := w.Write(sparse); return err }),
			limits{bytes: 1 << 20}, func(h *tar.Header, _ int) bool { return h.Size <= 1<<20 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Hand on every checked byte at once.
			img := &image{Image: oddImage{scantest.Image([]v1.Layer{tc.l})}, limits: tc.lim, release: 1}
			ls, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := ls[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			tr := tar.NewReader(rc)
			for n := 1; ; n++ {
				h, err := tr.Next()
				var le *gate.LimitError
				if errors.As(err, &le) {
					return
				}
				if err != nil {
					t.Fatalf("entry %d: %v; want a *gate.LimitError", n, err)
				}
				if !tc.ok(h, n) {
					t.Fatalf("entry %d (%s, %d bytes) reached the reader", n, h.Name, h.Size)
				}
			}
		})
	}
}

// TestLimitReaderStops: the tar watcher's goroutine ends whether the
// stream is read to its end, stopped by a limit or abandoned half-way.
func TestLimitReaderStops(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	files := scantest.Files{}
	for i := range 200 {
		files[fmt.Sprintf("d/%03d", i)] = bytes.Repeat([]byte{'x'}, 1000)
	}
	base := scantest.Layer(files)
	open := func(lim limits) (*image, io.ReadCloser) {
		img := &image{Image: scantest.Image([]v1.Layer{base}), limits: lim}
		l, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		return img, rc
	}
	t.Run("read to the end", func(t *testing.T) {
		_, rc := open(limits{bytes: 1 << 20, files: 1000})
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		rc.Close()
		orc, err := base.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		want, err := io.ReadAll(orc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes through the limits, the layer has %d (or they differ)", len(got), len(want))
		}
	})
	t.Run("files", func(t *testing.T) {
		_, rc := open(limits{files: 50})
		_, err := io.Copy(io.Discard, rc)
		var le *gate.LimitError
		if !errors.As(err, &le) || le.Limit != gate.LimitLayerFiles {
			t.Fatalf("read: %v", err)
		}
		if _, err := rc.Read(make([]byte, 10)); !errors.As(err, &le) {
			t.Fatalf("read after the limit: %v", err)
		}
		rc.Close()
	})
	t.Run("stream error", func(t *testing.T) {
		// The layer's own error reaches the reader, after the bytes
		// before it: never a clean end.
		src := scantest.VulnerableAlpine()
		cf, err := src.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		img := &image{Image: failingImage{src}, limits: limits{bytes: 1 << 20, files: 1000}}
		l, err := img.LayerByDiffID(cf.RootFS.DiffIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.Copy(io.Discard, rc); err == nil || err.Error() != "upstream went away" {
			t.Fatalf("read: %v", err)
		}
	})
	t.Run("abandoned", func(t *testing.T) {
		img, rc := open(limits{bytes: 1 << 20})
		if _, err := io.ReadFull(rc, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		img.closeAll() // as Scan does when it ends
		rc.Close()
	})
}

// failingImage's layers fail half-way through.
type failingImage struct{ v1.Image }

type failingLayer struct{ v1.Layer }

type failingReader struct{ r io.Reader }

func (f failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("upstream went away")
	}
	return n, err
}

func (failingReader) Close() error { return nil }

func (f failingImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := f.Image.LayerByDiffID(h)
	return &failingLayer{l}, err
}

func (l *failingLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(rc)
	return failingReader{bytes.NewReader(b[:len(b)/2])}, nil
}

func TestFailClosed(t *testing.T) {
	s := newScanner(t, v1DB())
	if rep, err := s.Scan(context.Background(), failingImage{scantest.VulnerableAlpine()}, "broken"); err == nil {
		t.Fatalf("scan of a broken layer succeeded: %+v", rep)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if rep, err := s.Scan(ctx, scantest.VulnerableDebian(), "cancelled"); err == nil {
		t.Fatalf("cancelled scan succeeded: %+v", rep)
	}
	// The failures left nothing in the layer cache: the next scans read the
	// layers and find everything.
	equal(t, "alpine after failure", got(scan(t, s, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
	equal(t, "debian after cancel", got(scan(t, s, scantest.VulnerableDebian(), "d").Vulns), wantDebian)
}

func TestClose(t *testing.T) {
	s := newScanner(t, v1DB())
	if _, err := New(Options{DBDir: t.TempDir()}); err == nil {
		t.Fatal("a second Scanner opened")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scan(context.Background(), scantest.CleanAlpine(), "x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Scan after Close: %v", err)
	}
	if err := s.Import(context.Background(), bytes.NewReader(scantest.V1().Archive(t))); !errors.Is(err, ErrClosed) {
		t.Errorf("Import after Close: %v", err)
	}
	s2 := newScanner(t, v1DB())
	equal(t, "reopened", got(scan(t, s2, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
}

func TestDefaultLogger(t *testing.T) {
	if deferredAtInit {
		t.Fatal("after init, slog.Default was still Trivy's buffering handler")
	}
	var buf bytes.Buffer
	mine := slog.New(slog.NewTextHandler(&buf, nil))
	prev := slog.Default()
	slog.SetDefault(mine)
	defer slog.SetDefault(prev)

	s := newScanner(t, v1DB())
	scan(t, s, scantest.VulnerableAlpine(), "a")
	if err := s.Import(context.Background(), bytes.NewReader(scantest.V2().Archive(t))); err != nil {
		t.Fatal(err)
	}
	if slog.Default() != mine {
		t.Error("slog.Default replaced during a scan")
	}
	if !strings.Contains(buf.String(), "Detecting vulnerabilities") {
		t.Errorf("Trivy's messages did not reach slog.Default: %q", buf.String())
	}
}

func TestInventoryStripped(t *testing.T) {
	s := newScanner(t, v1DB())
	rep := scan(t, s, scantest.VulnerableAlpine(), "a")
	for _, p := range rep.Inventory.Packages {
		if len(p.InstalledFiles) != 0 || len(p.Licenses) != 0 || p.Maintainer != "" {
			t.Errorf("package %s not stripped: %+v", p.Name, p)
		}
		if p.SrcName == "" || p.Version == "" {
			t.Errorf("package %s lost what detection needs: %+v", p.Name, p)
		}
	}
}

func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := writeTarGz(&buf, dir); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func untarGz(t *testing.T, b []byte) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if err := untarDB(context.Background(), bytes.NewReader(b), dir); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, name := range []string{"trivy.db", "metadata.json"} {
		c, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(c)
	}
	return out
}

func writeTarGz(w io.Writer, dir string) error {
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.Name(), Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// emptyBolt returns a valid bbolt file without buckets.
func emptyBolt(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "empty.db")
	bdb, err := bolt.Open(p, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestForGate(t *testing.T) {
	s := newScanner(t, nil)
	g := s.ForGate()
	ctx := context.Background()
	if _, err := g.Scan(ctx, scantest.CleanAlpine(), "x"); !errors.Is(err, ErrNoDB) {
		t.Errorf("Scan without DB: %v, want ErrNoDB", err)
	}
	if err := s.Import(ctx, bytes.NewReader(scantest.V1().Archive(t))); err != nil {
		t.Fatal(err)
	}
	rep, err := g.Scan(ctx, scantest.VulnerableAlpine(), "a")
	if err != nil {
		t.Fatal(err)
	}
	mine := scan(t, s, scantest.VulnerableAlpine(), "a")
	if len(rep.Vulns) != len(mine.Vulns) || rep.DBVersion != g.DBVersion() || rep.Layers != 1 {
		t.Fatalf("gate report %+v", rep)
	}
	for i, v := range rep.Vulns {
		w := mine.Vulns[i]
		if v.ID != w.ID || v.Severity != w.Severity || v.PkgName != w.PkgName || v.Fixed != w.Fixed ||
			v.Title != w.Title || v.Target != w.Target || len(v.References) != len(w.References) {
			t.Errorf("vuln %d: %+v, want %+v", i, v, w)
		}
	}
	again, err := g.Rescan(ctx, rep.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Vulns) != len(rep.Vulns) {
		t.Errorf("rescan: %d vulns, want %d", len(again.Vulns), len(rep.Vulns))
	}
	if _, err := g.Rescan(ctx, json.RawMessage(`{"packages":"nope"}`)); err == nil {
		t.Error("rescan of a broken inventory succeeded")
	}
}

// blockingImage counts the reads of one layer and holds the first until
// release is closed.
type blockingImage struct {
	v1.Image
	diffID  v1.Hash
	reads   *atomic.Int32
	started chan struct{}
	release chan struct{}
}

type blockingLayer struct {
	v1.Layer
	img *blockingImage
}

func (b *blockingImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := b.Image.LayerByDiffID(h)
	if err != nil || h != b.diffID {
		return l, err
	}
	return &blockingLayer{l, b}, nil
}

func (l *blockingLayer) Uncompressed() (io.ReadCloser, error) {
	if l.img.reads.Add(1) == 1 {
		close(l.img.started)
		<-l.img.release
	}
	return l.Layer.Uncompressed()
}

// TestConcurrentScansShareLayers: two images on one base scanned at once
// analyse the base once.
func TestConcurrentScansShareLayers(t *testing.T) {
	s := newScanner(t, v1DB())
	base, err := scantest.CleanAlpineLayer().DiffID()
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	wrap := func(img v1.Image) v1.Image {
		return &blockingImage{Image: img, diffID: base, reads: &reads, started: started, release: release}
	}
	reps := make([]*Report, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, img := range []v1.Image{scantest.NodeApp(), scantest.JarApp()} {
		if i == 1 {
			<-started // the first scan is reading the base layer
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = s.Scan(context.Background(), wrap(img), "img")
		}()
	}
	// The second scan reaches the base the first has claimed, and waits for
	// it: only then is the first let go, so a second analysis (or a second
	// read) of the base cannot hide behind the first one's cached result.
	for deadline := time.Now().Add(time.Minute); s.flight.waiting.Load() != 1; {
		if time.Now().After(deadline) {
			close(release)
			wg.Wait()
			t.Fatalf("the second scan never waited for the first's claim on the base (reads: %d)", reads.Load())
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("base layer read %d times", n)
	}
	if a, b := reps[0].LayersAnalysed, reps[1].LayersAnalysed; a != 2 || b != 1 {
		t.Errorf("layers analysed: %d and %d, want 2 and 1", a, b)
	}
	equal(t, "node", got(reps[0].Vulns), wantNode)
	equal(t, "jar", got(reps[1].Vulns), []want{})
	if len(s.flight.inflight) != 0 {
		t.Errorf("claims left: %v", s.flight.inflight)
	}
}

func TestTrivyLogLevel(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(TrivyLogLevel(slog.NewTextHandler(&buf, nil), slog.LevelWarn)))
	defer slog.SetDefault(prev)

	s := newScanner(t, v1DB(), func(o *Options) { o.Log = slog.Default() })
	scan(t, s, scantest.VulnerableAlpine(), "a")
	out := buf.String()
	if strings.Contains(out, "Detecting vulnerabilities") {
		t.Errorf("Trivy's INFO lines passed: %q", out)
	}
	if !strings.Contains(out, "vulnerability DB loaded") {
		t.Errorf("our own INFO line was dropped: %q", out)
	}
}

// TestLayerCacheBusy: the layer cache held by another process (here another
// bbolt handle) neither blocks DB management nor fails scans. DB
// management cannot wait for the cache's lock if it never opens the
// cache: that is what is checked, not how long it took. The scan then
// finds the cache busy (after Trivy's lock timeout), says so and goes on
// with an in-memory cache.
func TestLayerCacheBusy(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for Trivy's 5 s cache lock timeout")
	}
	dir := t.TempDir()
	var logs bytes.Buffer // slog's handlers serialise their writes
	opts := Options{DBDir: filepath.Join(dir, "db"), CacheDir: filepath.Join(dir, "cache"),
		Log: slog.New(slog.NewTextHandler(&logs, nil))}
	scantest.WriteDB(t, opts.DBDir)
	if err := os.MkdirAll(filepath.Join(opts.CacheDir, "fanal"), 0o700); err != nil {
		t.Fatal(err)
	}
	held, err := bolt.Open(filepath.Join(opts.CacheDir, "fanal", "fanal.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.DBStatus(); err != nil {
		t.Fatal(err)
	}
	// Importing the release already loaded is a no-op swap.
	if err := s.Import(context.Background(), bytes.NewReader(scantest.V1().Archive(t))); err != nil {
		t.Fatal(err)
	}
	s.cacheMu.Lock()
	opened := s.cache != nil
	s.cacheMu.Unlock()
	if opened {
		t.Error("DB management opened the layer cache, so it waits for its lock")
	}
	equal(t, "busy cache", got(scan(t, s, scantest.VulnerableAlpine(), "a").Vulns), wantAlpine)
	if !strings.Contains(logs.String(), "layer cache in use by another process") {
		t.Errorf("the scan did not report the busy cache: %s", logs.String())
	}
}

func TestUntarDBNames(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range []struct{ name, content string }{
		{"./", ""}, {"./trivy.db", "db"}, {"/metadata.json", "meta"},
		{"sub/trivy.db", "nested"}, {"README", "ignored"},
	} {
		typ := byte(tar.TypeReg)
		if strings.HasSuffix(e.name, "/") {
			typ = tar.TypeDir
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Size: int64(len(e.content))}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.content); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	zw.Close()
	dir := t.TempDir()
	if err := untarDB(context.Background(), &buf, dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		names = append(names, e.Name()+"="+string(b))
	}
	if !slices.Equal(names, []string{"metadata.json=meta", "trivy.db=db"}) {
		t.Errorf("unpacked %q", names)
	}
}
