// Package vex reads VEX documents (OpenVEX and CSAF) with Trivy's own VEX
// code and applies their statements to the vulnerabilities found in an image:
// a not_affected or fixed statement that names the image (or the package)
// removes the finding, and says so (Suppression).
//
// CycloneDX VEX is refused: its statements point into one CycloneDX SBOM
// (BOM-Link) and Trivy applies them only to a scan of that SBOM, never to an
// image scan.
package vex

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/gocsaf/csaf/v3/csaf"
	openvex "github.com/openvex/go-vex/pkg/vex"
	"github.com/package-url/packageurl-go"

	"github.com/aquasecurity/trivy/pkg/sbom"
	"github.com/aquasecurity/trivy/pkg/sbom/core"
	"github.com/aquasecurity/trivy/pkg/types"
	trivyvex "github.com/aquasecurity/trivy/pkg/vex"
)

// MaxSize is the size of the largest VEX document Parse and Load accept.
// Vendors' CSAF advisories run to a few MiB; more is refused rather than
// decoded (three times: Trivy tries each format in turn).
const MaxSize = 16 << 20

// Formats of a Document.
const (
	FormatOpenVEX = "openvex"
	FormatCSAF    = "csaf"
)

// ErrCycloneDX is returned for a CycloneDX VEX document.
var ErrCycloneDX = errors.New("CycloneDX VEX is not supported: its statements refer to the components of one CycloneDX SBOM (BOM-Link) " +
	"and Trivy applies them only to a scan of that SBOM, not to an image; publish the statements as OpenVEX or CSAF")

// Document is one parsed VEX document (OpenVEX or CSAF) with where it came
// from. It is safe for concurrent use.
type Document struct {
	// Source says where the document came from, e.g.
	// "file /etc/gatehouse/vex/app.json" or "attestation by key=sha256:...";
	// suppressions name it.
	Source string
	// Format is FormatOpenVEX or FormatCSAF.
	Format string

	doc trivyvex.VEX
	// openVEX is doc when Format is FormatOpenVEX: its statements are
	// weighed by Apply itself (see decideOpenVEX).
	openVEX *trivyvex.OpenVEX
	// issued is the OpenVEX document's timestamp, which its statements
	// without one inherit.
	issued time.Time
}

// Parse reads one VEX document of at most MaxSize bytes. Anything that is not
// an OpenVEX or CSAF document, or that Trivy's VEX code cannot read, is an
// error; CycloneDX VEX is ErrCycloneDX.
func Parse(source string, data []byte) (*Document, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("VEX document from %s: %d bytes, more than %d", source, len(data), MaxSize)
	}
	// Trivy decodes with json.Decoder, which ignores whatever follows the
	// first value: a document is one JSON value and nothing else.
	if !json.Valid(data) {
		return nil, fmt.Errorf("VEX document from %s: not valid JSON", source)
	}
	if cdx, err := sbom.IsCycloneDXJSON(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("VEX document from %s: %w", source, err)
	} else if cdx {
		return nil, fmt.Errorf("VEX document from %s: %w", source, ErrCycloneDX)
	}
	doc, err := newDocument(data)
	if err != nil {
		return nil, fmt.Errorf("VEX document from %s: %w", source, err)
	}
	d := &Document{Source: source, doc: doc}
	var ids []string
	switch v := doc.(type) {
	case *trivyvex.OpenVEX:
		d.Format, d.openVEX = FormatOpenVEX, v
		if d.issued, ids, err = checkOpenVEX(data); err != nil {
			return nil, fmt.Errorf("OpenVEX document from %s: %w", source, err)
		}
	case *trivyvex.CSAF:
		d.Format = FormatCSAF
		if ids, err = csafIDs(data); err != nil {
			return nil, fmt.Errorf("CSAF document from %s: %w", source, err)
		}
	default:
		return nil, fmt.Errorf("VEX document from %s: unsupported format %T", source, doc)
	}
	// Trivy's CSAF code dereferences what a hostile advisory may leave out
	// (a vulnerability without a CVE, a product tree): find out now, not at
	// pull time.
	if err := d.probe(ids); err != nil {
		return nil, fmt.Errorf("VEX document from %s: %w", source, err)
	}
	return d, nil
}

// newDocument hands data to Trivy's vex.NewDocument, which reads only named
// files, through a temporary file.
func newDocument(data []byte) (doc trivyvex.VEX, err error) {
	f, err := os.CreateTemp("", "gatehouse-vex-*.json")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			doc, err = nil, fmt.Errorf("malformed VEX document: %v", r)
		}
	}()
	// The empty report is used only for CycloneDX, refused before.
	return trivyvex.NewDocument(f.Name(), &types.Report{})
}

// checkOpenVEX returns the document's timestamp and the vulnerabilities it
// names, and refuses statements whose status is none of OpenVEX's four (a
// misspelt "not-affected" would otherwise be silently ignored).
func checkOpenVEX(data []byte) (issued time.Time, ids []string, err error) {
	var doc openvex.VEX
	if err := json.Unmarshal(data, &doc); err != nil {
		return time.Time{}, nil, err
	}
	for i, st := range doc.Statements {
		if !st.Status.Valid() {
			return time.Time{}, nil, fmt.Errorf("statement %d (%s): invalid status %q", i+1, st.Vulnerability.Name, st.Status)
		}
		ids = append(ids, string(st.Vulnerability.Name))
	}
	if doc.Timestamp != nil {
		issued = *doc.Timestamp
	}
	return issued, ids, nil
}

// csafIDs returns the CVEs the advisory names.
func csafIDs(data []byte) ([]string, error) {
	var adv csaf.Advisory
	if err := json.Unmarshal(data, &adv); err != nil {
		return nil, err
	}
	var ids []string
	for _, v := range adv.Vulnerabilities {
		if v != nil && v.CVE != nil {
			ids = append(ids, string(*v.CVE))
		}
	}
	return ids, nil
}

// probe asks the document about each vulnerability it names (and one it
// does not), for a package and an image it cannot name, so that code that
// panics on this document does it here.
func (d *Document) probe(ids []string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed VEX document: %v", r)
		}
	}()
	pkg := packageurl.PackageURL{Type: "generic", Name: "gatehouse-probe", Version: "0"}
	img := packageurl.PackageURL{Type: packageurl.TypeOCI, Name: "gatehouse-probe", Version: decoyDigest("")}
	pkgC, imgC := component(&pkg), component(&img)
	for _, id := range append(ids, "GATEHOUSE-PROBE") {
		vuln := types.DetectedVulnerability{VulnerabilityID: id, PkgIdentifier: pkgC.PkgIdentifier}
		d.doc.NotAffected(vuln, pkgC, &core.Component{})
		d.doc.NotAffected(vuln, imgC, pkgC)
	}
	return nil
}

// Load parses the VEX document in file path, or every *.json file in
// directory path (not its subdirectories), in name order. Sources are
// "file <path>".
func Load(path string) ([]*Document, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	paths := []string{path}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		paths = paths[:0]
		for _, e := range entries {
			if filepath.Ext(e.Name()) != ".json" {
				continue
			}
			p := filepath.Join(path, e.Name())
			// A link is followed; a directory named *.json is not a document.
			if fi, err := os.Stat(p); err != nil {
				return nil, err
			} else if fi.IsDir() {
				continue
			}
			paths = append(paths, p)
		}
	}
	docs := make([]*Document, 0, len(paths))
	for _, p := range paths {
		data, err := readFile(p)
		if err != nil {
			return nil, err
		}
		d, err := Parse("file "+p, data)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// readFile reads the file at path, of at most MaxSize bytes.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("VEX document %s: more than %d bytes", path, MaxSize)
	}
	return data, nil
}
