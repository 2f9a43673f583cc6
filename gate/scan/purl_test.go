package scan

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestVulnPURLs: every vuln of the fixture images carries the package URL
// Trivy gave its package (VEX statements name packages by it), and so does a
// Rescan of the JSON-stored inventory.
func TestVulnPURLs(t *testing.T) {
	s := newScanner(t, v1DB())
	for _, tt := range []struct {
		name string
		img  v1.Image
		want map[string]string // package name → PURL (a prefix for Go's stdlib, whose version is the toolchain's)
	}{
		{"alpine", scantest.VulnerableAlpine(), map[string]string{
			"libcrypto3": "pkg:apk/alpine/libcrypto3@3.5.0-r0?arch=x86_64&distro=3.22.1",
			"libssl3":    "pkg:apk/alpine/libssl3@3.5.0-r0?arch=x86_64&distro=3.22.1",
			"busybox":    "pkg:apk/alpine/busybox@1.37.0-r18?arch=x86_64&distro=3.22.1",
		}},
		{"debian", scantest.VulnerableDebian(), map[string]string{
			"libssl3": "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12.11",
			"libc6":   "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12.11",
			"tar":     "pkg:deb/debian/tar@1.34%2Bdfsg-1.2%2Bdeb12u1?arch=amd64&distro=debian-12.11",
		}},
		{"node", scantest.NodeApp(), map[string]string{
			"minimist": "pkg:npm/minimist@1.2.8",
			"lodash":   "pkg:npm/lodash@4.17.20",
		}},
		{"go", scantest.GoApp(t), map[string]string{
			"stdlib": "pkg:golang/stdlib@v1.",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep := scan(t, s, tt.img, "vuln/"+tt.name)
			b, err := json.Marshal(rep.Inventory)
			if err != nil {
				t.Fatal(err)
			}
			var inv Inventory
			if err := json.Unmarshal(b, &inv); err != nil {
				t.Fatal(err)
			}
			again, err := s.Rescan(context.Background(), &inv)
			if err != nil {
				t.Fatal(err)
			}
			for which, vulns := range map[string][]Vuln{"scan": rep.Vulns, "rescan": again.Vulns} {
				if len(vulns) == 0 {
					t.Fatalf("%s: no vulns", which)
				}
				for _, v := range vulns {
					want, ok := tt.want[v.PkgName]
					if !ok || !strings.HasPrefix(v.PURL, want) || (tt.name != "go" && v.PURL != want) {
						t.Errorf("%s: %s in %s: PURL %q, want %q", which, v.ID, v.PkgName, v.PURL, want)
					}
				}
			}
		})
	}
}
