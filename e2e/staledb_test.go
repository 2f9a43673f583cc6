package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestStaleDB: gate.db.maxAge with a vulnerability DB built long ago. A
// clean image under a rule whose staleDB is deny (the default) is refused,
// containerd showing why; under a rule whose staleDB is warn it is served,
// with the warning in its verdict.
func TestStaleDB(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	strict := reg.Push(t, "e2e/stale-strict", "v1", cleanImage("stale-strict"))
	lenient := reg.Push(t, "e2e/stale-lenient", "v1", cleanImage("stale-lenient"))

	old := scantest.V1()
	old.UpdatedAt, old.NextUpdate = time.Now().Add(-30*24*time.Hour), time.Now().Add(-30*24*time.Hour+6*time.Hour)
	archive := filepath.Join(t.TempDir(), "db.tar.gz")
	if err := os.WriteFile(archive, old.Archive(t), 0o644); err != nil {
		t.Fatal(err)
	}
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}, Policy: GatePolicy{Rules: []GateRule{{Name: "default", Mode: "off"}}}}, DBArchive: archive})
	gh.Stop(t)
	setGateConfig(t, gh, map[string]any{"maxAge": "48h", "updateInterval": "0s"}, []attestRule{
		{GateRule: GateRule{Name: "strict", Repositories: []string{"e2e/stale-strict"}}},
		{GateRule: GateRule{Name: "lenient", Repositories: []string{"e2e/stale-lenient"}}, StaleDB: "warn"},
		{GateRule: GateRule{Name: "default", Mode: "off"}},
	})
	gh.Start(t)

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	res := ctrd.Pull(t, strict.Ref(reg.Host), PullOptions{})
	if res.Err == nil || !strings.Contains(res.Output(), `denied by rule "strict": the vulnerability DB is 720h`) ||
		!strings.Contains(res.Output(), "more than gate.db.maxAge 48h") {
		t.Errorf("pull under staleDB deny: %v\n%s", res.Err, res.Output())
	}
	ctrd.MustPull(t, lenient.Ref(reg.Host), PullOptions{})
	var d struct {
		Verdict *struct {
			Admitted bool     `json:"admitted"`
			Warnings []string `json:"warnings"`
		} `json:"verdict"`
	}
	gh.API(t, "/api/v1/images/"+lenient.Digest.String(), &d)
	if d.Verdict == nil || !d.Verdict.Admitted || !slices.ContainsFunc(d.Verdict.Warnings, func(w string) bool { return strings.Contains(w, "more than gate.db.maxAge 48h") }) {
		t.Errorf("verdict under staleDB warn: %+v", d.Verdict)
	}
}

// setGateConfig writes gate.db settings and rules into a stopped
// gatehouse's config file (what the harness's types cannot express).
func setGateConfig(t *testing.T, gh *Gatehouse, db map[string]any, rules []attestRule) {
	t.Helper()
	setGateKey(t, gh, "db", db)
	setGateKey(t, gh, "policy", map[string]any{"rules": rules})
}

// setGateKey sets gate.<key> in a stopped gatehouse's config file (what
// the harness's GateConfig does not express).
func setGateKey(t *testing.T, gh *Gatehouse, key string, value any) {
	t.Helper()
	b, err := os.ReadFile(gh.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	g, _ := doc["gate"].(map[string]any)
	if g == nil {
		t.Fatalf("%s has no gate section", gh.ConfigPath)
	}
	g[key] = value
	if b, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gh.ConfigPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
