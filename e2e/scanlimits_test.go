package e2e

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestScanLimits: decompression bombs pushed to a real registry are refused
// by the real gatehouse (Trivy embedded) with the limit named, to containerd
// and in the OCI error body; a rule in audit mode serves one; a clean image
// passes; the metric counts each stopped scan (one per bomb layer).
func TestScanLimits(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	clean := reg.Push(t, "e2e/limits-clean", "v1", scantest.CleanAlpine())
	// 64 MiB of zeros in one file: about 64 KiB of gzip.
	sizeBomb := reg.Push(t, "e2e/bomb-size", "v1", scantest.Append(scantest.CleanAlpine(), []v1.Layer{scantest.Zeros(64 << 20)}))
	filesImg := scantest.Append(scantest.CleanAlpine(), []v1.Layer{scantest.ManyFiles(5000)})
	filesBomb := reg.Push(t, "e2e/bomb-files", "v1", filesImg)
	audited := reg.Push(t, "e2e/audit-bomb", "v1", filesImg)

	const rule = "e2e-limits"
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{
			ScanLimits: &GateScanLimits{MaxLayerSize: "16MiB", MaxLayerFiles: 1000},
			DB:         GateDB{UpdateInterval: "0s"},
			Policy: GatePolicy{Rules: []GateRule{
				{Name: "e2e-audit", Mode: "audit", Repositories: []string{"e2e/audit-*"}},
				{Name: rule, Mode: "enforce"},
			}},
		},
		DBArchive: writeTestDB(t),
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)
	accept := "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
	manifest := func(p Pushed) Response {
		return gh.Do(t, http.MethodGet, "/v2/"+p.Repo+"/manifests/"+p.Tag+ns, accept)
	}

	if res := manifest(clean); res.Status != http.StatusOK {
		t.Errorf("clean image: %s", res)
	}
	for _, tc := range []struct {
		p    Pushed
		want string
	}{
		{sizeBomb, "exceeds gate.scanLimits.maxLayerSize (16777216)"},
		{filesBomb, "exceeds gate.scanLimits.maxLayerFiles (1000)"},
	} {
		res := manifest(tc.p)
		errs := res.OCIErrors()
		if res.Status != http.StatusForbidden || len(errs) != 1 || errs[0].Code != "DENIED" ||
			!strings.Contains(errs[0].Message, `denied by rule "`+rule+`": scan failed: layer sha256:`) ||
			!strings.Contains(errs[0].Message, tc.want) {
			t.Errorf("%s: %s; want 403 DENIED naming %q", tc.p.Repo, res, tc.want)
		}
	}
	if res := manifest(audited); res.Status != http.StatusOK {
		t.Errorf("bomb under a rule in audit mode: %s", res)
	}

	t.Run("containerd", func(t *testing.T) {
		ctrd := StartContainerd(t)
		ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
		res := ctrd.Pull(t, filesBomb.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled %s, a layer of 5000 files past maxLayerFiles 1000", filesBomb.Ref(reg.Host))
		}
		t.Logf("ctr error line: %s", res.LastLine())
		for _, want := range []string{"403", rule, "exceeds gate.scanLimits.maxLayerFiles (1000)"} {
			if !strings.Contains(res.Output(), want) {
				t.Errorf("ctr's output does not show %q:\n%s", want, res.Output())
			}
		}
	})

	// One read of each bomb layer: the denial is remembered, so neither
	// the second request nor containerd's made gatehouse read a bomb again,
	// and the audited copy of the files bomb (another repository and rule,
	// the same layer) was judged from what the first scan learnt of that
	// layer, without reading it.
	metrics := string(gh.Do(t, http.MethodGet, "/metrics").Body)
	for limit, want := range map[string]string{"maxLayerSize": "1", "maxLayerFiles": "1", "maxImageSize": "0"} {
		re := regexp.MustCompile(`(?m)^gatehouse_scan_limits_exceeded_total\{limit="` + limit + `"\} (\S+)$`)
		if m := re.FindStringSubmatch(metrics); m == nil || m[1] != want {
			t.Errorf("gatehouse_scan_limits_exceeded_total{limit=%q} = %v, want %s", limit, m, want)
		}
	}
}
