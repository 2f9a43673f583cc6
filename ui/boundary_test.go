package ui_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The console reads the gate's records and never links the scanners (like
// the proxy): a change that pulls Trivy or cosign into it fails here.
func TestUIDoesNotImportScanners(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/gatehouse/gatehouse/ui").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/aquasecurity/", "github.com/sigstore/", "github.com/gatehouse/gatehouse/gate/scan", "github.com/gatehouse/gatehouse/gate/sign"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("ui depends on %s", dep)
			}
		}
	}
}
