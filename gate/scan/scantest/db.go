// Package scantest builds test fixtures for gatehouse's vulnerability gate:
// a small Trivy vulnerability DB written with trivy-db's own writer API, in
// two releases, and deterministic synthetic images whose package databases
// match its advisories. Nothing here touches the network.
//
// The fixture DB (V1) knows these vulnerabilities:
//
//	ID              severity  ecosystem    package (as keyed)       installed in           fixed in
//	CVE-2099-1001   CRITICAL  alpine 3.22  openssl (origin)         VulnerableAlpine       3.5.1-r0
//	CVE-2099-1002   MEDIUM    alpine 3.22  busybox                  VulnerableAlpine       1.37.0-r19
//	CVE-2099-2001   HIGH      debian 12    openssl (source)         VulnerableDebian       3.0.16-1~deb12u1
//	CVE-2099-2002   MEDIUM    debian 12    glibc (source)           VulnerableDebian       - (affected)
//	CVE-2099-2003   LOW       debian 12    tar                      VulnerableDebian       - (will_not_fix)
//	CVE-2099-3001   HIGH      npm          lodash                   NodeApp                4.17.21
//	CVE-2099-3002   CRITICAL  npm          minimist                 NodeApp                - (no patch)
//	CVE-2099-4001   HIGH      go           stdlib                   GoApp                  99.0.0
//
// V2 adds CVE-2099-9001 (CRITICAL, alpine musl, fixed in 1.2.5-r11), which
// hits CleanAlpine (clean under V1) and every image built on it.
package scantest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/metadata"
	"github.com/aquasecurity/trivy-db/pkg/types"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc/bucket"
	"github.com/aquasecurity/trivy-db/pkg/vulnsrc/vulnerability"
)

// Vulnerability IDs of the fixture DB (see the package doc).
const (
	CVEAlpineOpenSSL = "CVE-2099-1001"
	CVEAlpineBusybox = "CVE-2099-1002"
	CVEDebianOpenSSL = "CVE-2099-2001"
	CVEDebianGlibc   = "CVE-2099-2002"
	CVEDebianTar     = "CVE-2099-2003"
	CVENpmLodash     = "CVE-2099-3001"
	CVENpmMinimist   = "CVE-2099-3002"
	CVEGoStdlib      = "CVE-2099-4001"
	// CVEAlpineMusl is only in V2.
	CVEAlpineMusl = "CVE-2099-9001"
)

// Bucket names of the fixture DB, as trivy-db names them.
var (
	AlpineBucket = bucket.NewAlpine("3.22").Name()
	DebianBucket = bucket.NewDebian("12").Name()
	NpmBucket    = mustLang(bucket.NewNpm(types.DataSource{ID: vulnerability.GHSA, Name: "GitHub Security Advisory npm", URL: "https://github.com/advisories?query=type%3Areviewed+ecosystem%3Anpm"}))
	GoBucket     = mustLang(bucket.NewGo(types.DataSource{ID: vulnerability.GoVulnDB, Name: "The Go Vulnerability Database", URL: "https://pkg.go.dev/vuln/"}))
)

func mustLang(b bucket.DataSourceBucket, err error) bucket.DataSourceBucket {
	if err != nil {
		panic(err)
	}
	return b
}

// Vulnerability is a record of trivy-db's "vulnerability" bucket.
type Vulnerability struct {
	ID          string
	Severity    string // CRITICAL, HIGH, MEDIUM, LOW
	Title       string
	Description string
	References  []string
}

// Advisory is a record of an ecosystem bucket: vulnerability VulnID affects
// package Pkg of Bucket.
type Advisory struct {
	Bucket string
	// Pkg is the package name as the ecosystem keys it: the origin package
	// for Alpine, the source package for Debian, the package for languages.
	Pkg    string
	VulnID string
	// Fixed is the fixed version of an OS package, or the patched version
	// of a language package; empty when there is no fix.
	Fixed string
	// Vulnerable are the vulnerable version ranges of a language package
	// (e.g. "<4.17.21"); derived from Fixed when empty.
	Vulnerable []string
	// Status of an unfixed OS advisory: "affected", "will_not_fix", ...
	Status string
}

// DB is a fixture vulnerability DB.
type DB struct {
	UpdatedAt, NextUpdate time.Time
	Vulnerabilities       []Vulnerability
	Advisories            []Advisory
}

var dataSources = map[string]types.DataSource{
	AlpineBucket:     {ID: vulnerability.Alpine, Name: "Alpine Secdb", URL: "https://secdb.alpinelinux.org/"},
	DebianBucket:     {ID: vulnerability.Debian, Name: "Debian Security Tracker", URL: "https://salsa.debian.org/security-tracker-team/security-tracker"},
	NpmBucket.Name(): NpmBucket.DataSource(),
	GoBucket.Name():  GoBucket.DataSource(),
}

func ref(id string) []string {
	return []string{"https://nvd.nist.gov/vuln/detail/" + id, "https://example.com/advisories/" + id}
}

// V1 is the first fixture DB release.
func V1() DB {
	return DB{
		UpdatedAt:  time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
		NextUpdate: time.Date(2099, 1, 1, 6, 0, 0, 0, time.UTC),
		Vulnerabilities: []Vulnerability{
			{CVEAlpineOpenSSL, "CRITICAL", "openssl: remote code execution in the TLS handshake", "A crafted ClientHello overflows a heap buffer in OpenSSL before 3.5.1.", ref(CVEAlpineOpenSSL)},
			{CVEAlpineBusybox, "MEDIUM", "busybox: wget follows redirects to file:// URLs", "BusyBox wget before 1.37.0-r19 follows a redirect to a local file.", ref(CVEAlpineBusybox)},
			{CVEDebianOpenSSL, "HIGH", "openssl: timing side channel in RSA decryption", "OpenSSL 3.0 before 3.0.16 leaks timing information in RSA decryption.", ref(CVEDebianOpenSSL)},
			{CVEDebianGlibc, "MEDIUM", "glibc: stack exhaustion in regcomp", "A crafted regular expression exhausts the stack in glibc's regcomp.", ref(CVEDebianGlibc)},
			{CVEDebianTar, "LOW", "tar: path traversal with --absolute-names", "GNU tar writes outside the target directory when asked to keep absolute names.", ref(CVEDebianTar)},
			{CVENpmLodash, "HIGH", "lodash: prototype pollution in zipObjectDeep", "lodash before 4.17.21 lets zipObjectDeep pollute Object.prototype.", ref(CVENpmLodash)},
			{CVENpmMinimist, "CRITICAL", "minimist: prototype pollution", "minimist lets crafted arguments pollute Object.prototype; no fixed release exists.", ref(CVENpmMinimist)},
			{CVEGoStdlib, "HIGH", "net/http: request smuggling", "The Go standard library's HTTP/1 server accepts a crafted chunked body (fixture: every Go release is affected).", ref(CVEGoStdlib)},
		},
		Advisories: []Advisory{
			{Bucket: AlpineBucket, Pkg: "openssl", VulnID: CVEAlpineOpenSSL, Fixed: "3.5.1-r0"},
			{Bucket: AlpineBucket, Pkg: "busybox", VulnID: CVEAlpineBusybox, Fixed: "1.37.0-r19"},
			{Bucket: DebianBucket, Pkg: "openssl", VulnID: CVEDebianOpenSSL, Fixed: "3.0.16-1~deb12u1"},
			{Bucket: DebianBucket, Pkg: "glibc", VulnID: CVEDebianGlibc, Status: "affected"},
			{Bucket: DebianBucket, Pkg: "tar", VulnID: CVEDebianTar, Status: "will_not_fix"},
			{Bucket: NpmBucket.Name(), Pkg: "lodash", VulnID: CVENpmLodash, Fixed: "4.17.21"},
			{Bucket: NpmBucket.Name(), Pkg: "minimist", VulnID: CVENpmMinimist, Vulnerable: []string{">=0.0.1"}},
			{Bucket: GoBucket.Name(), Pkg: "stdlib", VulnID: CVEGoStdlib, Fixed: "99.0.0"},
		},
	}
}

// V2 is the next release: V1 plus CVEAlpineMusl, built six hours later.
func V2() DB {
	d := V1()
	d.UpdatedAt = d.UpdatedAt.Add(6 * time.Hour)
	d.NextUpdate = d.NextUpdate.Add(6 * time.Hour)
	d.Vulnerabilities = append(d.Vulnerabilities, Vulnerability{CVEAlpineMusl, "CRITICAL",
		"musl: buffer overflow in iconv", "musl's iconv writes past its output buffer converting to GB18030.", ref(CVEAlpineMusl)})
	d.Advisories = append(d.Advisories, Advisory{Bucket: AlpineBucket, Pkg: "musl", VulnID: CVEAlpineMusl, Fixed: "1.2.5-r11"})
	return d
}

// WriteDir writes the DB into dir as trivy.db and metadata.json (the layout
// of scan.Options.DBDir). It does not touch trivy-db's global handle: it
// opens its own bbolt file and calls trivy-db's writer methods on its
// transaction, so a Scanner may be open meanwhile.
func (d DB) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	p := db.Path(dir)
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return err
	}
	bdb, err := bolt.Open(p, 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	dbc := db.Config{}
	err = bdb.Update(func(tx *bolt.Tx) error {
		for name, ds := range dataSources {
			if err := dbc.PutDataSource(tx, name, ds); err != nil {
				return err
			}
		}
		for _, v := range d.Vulnerabilities {
			sev, err := types.NewSeverity(v.Severity)
			if err != nil {
				return err
			}
			published := d.UpdatedAt.AddDate(0, -1, 0)
			err = dbc.PutVulnerability(tx, v.ID, types.Vulnerability{
				Title:       v.Title,
				Description: v.Description,
				Severity:    v.Severity,
				VendorSeverity: types.VendorSeverity{
					vulnerability.NVD: sev,
				},
				CVSS: types.VendorCVSS{
					vulnerability.NVD: {V3Score: cvss(sev)},
				},
				References:    v.References,
				PublishedDate: &published,
			})
			if err != nil {
				return err
			}
		}
		for _, a := range d.Advisories {
			adv := &types.Advisory{FixedVersion: a.Fixed, Status: types.NewStatus(a.Status)}
			if _, lang := langBuckets[a.Bucket]; lang {
				adv = &types.Advisory{VulnerableVersions: a.Vulnerable}
				if a.Fixed != "" {
					adv.PatchedVersions = []string{a.Fixed}
					if len(a.Vulnerable) == 0 {
						adv.VulnerableVersions = []string{"<" + a.Fixed}
					}
				}
			}
			if err := dbc.PutAdvisory(tx, []string{a.Bucket, a.Pkg}, a.VulnID, adv); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write fixture DB: %w", err)
	}
	return metadata.NewClient(dir).Update(metadata.Metadata{
		Version:    db.SchemaVersion,
		UpdatedAt:  d.UpdatedAt,
		NextUpdate: d.NextUpdate,
	})
}

var langBuckets = map[string]bool{NpmBucket.Name(): true, GoBucket.Name(): true}

func cvss(s types.Severity) float64 {
	switch s {
	case types.SeverityCritical:
		return 9.8
	case types.SeverityHigh:
		return 7.5
	case types.SeverityMedium:
		return 5.3
	default:
		return 3.1
	}
}

// ArchiveBytes returns the DB as a db.tar.gz holding trivy.db and
// metadata.json, like the layer of the trivy-db OCI artifact.
func (d DB) ArchiveBytes() ([]byte, error) {
	dir, err := os.MkdirTemp("", "scantest-db-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := d.WriteDir(dir); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range []string{"trivy.db", "metadata.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: d.UpdatedAt, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes the DB into dir (see WriteDir), failing t on error.
func (d DB) Write(t testing.TB, dir string) {
	t.Helper()
	if err := d.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
}

// Archive returns the DB as a db.tar.gz (see ArchiveBytes), failing t on
// error.
func (d DB) Archive(t testing.TB) []byte {
	t.Helper()
	b, err := d.ArchiveBytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WriteDB writes V1 into dir.
func WriteDB(t testing.TB, dir string) { V1().Write(t, dir) }

// CorruptArchive returns a db.tar.gz whose trivy.db is not a bbolt file.
func CorruptArchive(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	files := map[string][]byte{
		"trivy.db":      bytes.Repeat([]byte("not a bbolt file "), 512),
		"metadata.json": []byte(`{"Version":2,"UpdatedAt":"2099-02-01T00:00:00Z","NextUpdate":"2099-02-01T06:00:00Z"}`),
	}
	for _, name := range []string{"trivy.db", "metadata.json"} {
		b := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
