package vex

import (
	"cmp"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	openvex "github.com/openvex/go-vex/pkg/vex"
	"github.com/package-url/packageurl-go"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
	"github.com/aquasecurity/trivy/pkg/sbom/core"
	"github.com/aquasecurity/trivy/pkg/types"

	"github.com/gatehouse/gatehouse/gate/records"
)

// Image identifies the scanned image for product matching.
type Image struct {
	// Registry is the upstream host (with its port, if any), e.g.
	// "docker.io"; Repository the repository in it, e.g. "library/alpine";
	// Digest the manifest digest, e.g. "sha256:...".
	Registry, Repository string
	Digest               string
	// Arch and Tag are optional (empty: unknown). A statement whose image
	// PURL carries an arch or tag qualifier names this image only when they
	// are known and equal.
	Arch, Tag string
}

// Suppression says which statement removed which finding.
type Suppression struct {
	ID, PkgName, PURL string
	Status            string // not_affected or fixed
	// Justification is the statement's justification (OpenVEX), or its
	// impact statement when it has none; for CSAF the impact threat's
	// details.
	Justification string
	Source        string // the document's Source
}

// Apply returns the findings no statement suppresses, and the suppressions,
// both in the order of vulns.
//
// A statement suppresses a vulnerability when its status is not_affected or
// fixed and it names the vulnerability (its ID, or an alias) for
//   - the package itself: the package's PURL is the statement's product, or
//   - this image, with the package as subcomponent (or with no
//     subcomponents: the whole image): the product is the image's pkg:oci
//     PURL, pkg:oci/<last repository element>@<digest>?repository_url=
//     <registry>/<repository>&arch=<arch>&tag=<tag>.
//
// PURLs are compared as OpenVEX (and Trivy for CSAF) compares them: type,
// namespace and name equal; the statement's version, when it has one, equal;
// every qualifier of the statement present and equal in ours (qualifiers
// the statement leaves out match anything). So a product written without
// qualifiers, or with only repository_url, names this image too. Docker Hub
// is spelt docker.io or index.docker.io (what Trivy writes), and an official
// image with or without "library/".
//
// Fail closed, never suppress on a guess:
//   - A vulnerability without a PURL (or with one that does not parse) is
//     never suppressed: no statement can be shown to name its package, and a
//     statement naming the image with subcomponents would otherwise match
//     every package. Reports stored before PURLs were recorded need a rescan.
//   - An image product must pin the image by digest or by repository_url: a
//     statement that would name just as well an image of the same last name
//     element in any repository (pkg:oci/alpine, pkg:oci/alpine?tag=3.22)
//     does not suppress. (Found by asking the document about a decoy image of
//     that name with another digest and repository.)
//   - Within an OpenVEX document the statement with the latest timestamp
//     (its own, else the document's) among all that match decides; when
//     several share that time, all of them must suppress.
//   - OpenVEX documents are weighed together (unlike Trivy, which takes
//     each alone): the latest matching statement of any of them decides, so
//     a vendor's later "affected" revokes its earlier "not_affected" even
//     when both stay attached. CSAF advisories, without per-statement
//     times, are asked after them, each alone.
//   - A document whose code panics on a vulnerability does not suppress it.
func Apply(img Image, vulns []records.Vuln, docs []*Document) (kept []records.Vuln, suppressed []Suppression) {
	images := img.purls()
	decoy := img.decoy()
	kept = make([]records.Vuln, 0, len(vulns))
	for _, v := range vulns {
		if s, ok := suppress(v, images, decoy, docs); ok {
			suppressed = append(suppressed, s)
			continue
		}
		kept = append(kept, v)
	}
	return kept, suppressed
}

// query is one (product, subcomponent) pair a document is asked about.
type query struct {
	product, sub *core.Component
	// decoy, for an image product, is an image of the same name that is not
	// this one: a statement that names it too names no image in particular.
	decoy *core.Component
}

func component(p *packageurl.PackageURL) *core.Component {
	return &core.Component{PkgIdentifier: ftypes.PkgIdentifier{PURL: p}}
}

func suppress(v records.Vuln, images []*packageurl.PackageURL, decoy *packageurl.PackageURL, docs []*Document) (Suppression, bool) {
	if v.ID == "" || v.PURL == "" {
		return Suppression{}, false
	}
	p, err := packageurl.FromString(v.PURL)
	if err != nil {
		return Suppression{}, false
	}
	pkg := component(&p)
	dv := types.DetectedVulnerability{
		VulnerabilityID:  v.ID,
		PkgName:          v.PkgName,
		InstalledVersion: v.Installed,
		PkgIdentifier:    pkg.PkgIdentifier,
	}
	// The package as product, with no subcomponent (an empty component, not
	// nil: Trivy's CSAF relationship matching dereferences it).
	queries := []query{{product: pkg, sub: &core.Component{}}}
	for _, img := range images {
		queries = append(queries, query{product: component(img), sub: pkg, decoy: component(decoy)})
	}
	// OpenVEX documents are weighed together: the latest statement of any
	// of them decides, so that a newer "affected" (a vendor revoking a
	// not_affected) is not outweighed by an older document kept around.
	// CSAF advisories, which carry no per-statement time, decide alone.
	var stamped []stampedStatement
	for _, d := range docs {
		if d.openVEX != nil {
			stamped = append(stamped, d.matchOpenVEX(dv, queries)...)
		}
	}
	if s, ok := decideLatest(stamped); ok {
		s.ID, s.PkgName, s.PURL = v.ID, v.PkgName, v.PURL
		return s, true
	}
	for _, d := range docs {
		if d.openVEX != nil {
			continue
		}
		if s, ok := d.decide(dv, queries); ok {
			s.ID, s.PkgName, s.PURL, s.Source = v.ID, v.PkgName, v.PURL, d.Source
			return s, true
		}
	}
	return Suppression{}, false
}

// stampedStatement is a statement that matched, when it was made, and the
// document it is in.
type stampedStatement struct {
	st  openvex.Statement
	at  time.Time
	doc *Document
}

// decide says whether the document suppresses dv for any of queries; a
// panic in Trivy's or openvex's code means no.
func (d *Document) decide(dv types.DetectedVulnerability, queries []query) (s Suppression, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s, ok = Suppression{}, false
		}
	}()
	if d.openVEX != nil {
		return d.decideOpenVEX(dv, queries)
	}
	return d.decideCSAF(dv, queries)
}

func suppresses(st openvex.Status) bool {
	return st == openvex.StatusNotAffected || st == openvex.StatusFixed
}

// decideOpenVEX weighs every statement that matches any query together.
// Trivy's own NotAffected takes the last statement of each query alone
// (and, of statements with equal timestamps, the first in the document), so
// a later "affected" about the image would not undo a "not_affected" about
// the package, nor one without a timestamp an earlier one.
func (d *Document) decideOpenVEX(dv types.DetectedVulnerability, queries []query) (Suppression, bool) {
	return decideLatest(d.matchOpenVEX(dv, queries))
}

// matchOpenVEX returns the statements that match any query, with their
// time; none when the document's code panics.
func (d *Document) matchOpenVEX(dv types.DetectedVulnerability, queries []query) (matched []stampedStatement) {
	defer func() {
		if r := recover(); r != nil {
			matched = nil
		}
	}()
	for _, q := range queries {
		for _, st := range d.openVEX.Matches(dv, q.product, q.sub) {
			if q.decoy != nil && suppresses(st.Status) &&
				st.Matches(dv.VulnerabilityID, q.decoy.PkgIdentifier.PURL.String(), []string{q.sub.PkgIdentifier.PURL.String()}) {
				continue // names no image in particular
			}
			matched = append(matched, stampedStatement{st: st, at: d.timestamp(st), doc: d})
		}
	}
	return matched
}

// decideLatest: of the matched statements, those made last decide, and
// all of them must suppress.
func decideLatest(matched []stampedStatement) (Suppression, bool) {
	var latest time.Time
	for _, m := range matched {
		if m.at.After(latest) {
			latest = m.at
		}
	}
	var decisive *stampedStatement
	for i, m := range matched {
		if !m.at.Equal(latest) {
			continue
		}
		if !suppresses(m.st.Status) {
			return Suppression{}, false
		}
		decisive = &matched[i]
	}
	if decisive == nil {
		return Suppression{}, false
	}
	return Suppression{
		Status:        string(decisive.st.Status),
		Justification: cmp.Or(string(decisive.st.Justification), decisive.st.ImpactStatement),
		Source:        decisive.doc.Source,
	}, true
}

// timestamp is when the statement was made: its own timestamp, else the
// document's.
func (d *Document) timestamp(st openvex.Statement) time.Time {
	if st.Timestamp != nil && !st.Timestamp.IsZero() {
		return *st.Timestamp
	}
	return d.issued
}

// decideCSAF asks Trivy's CSAF code, which reads the advisory's
// known_not_affected and fixed product lists (and their relationships).
func (d *Document) decideCSAF(dv types.DetectedVulnerability, queries []query) (Suppression, bool) {
	for _, q := range queries {
		m, ok := d.doc.NotAffected(dv, q.product, q.sub)
		if !ok {
			continue
		}
		if q.decoy != nil {
			if _, also := d.doc.NotAffected(dv, q.decoy, q.sub); also {
				continue // names no image in particular
			}
		}
		return Suppression{Status: string(m.Status), Justification: m.Statement}, true
	}
	return Suppression{}, false
}

// dockerHub are the names Docker Hub goes by in image references.
var dockerHub = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

// purls returns the image's pkg:oci PURLs, one for each way of writing its
// repository_url, with every qualifier known (a statement's qualifiers need
// only be a subset). None without a valid digest.
func (img Image) purls() []*packageurl.PackageURL {
	if _, err := v1.NewHash(img.Digest); err != nil || img.Repository == "" || img.Registry == "" {
		return nil
	}
	repo := strings.ToLower(img.Repository)
	reg := strings.ToLower(img.Registry)
	urls := []string{reg + "/" + repo}
	if dockerHub[reg] {
		// go-containerregistry, and so Trivy, names Docker Hub index.docker.io.
		urls = []string{"index.docker.io/" + repo, "docker.io/" + repo}
		if short, ok := strings.CutPrefix(repo, "library/"); ok {
			urls = append(urls, "index.docker.io/"+short, "docker.io/"+short)
		}
	}
	out := make([]*packageurl.PackageURL, 0, len(urls))
	for _, u := range urls {
		out = append(out, img.purl(img.Digest, u))
	}
	return out
}

// decoy is the PURL of an image that has this one's name, arch and tag but
// another digest and repository.
func (img Image) decoy() *packageurl.PackageURL {
	return img.purl(decoyDigest(img.Digest), "gatehouse.invalid/decoy/"+imageName(img.Repository))
}

func decoyDigest(not string) string {
	d := "sha256:" + strings.Repeat("0", 64)
	if d == not {
		d = "sha256:" + strings.Repeat("1", 64)
	}
	return d
}

// imageName is the name of an image's PURL: the last element of its
// repository, lower-cased, as Trivy's purl.New makes it.
func imageName(repo string) string {
	repo = strings.ToLower(repo)
	return repo[strings.LastIndex(repo, "/")+1:]
}

func (img Image) purl(digest, repositoryURL string) *packageurl.PackageURL {
	qs := packageurl.Qualifiers{{Key: "repository_url", Value: repositoryURL}}
	if img.Arch != "" {
		qs = append(qs, packageurl.Qualifier{Key: "arch", Value: img.Arch})
	}
	if img.Tag != "" {
		qs = append(qs, packageurl.Qualifier{Key: "tag", Value: img.Tag})
	}
	return packageurl.NewPackageURL(packageurl.TypeOCI, "", imageName(img.Repository), digest, qs, "")
}
