package vex_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gatehouse/gatehouse/gate/scan"
	"github.com/gatehouse/gatehouse/gate/scan/scantest"
	"github.com/gatehouse/gatehouse/gate/vex"
)

// TestScannedImage: the findings of a real scan carry PURLs that statements
// written as vendors write them (image by repository_url, package without
// version or qualifiers) match.
func TestScannedImage(t *testing.T) {
	dir := t.TempDir()
	scantest.V1().Write(t, filepath.Join(dir, "db"))
	s, err := scan.New(scan.Options{DBDir: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	image := scantest.VulnerableAlpine()
	rep, err := s.Scan(context.Background(), image, "docker.io/library/alpine")
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	img := vex.Image{Registry: "docker.io", Repository: "library/alpine", Digest: dgst.String()}

	doc := parse(t, "test", openVEX(t,
		stmt{vuln: scantest.CVEAlpineOpenSSL, status: "not_affected",
			product: "pkg:oci/alpine?repository_url=docker.io/library/alpine", subs: []string{"pkg:apk/alpine/libssl3"}},
		stmt{status: "fixed", product: "pkg:apk/alpine/busybox@1.37.0-r18"},
	))
	kept, sup := vex.Apply(img, rep.Vulns, []*vex.Document{doc})
	var got []string
	for _, s := range sup {
		got = append(got, s.ID+" "+s.PkgName+" "+s.Status)
	}
	want := []string{scantest.CVEAlpineOpenSSL + " libssl3 not_affected", scantest.CVEAlpineBusybox + " busybox fixed"}
	if !slices.Equal(got, want) {
		t.Errorf("suppressed %q, want %q", got, want)
	}
	if len(kept) != 1 || kept[0].PkgName != "libcrypto3" {
		t.Errorf("kept %+v", kept)
	}

	// The same content in another repository: only the statement about the
	// package itself applies.
	other := vex.Image{Registry: "ghcr.io", Repository: "someone/alpine", Digest: dgst.String()}
	if kept, _ := vex.Apply(other, rep.Vulns, []*vex.Document{doc}); len(kept) != 2 {
		t.Errorf("another repository: kept %+v", kept)
	}
}
