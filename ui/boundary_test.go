package ui_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The console and the JSON API read the gate's records and never link the
// scanners (like the proxy): a change that pulls Trivy or cosign into
// either fails here.
func TestReadersDoNotImportScanners(t *testing.T) {
	for _, pkg := range []string{"github.com/gatehouse/gatehouse/ui", "github.com/gatehouse/gatehouse/api"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, banned := range []string{"github.com/aquasecurity/", "github.com/sigstore/", "github.com/gatehouse/gatehouse/gate/scan", "github.com/gatehouse/gatehouse/gate/sign"} {
				if strings.HasPrefix(dep, banned) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
