package scan

import (
	"github.com/gatehouse/gatehouse/gate"

	"cmp"
	"slices"

	dbTypes "github.com/aquasecurity/trivy-db/pkg/types"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/types"
)

// Severities in the order Report.Vulns is sorted: worst first.
var Severities = []string{"CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"}

// Report is the outcome of Scan or Rescan.
type Report struct {
	// Inventory is what the image holds; store it (it is JSON) to Rescan the
	// image after a DB update without reading its layers again.
	Inventory Inventory `json:"inventory"`
	// Vulns are de-duplicated and sorted by severity (worst first), then ID,
	// package, installed version and target.
	Vulns []Vuln `json:"vulns"`
	// DBVersion is Scanner.DBVersion of the DB the vulns were detected with.
	DBVersion string `json:"dbVersion"`
	// Warnings say where detection was necessarily partial, e.g. an OS that
	// Trivy has no advisories for, or an OS past its end of support. They are
	// not errors: the policy decides what they mean.
	Warnings []string `json:"warnings,omitempty"`
	// Layers is the number of layers of the image; LayersAnalysed the number
	// of them read and analysed by this scan, the others came from the layer
	// cache. Both are 0 for a Rescan.
	Layers         int `json:"layers,omitempty"`
	LayersAnalysed int `json:"layersAnalysed,omitempty"`
}

// Counts returns the number of vulns by severity (keys from Severities).
func (r *Report) Counts() map[string]int {
	m := make(map[string]int, len(Severities))
	for _, v := range r.Vulns {
		m[v.Severity]++
	}
	return m
}

// Vuln is one vulnerability of one installed package: the gate's type, so
// reports need no conversion.
type Vuln = gate.Vuln

// Inventory is the package inventory of an image: enough to detect its
// vulnerabilities again with another DB (Rescan). The package lists are
// Trivy's own types, stripped of what detection does not use.
type Inventory struct {
	// Name is the name the image was scanned under, used in targets.
	Name string `json:"name"`
	// ImageID is the digest of the image config.
	ImageID string `json:"imageID,omitempty"`
	// DiffIDs are the image's layers, bottom first.
	DiffIDs []string `json:"diffIDs,omitempty"`
	OS      OS       `json:"os"`
	// Repository is the OS package repository found in the image (e.g.
	// /etc/apk/repositories), which Trivy prefers to the OS release.
	Repository *ftypes.Repository `json:"repository,omitempty"`
	// Packages are the OS packages.
	Packages []ftypes.Package `json:"packages,omitempty"`
	// Applications are language package sets: lock files, binaries,
	// packages found one by one.
	Applications []ftypes.Application `json:"applications,omitempty"`
}

// OS is the operating system of an image. Family is empty when none was
// found, "none" when none was found but language packages were.
type OS struct {
	Family string `json:"family,omitempty"`
	Name   string `json:"name,omitempty"`
	// EOSL: the OS version is past its end of support (known after
	// detection, so a stored Inventory carries the value of its last scan).
	EOSL bool `json:"eosl,omitempty"`
	// Extended: the OS gets extended security support (e.g. Ubuntu ESM).
	Extended bool   `json:"extended,omitempty"`
	Supplier string `json:"supplier,omitempty"`
}

func (o OS) trivy() ftypes.OS {
	return ftypes.OS{
		Family:   ftypes.OSType(o.Family),
		Name:     o.Name,
		Eosl:     o.EOSL,
		Extended: o.Extended,
		Supplier: ftypes.Supplier(o.Supplier),
	}
}

func osFrom(o ftypes.OS) OS {
	return OS{
		Family:   string(o.Family),
		Name:     o.Name,
		EOSL:     o.Eosl,
		Extended: o.Extended,
		Supplier: string(o.Supplier),
	}
}

// NumPackages is the number of packages, OS and language, of the inventory.
func (inv *Inventory) NumPackages() int {
	n := len(inv.Packages)
	for _, app := range inv.Applications {
		n += len(app.Packages)
	}
	return n
}

// strip drops what vulnerability detection never reads and what makes an
// inventory big: every installed file of every OS package, licences,
// maintainers, lock file line numbers, layer history.
func strip(pkgs []ftypes.Package) []ftypes.Package {
	out := slices.Clone(pkgs)
	for i := range out {
		p := &out[i]
		p.InstalledFiles = nil
		p.Licenses = nil
		p.Maintainer = ""
		p.Locations = nil
		p.ExternalReferences = nil
		p.Layer = ftypes.Layer{DiffID: p.Layer.DiffID, Digest: p.Layer.Digest}
	}
	return out
}

// clone deep-copies the parts of the inventory that Trivy's detection
// modifies in place (it filters and sorts package slices), so a caller's
// Inventory is never changed by Rescan.
func (inv *Inventory) clone() Inventory {
	c := *inv
	c.Packages = slices.Clone(inv.Packages)
	c.Applications = make([]ftypes.Application, len(inv.Applications))
	for i, app := range inv.Applications {
		app.Packages = slices.Clone(app.Packages)
		c.Applications[i] = app
	}
	if inv.Repository != nil {
		r := *inv.Repository
		c.Repository = &r
	}
	return c
}

func severityRank(s string) int {
	if i := slices.Index(Severities, s); i >= 0 {
		return i
	}
	return len(Severities)
}

// vulnsFrom flattens Trivy's results into Vulns, de-duplicated and sorted.
func vulnsFrom(results types.Results) []Vuln {
	type key struct{ id, pkg, path, installed, target string }
	seen := map[key]bool{}
	vulns := []Vuln{}
	for _, res := range results {
		for _, dv := range res.Vulnerabilities {
			v := Vuln{
				ID:             dv.VulnerabilityID,
				Severity:       cmp.Or(dv.Severity, dbTypes.SeverityUnknown.String()),
				SeveritySource: string(dv.SeveritySource),
				PkgName:        dv.PkgName,
				PkgType:        string(res.Type),
				PkgPath:        dv.PkgPath,
				PURL:           purlOf(dv),
				Installed:      dv.InstalledVersion,
				Fixed:          dv.FixedVersion,
				Status:         dv.Status.String(),
				Title:          dv.Title,
				Description:    dv.Description,
				PrimaryURL:     dv.PrimaryURL,
				References:     slices.Clone(dv.References),
				Target:         res.Target,
			}
			k := key{v.ID, v.PkgName, v.PkgPath, v.Installed, v.Target}
			if seen[k] {
				continue
			}
			seen[k] = true
			vulns = append(vulns, v)
		}
	}
	slices.SortFunc(vulns, func(a, b Vuln) int {
		return cmp.Or(
			cmp.Compare(severityRank(a.Severity), severityRank(b.Severity)),
			cmp.Compare(a.ID, b.ID),
			cmp.Compare(a.PkgName, b.PkgName),
			cmp.Compare(a.Installed, b.Installed),
			cmp.Compare(a.Target, b.Target),
			cmp.Compare(a.PkgPath, b.PkgPath),
		)
	})
	return vulns
}

// purlOf is the package URL of the vulnerable package, empty when Trivy has
// none for its type.
func purlOf(dv types.DetectedVulnerability) string {
	if dv.PkgIdentifier.PURL == nil {
		return ""
	}
	return dv.PkgIdentifier.PURL.String()
}
