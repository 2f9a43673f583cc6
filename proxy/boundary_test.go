package proxy_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The proxy asks the gate through a small interface and never links the
// scanners itself (DESIGN.md): a change that pulls Trivy or cosign into the
// proxy's dependencies fails here.
func TestProxyDoesNotImportScanners(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/gatehouse/gatehouse/proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/aquasecurity/", "github.com/sigstore/", "github.com/gatehouse/gatehouse/gate/scan", "github.com/gatehouse/gatehouse/gate/sign"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("proxy depends on %s", dep)
			}
		}
	}
}
