package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestPolicyTest is issue 17's dry run with the real parts: containerd
// pulls a Debian image with a fixable HIGH vulnerability (admitted under
// a CRITICAL-only rule) and a clean Alpine one through gatehouse; then
// `gatehouse policy test` reports, for a stricter policy, that the Debian
// image would become denied (exit 1, in the table and in the JSON) and,
// for the policy in force, nothing (exit 0): through the API of the
// running gatehouse, and locally on its data directory once stopped
// (while it runs, the local mode points at --server). The pulls after the
// dry run are still served: it changed nothing.
func TestPolicyTest(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	debian := reg.Push(t, "e2e/policy-debian", "v1", scantest.VulnerableDebian())
	clean := reg.Push(t, "e2e/policy-clean", "v1", scantest.CleanAlpine())
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()}, DBArchive: writeTestDB(t),
		Gate: &GateConfig{Policy: GatePolicy{Rules: []GateRule{{Name: "critical-only", Block: []string{"CRITICAL"}}}}}})
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	ctrd.MustPull(t, debian.Ref(reg.Host), PullOptions{})
	ctrd.MustPull(t, clean.Ref(reg.Host), PullOptions{})

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stricter := write("stricter.yaml", "gate:\n  policy:\n    rules: [{name: critical-and-high, block: [CRITICAL, HIGH]}]\n")
	same := write("same.yaml", "gate:\n  policy:\n    rules: [{name: critical-only, block: [CRITICAL]}]\n")
	policyTest := func(args ...string) CmdResult {
		t.Helper()
		res := runCmd(t.Context(), commandTimeout, gh.env(), append([]string{gh.bin, "policy", "test"}, args...)...)
		t.Logf("gatehouse policy test %s: exit %d\n%s", strings.Join(args, " "), res.ExitCode(), res.Output())
		return res
	}
	wantDenied := func(t *testing.T, res CmdResult) {
		t.Helper()
		out := res.Output()
		if res.ExitCode() != 1 || !strings.Contains(out, "2 images: 1 would become denied, 0 would become admitted, 1 unchanged") ||
			!strings.Contains(out, reg.Host+"/e2e/policy-debian@"+debian.Digest.String()[:19]) ||
			!strings.Contains(out, scantest.CVEDebianOpenSSL+" HIGH") || strings.Contains(out, "policy-clean") {
			t.Errorf("stricter policy: exit %d\n%s", res.ExitCode(), out)
		}
	}

	t.Run("server", func(t *testing.T) {
		wantDenied(t, policyTest("--config", stricter, "--server", gh.URL))
		res := policyTest("--config", stricter, "--server", gh.URL, "--format", "json")
		var out struct {
			Summary struct {
				BecomeDenied int `json:"becomeDenied"`
			} `json:"summary"`
			Images []struct {
				Repo     string `json:"repository"`
				Digest   string `json:"digest"`
				Change   string `json:"change"`
				Proposed struct {
					Blocking []struct {
						ID string `json:"id"`
					} `json:"blocking"`
				} `json:"proposed"`
			} `json:"images"`
		}
		if err := json.Unmarshal(res.Stdout, &out); err != nil || res.ExitCode() != 1 || out.Summary.BecomeDenied != 1 || len(out.Images) != 2 {
			t.Fatalf("JSON: exit %d, %v: %s", res.ExitCode(), err, res.Stdout)
		}
		im := out.Images[0]
		if im.Repo != "e2e/policy-debian" || im.Digest != debian.Digest.String() || im.Change != "denied" ||
			len(im.Proposed.Blocking) == 0 || im.Proposed.Blocking[0].ID != scantest.CVEDebianOpenSSL {
			t.Errorf("JSON's first image: %+v", im)
		}
		if res := policyTest("--config", same, "--server", gh.URL); res.ExitCode() != 0 || !strings.Contains(res.Output(), "2 images: 0 would become denied") {
			t.Errorf("the policy in force: exit %d\n%s", res.ExitCode(), res.Output())
		}
		bad := write("bad.yaml", "gate:\n  policy:\n    rules: [{name: x, block: [SEVERE]}]\n")
		if res := policyTest("--config", bad, "--server", gh.URL); res.ExitCode() != 2 || !strings.Contains(res.Output(), "gate.policy.rules[0].block") {
			t.Errorf("a proposal with a mistake: exit %d\n%s", res.ExitCode(), res.Output())
		}
		// The dry run changed nothing: the image is still served.
		ctrd.MustPull(t, debian.Ref(reg.Host), PullOptions{})
	})

	t.Run("local", func(t *testing.T) {
		if res := policyTest("--config", stricter, "--current", gh.ConfigPath); res.ExitCode() != 2 || !strings.Contains(res.Output(), "--server") {
			t.Errorf("local while gatehouse runs: exit %d\n%s", res.ExitCode(), res.Output())
		}
		gh.Stop(t)
		wantDenied(t, policyTest("--config", stricter, "--current", gh.ConfigPath))
		if res := policyTest("--config", same, "--current", gh.ConfigPath); res.ExitCode() != 0 {
			t.Errorf("the policy in force, locally: exit %d\n%s", res.ExitCode(), res.Output())
		}
	})
}
