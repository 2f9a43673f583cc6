package vex_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/gate/scan/scantest"
	"github.com/gatehouse/gatehouse/gate/vex"
)

func TestMain(m *testing.M) {
	// Importing Trivy installs its buffering default logger; Trivy's CSAF
	// code logs every suppression at INFO.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	goleak.VerifyTestMain(m)
}

var (
	digest      = "sha256:" + strings.Repeat("a", 64)
	otherDigest = "sha256:" + strings.Repeat("b", 64)
	img         = vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: digest, Arch: "amd64"}

	// The PURLs are those Trivy gives scantest.VulnerableAlpine's packages
	// (gate/scan's TestVulnPURLs pins them).
	busyboxPURL = "pkg:apk/alpine/busybox@1.37.0-r18?arch=x86_64&distro=3.22.1"
	libsslPURL  = "pkg:apk/alpine/libssl3@3.5.0-r0?arch=x86_64&distro=3.22.1"
	vulns       = []records.Vuln{
		{ID: scantest.CVEAlpineOpenSSL, Severity: "CRITICAL", PkgName: "libcrypto3", PURL: "pkg:apk/alpine/libcrypto3@3.5.0-r0?arch=x86_64&distro=3.22.1"},
		{ID: scantest.CVEAlpineOpenSSL, Severity: "CRITICAL", PkgName: "libssl3", PURL: libsslPURL},
		{ID: scantest.CVEAlpineBusybox, Severity: "MEDIUM", PkgName: "busybox", PURL: busyboxPURL},
	}
	// trivyImagePURL is the PURL Trivy's purl.New gives img.
	trivyImagePURL = "pkg:oci/alpine@" + digest + "?repository_url=index.docker.io/library/alpine&arch=amd64"
)

// stmt is one OpenVEX statement about CVEAlpineBusybox unless vuln is set.
type stmt struct {
	vuln, status, product string
	subs                  []string
	// ts is the statement's timestamp (RFC 3339), none when empty.
	ts string
}

// openVEX renders an OpenVEX document issued at 2025-01-01.
func openVEX(t testing.TB, stmts ...stmt) []byte {
	t.Helper()
	var out []map[string]any
	for _, s := range stmts {
		p := map[string]any{"@id": s.product}
		if len(s.subs) > 0 {
			var subs []map[string]any
			for _, id := range s.subs {
				subs = append(subs, map[string]any{"@id": id})
			}
			p["subcomponents"] = subs
		}
		m := map[string]any{
			"vulnerability": map[string]any{"name": cmpOr(s.vuln, scantest.CVEAlpineBusybox)},
			"products":      []any{p},
			"status":        s.status,
		}
		switch s.status {
		case "not_affected":
			m["justification"] = "vulnerable_code_not_in_execute_path"
		case "affected":
			m["action_statement"] = "upgrade"
		}
		if s.ts != "" {
			m["timestamp"] = s.ts
		}
		out = append(out, m)
	}
	b, err := json.Marshal(map[string]any{
		"@context":   "https://openvex.dev/ns/v0.2.0",
		"@id":        "https://example.com/vex/1",
		"author":     "Example",
		"timestamp":  "2025-01-01T00:00:00Z",
		"version":    1,
		"statements": out,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func parse(t testing.TB, source string, data []byte) *vex.Document {
	t.Helper()
	d, err := vex.Parse(source, data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return d
}

// suppressedIDs applies docs to vulns of img and returns "ID pkg" of each
// suppression, checking that kept and suppressed partition vulns in order.
func suppressedIDs(t *testing.T, img vex.Image, vulns []records.Vuln, docs ...*vex.Document) []string {
	t.Helper()
	kept, sup := vex.Apply(img, vulns, docs)
	if len(kept)+len(sup) != len(vulns) {
		t.Fatalf("%d kept + %d suppressed of %d", len(kept), len(sup), len(vulns))
	}
	var ids []string
	k, s := 0, 0
	for _, v := range vulns {
		switch {
		case s < len(sup) && sup[s].ID == v.ID && sup[s].PkgName == v.PkgName && sup[s].PURL == v.PURL:
			ids = append(ids, v.ID+" "+v.PkgName)
			s++
		case k < len(kept) && kept[k].ID == v.ID && kept[k].PkgName == v.PkgName:
			k++
		default:
			t.Fatalf("%s %s neither kept nor suppressed in order", v.ID, v.PkgName)
		}
	}
	return ids
}

func TestNotAffectedSuppresses(t *testing.T) {
	d := parse(t, "file /etc/gatehouse/vex/alpine.json",
		openVEX(t, stmt{status: "not_affected", product: trivyImagePURL, subs: []string{busyboxPURL}}))
	if d.Source != "file /etc/gatehouse/vex/alpine.json" || d.Format != vex.FormatOpenVEX {
		t.Errorf("document %q %q", d.Source, d.Format)
	}
	kept, sup := vex.Apply(img, vulns, []*vex.Document{d})
	want := []vex.Suppression{{
		ID: scantest.CVEAlpineBusybox, PkgName: "busybox", PURL: busyboxPURL,
		Status: "not_affected", Justification: "vulnerable_code_not_in_execute_path",
		Source: "file /etc/gatehouse/vex/alpine.json",
	}}
	if !slices.Equal(sup, want) {
		t.Errorf("suppressions\n got %+v\nwant %+v", sup, want)
	}
	if len(kept) != 2 || kept[0].PkgName != "libcrypto3" || kept[1].PkgName != "libssl3" {
		t.Errorf("kept %+v", kept)
	}
	// No documents, or none about these CVEs: everything is kept.
	if kept, sup := vex.Apply(img, vulns, nil); len(kept) != 3 || sup != nil {
		t.Errorf("no documents: kept %d, suppressed %+v", len(kept), sup)
	}
}

// TestProducts: which products name the busybox finding of img (docker.io
// library/alpine at digest, arch amd64) and which do not.
func TestProducts(t *testing.T) {
	bb := scantest.CVEAlpineBusybox + " busybox"
	tests := []struct {
		name    string
		product string
		subs    []string
		img     vex.Image // img when zero
		want    []string
	}{
		// The image as product, the package as subcomponent.
		{"trivy's image PURL", trivyImagePURL, []string{busyboxPURL}, vex.Image{}, []string{bb}},
		{"digest only", "pkg:oci/alpine@" + digest, []string{busyboxPURL}, vex.Image{}, []string{bb}},
		{"docker.io repository_url", "pkg:oci/alpine@" + digest + "?repository_url=docker.io/library/alpine", []string{busyboxPURL}, vex.Image{}, []string{bb}},
		{"short docker.io repository_url", "pkg:oci/alpine@" + digest + "?repository_url=docker.io/alpine", []string{busyboxPURL}, vex.Image{}, []string{bb}},
		{"repository_url without digest", "pkg:oci/alpine?repository_url=docker.io/library/alpine", []string{busyboxPURL}, vex.Image{}, []string{bb}},
		{"other registry", "pkg:oci/app@" + digest + "?repository_url=ghcr.io/acme/app", []string{busyboxPURL},
			vex.Image{Registry: "ghcr.io", Repository: "acme/app", Digest: digest}, []string{bb}},
		{"tag known", "pkg:oci/alpine@" + digest + "?tag=3.22", []string{busyboxPURL}, vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: digest, Tag: "3.22"}, []string{bb}},
		{"versionless subcomponent", trivyImagePURL, []string{"pkg:apk/alpine/busybox"}, vex.Image{}, []string{bb}},
		{"whole image, no subcomponents", "pkg:oci/alpine@" + digest, nil, vex.Image{},
			[]string{scantest.CVEAlpineBusybox + " busybox"}},
		// The package as product.
		{"package", busyboxPURL, nil, vex.Image{}, []string{bb}},
		{"package without version", "pkg:apk/alpine/busybox", nil, vex.Image{}, []string{bb}},
		{"package without qualifiers", "pkg:apk/alpine/busybox@1.37.0-r18", nil, vex.Image{}, []string{bb}},

		// Another product.
		{"another digest", "pkg:oci/alpine@" + otherDigest, []string{busyboxPURL}, vex.Image{}, nil},
		{"another repository", "pkg:oci/alpine@" + digest + "?repository_url=ghcr.io/evil/alpine", []string{busyboxPURL}, vex.Image{}, nil},
		{"another repository without digest", "pkg:oci/alpine?repository_url=ghcr.io/evil/alpine", []string{busyboxPURL}, vex.Image{}, nil},
		{"another registry, same path", "pkg:oci/alpine?repository_url=quay.io/library/alpine", []string{busyboxPURL}, vex.Image{}, nil},
		{"another image name", "pkg:oci/nginx@" + digest, []string{busyboxPURL}, vex.Image{}, nil},
		{"another arch", "pkg:oci/alpine@" + digest + "?arch=arm64", []string{busyboxPURL}, vex.Image{}, nil},
		{"arch unknown", "pkg:oci/alpine@" + digest + "?arch=amd64", []string{busyboxPURL},
			vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: digest}, nil},
		{"another tag", "pkg:oci/alpine@" + digest + "?tag=3.21", []string{busyboxPURL}, vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: digest, Tag: "3.22"}, nil},
		{"tag unknown", "pkg:oci/alpine@" + digest + "?tag=3.22", []string{busyboxPURL}, vex.Image{}, nil},
		{"another package as subcomponent", trivyImagePURL, []string{libsslPURL}, vex.Image{}, nil},
		{"another package version as subcomponent", trivyImagePURL, []string{"pkg:apk/alpine/busybox@1.37.0-r19"}, vex.Image{}, nil},
		{"another package", "pkg:apk/alpine/busybox-extras", nil, vex.Image{}, nil},
		{"another package version", "pkg:apk/alpine/busybox@1.37.0-r19", nil, vex.Image{}, nil},
		{"another distro", "pkg:apk/alpine/busybox?distro=3.21.0", nil, vex.Image{}, nil},
		{"another ecosystem", "pkg:deb/debian/busybox", nil, vex.Image{}, nil},
		{"not a PURL", "busybox", nil, vex.Image{}, nil},
		// Names no image in particular: any repository's "alpine".
		{"name only", "pkg:oci/alpine", []string{busyboxPURL}, vex.Image{}, nil},
		{"name and tag only", "pkg:oci/alpine?tag=3.22", []string{busyboxPURL}, vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: digest, Tag: "3.22"}, nil},
		{"name and arch only", "pkg:oci/alpine?arch=amd64", nil, vex.Image{}, nil},
		// The image has no valid digest: only package products apply.
		{"image without digest", "pkg:oci/alpine?repository_url=docker.io/library/alpine", []string{busyboxPURL},
			vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: "latest"}, nil},
		{"package, image without digest", busyboxPURL, nil, vex.Image{Registry: "docker.io", Repository: "library/alpine"}, []string{bb}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := parse(t, "test", openVEX(t, stmt{status: "not_affected", product: tt.product, subs: tt.subs}))
			i := img
			if tt.img != (vex.Image{}) {
				i = tt.img
			}
			if got := suppressedIDs(t, i, vulns, d); !slices.Equal(got, tt.want) {
				t.Errorf("suppressed %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStatuses(t *testing.T) {
	for status, want := range map[string]bool{
		"not_affected": true, "fixed": true, "affected": false, "under_investigation": false,
	} {
		t.Run(status, func(t *testing.T) {
			d := parse(t, "test", openVEX(t, stmt{status: status, product: trivyImagePURL, subs: []string{busyboxPURL}}))
			_, sup := vex.Apply(img, vulns, []*vex.Document{d})
			if (len(sup) == 1) != want {
				t.Fatalf("suppressions %+v, want suppressed: %v", sup, want)
			}
			if want && sup[0].Status != status {
				t.Errorf("status %q, want %q", sup[0].Status, status)
			}
		})
	}
}

// TestLatestStatementWins: within a document the latest matching statement
// decides, whichever product (image or package) it names.
func TestLatestStatementWins(t *testing.T) {
	const t1, t2 = "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"
	na := func(ts, product string, subs ...string) stmt {
		return stmt{status: "not_affected", product: product, subs: subs, ts: ts}
	}
	aff := func(ts, product string, subs ...string) stmt {
		return stmt{status: "affected", product: product, subs: subs, ts: ts}
	}
	tests := []struct {
		name  string
		stmts []stmt
		want  bool
	}{
		{"affected after not_affected", []stmt{na(t1, trivyImagePURL, busyboxPURL), aff(t2, trivyImagePURL, busyboxPURL)}, false},
		{"not_affected after affected", []stmt{aff(t1, trivyImagePURL, busyboxPURL), na(t2, trivyImagePURL, busyboxPURL)}, true},
		{"listed out of time order", []stmt{na(t2, trivyImagePURL, busyboxPURL), aff(t1, trivyImagePURL, busyboxPURL)}, true},
		// Without timestamps both inherit the document's: they disagree at
		// the same time, and that is not a suppression.
		{"same time, disagreeing", []stmt{na("", trivyImagePURL, busyboxPURL), aff("", trivyImagePURL, busyboxPURL)}, false},
		{"same time, agreeing", []stmt{na("", trivyImagePURL, busyboxPURL), {status: "fixed", product: busyboxPURL}}, true},
		// Trivy would weigh each product alone and suppress here.
		{"affected image after not_affected package", []stmt{na(t1, busyboxPURL), aff(t2, trivyImagePURL, busyboxPURL)}, false},
		{"affected package after not_affected image", []stmt{na(t1, trivyImagePURL, busyboxPURL), aff(t2, "pkg:apk/alpine/busybox")}, false},
		// A later statement about another product changes nothing.
		{"affected elsewhere later", []stmt{na(t1, trivyImagePURL, busyboxPURL), aff(t2, "pkg:oci/alpine@"+otherDigest, busyboxPURL)}, true},
		// A statement without a timestamp is as old as the document (2025-01-01).
		{"dated affected after undated not_affected", []stmt{na("", trivyImagePURL, busyboxPURL), aff(t1, trivyImagePURL, busyboxPURL)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := parse(t, "test", openVEX(t, tt.stmts...))
			got := suppressedIDs(t, img, vulns, d)
			if (len(got) == 1) != tt.want || len(got) > 1 {
				t.Errorf("suppressed %q, want suppressed: %v", got, tt.want)
			}
		})
	}

	// OpenVEX documents are weighed together: a later "affected" in
	// another document (the vendor revoking its not_affected) undoes an
	// older document's not_affected, whichever comes first; the latest
	// suppressing statement is reported with its document.
	yes := parse(t, "yes", openVEX(t, na("", trivyImagePURL, busyboxPURL)))
	no := parse(t, "no", openVEX(t, aff(t2, trivyImagePURL, busyboxPURL)))
	also := parse(t, "also", openVEX(t, stmt{status: "fixed", product: busyboxPURL}))
	for _, order := range [][]*vex.Document{{no, yes, also}, {yes, also, no}} {
		if _, sup := vex.Apply(img, vulns, order); len(sup) != 0 {
			t.Errorf("suppressions %+v despite a later affected in another document", sup)
		}
	}
	later := parse(t, "later", openVEX(t, na(t2, trivyImagePURL, busyboxPURL)))
	older := parse(t, "older", openVEX(t, aff(t1, trivyImagePURL, busyboxPURL)))
	if _, sup := vex.Apply(img, vulns, []*vex.Document{older, later}); len(sup) != 1 || sup[0].Source != "later" {
		t.Errorf("suppressions %+v, want one from later", sup)
	}
}

// TestAliasesAndIdentifiers: a statement may name the vulnerability by an
// alias and the product by identifiers instead of @id.
func TestAliasesAndIdentifiers(t *testing.T) {
	doc := fmt.Sprintf(`{
	  "@context": "https://openvex.dev/ns/v0.2.0", "@id": "x", "author": "a", "timestamp": "2025-01-01T00:00:00Z", "version": 1,
	  "statements": [{
	    "vulnerability": {"name": "GHSA-xxxx-yyyy-zzzz", "aliases": [%q]},
	    "products": [{"identifiers": {"purl": "pkg:oci/alpine?repository_url=index.docker.io/library/alpine"},
	                  "subcomponents": [{"identifiers": {"purl": "pkg:apk/alpine/busybox"}}]}],
	    "status": "not_affected", "impact_statement": "busybox's vulnerable applet is not linked"
	  }]}`, scantest.CVEAlpineBusybox)
	_, sup := vex.Apply(img, vulns, []*vex.Document{parse(t, "test", []byte(doc))})
	if len(sup) != 1 || sup[0].PkgName != "busybox" || sup[0].Justification != "busybox's vulnerable applet is not linked" {
		t.Errorf("suppressions %+v", sup)
	}
}

// TestNoPURL: a finding without a usable PURL is never suppressed, not even
// by statements about the whole image or the package's name.
func TestNoPURL(t *testing.T) {
	bare := []records.Vuln{
		{ID: scantest.CVEAlpineBusybox, PkgName: "busybox"},
		{ID: scantest.CVEAlpineBusybox, PkgName: "busybox", PURL: "busybox@1.37.0-r18"},
		{ID: scantest.CVEAlpineBusybox, PkgName: "busybox", PURL: "pkg:"},
	}
	d := parse(t, "test", openVEX(t,
		stmt{status: "not_affected", product: trivyImagePURL, subs: []string{busyboxPURL}},
		stmt{status: "not_affected", product: "pkg:oci/alpine@" + digest},
		stmt{status: "not_affected", product: "pkg:apk/alpine/busybox"},
		stmt{status: "not_affected", product: "busybox"},
	))
	csaf := parse(t, "csaf", csafDoc(t, "known_not_affected", "pkg:oci/alpine@"+digest, busyboxPURL))
	if got := suppressedIDs(t, img, bare, d, csaf); len(got) != 0 {
		t.Errorf("suppressed %q", got)
	}
	// The same documents do suppress the finding that has its PURL.
	if got := suppressedIDs(t, img, vulns, d, csaf); len(got) != 1 {
		t.Errorf("with PURLs: suppressed %q", got)
	}
}

// csafDoc renders a CSAF VEX advisory about CVEAlpineBusybox: pkg is
// listed under status as a default component of the image product.
func csafDoc(t testing.TB, status, image, pkg string) []byte {
	t.Helper()
	fpn := func(id, purl string) map[string]any {
		return map[string]any{"name": id, "product_id": id, "product_identification_helper": map[string]any{"purl": purl}}
	}
	b, err := json.Marshal(map[string]any{
		"document": map[string]any{
			"category": "csaf_vex", "csaf_version": "2.0", "title": "alpine",
			"publisher": map[string]any{"category": "vendor", "name": "Example", "namespace": "https://example.com"},
			"tracking": map[string]any{
				"id": "EX-1", "status": "final", "version": "1",
				"initial_release_date": "2025-01-01T00:00:00Z", "current_release_date": "2025-01-01T00:00:00Z",
				"revision_history": []any{map[string]any{"date": "2025-01-01T00:00:00Z", "number": "1", "summary": "first"}},
			},
		},
		"product_tree": map[string]any{
			"full_product_names": []any{fpn("image", image), fpn("busybox", pkg)},
			"relationships": []any{map[string]any{
				"category": "default_component_of", "product_reference": "busybox", "relates_to_product_reference": "image",
				"full_product_name": map[string]any{"name": "busybox in image", "product_id": "busybox-in-image"},
			}},
		},
		"vulnerabilities": []any{map[string]any{
			"cve":            scantest.CVEAlpineBusybox,
			"product_status": map[string]any{status: []string{"busybox-in-image"}},
			"threats":        []any{map[string]any{"category": "impact", "details": "the applet is not built"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCSAF(t *testing.T) {
	tests := []struct {
		name, status, image, pkg string
		want                     bool
	}{
		{"not affected", "known_not_affected", "pkg:oci/alpine@" + digest, busyboxPURL, true},
		{"fixed", "fixed", "pkg:oci/alpine?repository_url=docker.io/library/alpine", "pkg:apk/alpine/busybox", true},
		{"affected", "known_affected", "pkg:oci/alpine@" + digest, busyboxPURL, false},
		{"under investigation", "under_investigation", "pkg:oci/alpine@" + digest, busyboxPURL, false},
		{"another digest", "known_not_affected", "pkg:oci/alpine@" + otherDigest, busyboxPURL, false},
		{"another repository", "known_not_affected", "pkg:oci/alpine?repository_url=ghcr.io/evil/alpine", busyboxPURL, false},
		{"another package", "known_not_affected", "pkg:oci/alpine@" + digest, libsslPURL, false},
		{"image named by name only", "known_not_affected", "pkg:oci/alpine", busyboxPURL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := parse(t, "file csaf.json", csafDoc(t, tt.status, tt.image, tt.pkg))
			if d.Format != vex.FormatCSAF {
				t.Fatalf("format %q", d.Format)
			}
			_, sup := vex.Apply(img, vulns, []*vex.Document{d})
			if (len(sup) == 1) != tt.want {
				t.Fatalf("suppressions %+v, want suppressed: %v", sup, tt.want)
			}
			if !tt.want {
				return
			}
			want := vex.Suppression{ID: scantest.CVEAlpineBusybox, PkgName: "busybox", PURL: busyboxPURL,
				Status:        map[string]string{"known_not_affected": "not_affected", "fixed": "fixed"}[tt.status],
				Justification: "the applet is not built", Source: "file csaf.json"}
			if sup[0] != want {
				t.Errorf("suppression\n got %+v\nwant %+v", sup[0], want)
			}
		})
	}
}

func TestCycloneDXRefused(t *testing.T) {
	doc := `{"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
	  "vulnerabilities": [{"id": "CVE-2099-1002", "analysis": {"state": "not_affected"},
	    "affects": [{"ref": "urn:cdx:3e671687-395b-41f5-a30f-a58921a69b79/1#pkg:apk/alpine/busybox"}]}]}`
	_, err := vex.Parse("file cdx.json", []byte(doc))
	if !errors.Is(err, vex.ErrCycloneDX) || !strings.Contains(err.Error(), "file cdx.json") {
		t.Errorf("err = %v, want ErrCycloneDX naming the source", err)
	}
}

func TestParseMalformed(t *testing.T) {
	valid := string(openVEX(t, stmt{status: "not_affected", product: busyboxPURL}))
	tests := map[string]string{
		"empty":                     "",
		"truncated":                 valid[:len(valid)/2],
		"trailing data":             valid + `{"@context": "x"}`,
		"null":                      "null",
		"array":                     "[]",
		"string":                    `"openvex"`,
		"neither format":            `{"foo": 1}`,
		"context of the wrong type": `{"@context": 1, "statements": []}`,
		"statements not a list":     `{"@context": "https://openvex.dev/ns/v0.2.0", "statements": {}}`,
		"misspelt status":           strings.Replace(valid, `"not_affected"`, `"not-affected"`, 1),
		"deep nesting":              `{"@context": "x", "statements": ` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`,
		"not UTF-8 JSON":            "\xff\xfe{\x00}\x00",
		// Trivy's CSAF code would dereference the missing CVE, or product tree.
		"CSAF vulnerability without cve":  `{"document": {"category": "csaf_vex"}, "vulnerabilities": [{"product_status": {"known_not_affected": ["x"]}}]}`,
		"CSAF null vulnerability":         `{"document": {"category": "csaf_vex"}, "vulnerabilities": [null]}`,
		"CSAF status without tree":        `{"document": {"category": "csaf_vex"}, "vulnerabilities": [{"cve": "CVE-2099-0001", "product_status": {"known_not_affected": ["x"]}}]}`,
		"CSAF vulnerabilities not a list": `{"document": {"category": "csaf_vex"}, "vulnerabilities": {"cve": "CVE-1"}}`,
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := vex.Parse("test", []byte(data))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", d)
			}
			// Where Trivy's code panics, the panic becomes the error.
			if strings.HasPrefix(name, "CSAF") && !strings.Contains(name, "not a list") && !strings.Contains(err.Error(), "malformed VEX document") {
				t.Errorf("err = %v", err)
			}
		})
	}
	t.Run("oversized", func(t *testing.T) {
		big := valid[:len(valid)-1] + `, "x": "` + strings.Repeat("a", vex.MaxSize) + `"}`
		_, err := vex.Parse("test", []byte(big))
		if err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b := write("b.json", csafDoc(t, "known_not_affected", "pkg:oci/alpine@"+digest, busyboxPURL))
	a := write("a.json", openVEX(t, stmt{status: "not_affected", product: busyboxPURL}))
	write("notes.txt", []byte("not a document"))
	if err := os.Mkdir(filepath.Join(dir, "old.json"), 0o755); err != nil {
		t.Fatal(err)
	}

	docs, err := vex.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range docs {
		got = append(got, d.Source+" "+d.Format)
	}
	if want := []string{"file " + a + " openvex", "file " + b + " csaf"}; !slices.Equal(got, want) {
		t.Errorf("Load(dir) = %q, want %q", got, want)
	}
	_, sup := vex.Apply(img, vulns, docs)
	if len(sup) != 1 || sup[0].Source != "file "+a {
		t.Errorf("suppressions %+v", sup)
	}

	docs, err = vex.Load(b)
	if err != nil || len(docs) != 1 || docs[0].Source != "file "+b {
		t.Errorf("Load(file) = %+v, %v", docs, err)
	}

	bad := write("c.json", []byte(`{"bomFormat": "CycloneDX", "specVersion": "1.5"}`))
	if _, err := vex.Load(dir); !errors.Is(err, vex.ErrCycloneDX) || !strings.Contains(err.Error(), bad) {
		t.Errorf("Load with a CycloneDX file: %v", err)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}

	f, err := os.Create(filepath.Join(dir, "huge.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(vex.MaxSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := vex.Load(dir); err == nil || !strings.Contains(err.Error(), "huge.json") {
		t.Errorf("Load with an oversized file: %v", err)
	}

	if _, err := vex.Load(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
}

// TestConcurrentApply: documents are read-only once parsed (run with -race).
func TestConcurrentApply(t *testing.T) {
	docs := []*vex.Document{
		parse(t, "a", openVEX(t, stmt{vuln: scantest.CVEAlpineOpenSSL, status: "not_affected", product: trivyImagePURL, subs: []string{libsslPURL}})),
		parse(t, "b", csafDoc(t, "fixed", "pkg:oci/alpine@"+digest, busyboxPURL)),
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if _, sup := vex.Apply(img, vulns, docs); len(sup) != 2 {
					t.Errorf("suppressions %+v", sup)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzParse(f *testing.F) {
	f.Add(openVEX(f, stmt{status: "not_affected", product: trivyImagePURL, subs: []string{busyboxPURL}}))
	f.Add(csafDoc(f, "known_not_affected", "pkg:oci/alpine@"+digest, busyboxPURL))
	f.Add([]byte(`{"bomFormat": "CycloneDX"}`))
	f.Add([]byte(`{"document": {}, "vulnerabilities": [{"cve": "CVE-1", "product_status": {"fixed": ["x"]}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := vex.Parse("fuzz", data)
		if err != nil {
			return
		}
		vex.Apply(img, vulns, []*vex.Document{d})
	})
}
