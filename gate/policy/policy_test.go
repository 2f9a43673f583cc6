package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

func rules(t *testing.T, yml string) *Policy {
	t.Helper()
	cfg, err := config.Parse([]byte("upstreams: [{name: docker.io}, {name: ghcr.io}]\n" + yml))
	if err != nil {
		t.Fatal(err)
	}
	return New(cfg.Gate.Policy.Rules)
}

func TestMostSpecificRuleWins(t *testing.T) {
	p := rules(t, `
gate:
  policy:
    rules:
      - {name: org-any, repositories: ["myorg/**"]}
      - {name: org-app, repositories: ["myorg/app"]}
      - {name: org-glob, repositories: ["myorg/*"]}
      - {name: ghcr-org, upstreams: [ghcr.io], repositories: ["myorg/**"]}
      - {name: library, upstreams: [docker.io], repositories: ["library/*"]}
      - {name: default}
`)
	for _, tc := range []struct{ up, repo, want string }{
		{"docker.io", "myorg/app", "org-app"},
		{"docker.io", "myorg/other", "org-glob"},
		{"docker.io", "myorg/team/deep", "org-any"},
		{"ghcr.io", "myorg/app", "ghcr-org"},
		{"docker.io", "library/nginx", "library"},
		{"ghcr.io", "library/nginx", "default"},
		{"docker.io", "someone/else", "default"},
	} {
		if got := p.Match(tc.up, tc.repo).Name; got != tc.want {
			t.Errorf("%s/%s: rule %s, want %s", tc.up, tc.repo, got, tc.want)
		}
	}
}

func TestNoMatchUsesBuiltInDefault(t *testing.T) {
	p := rules(t, "gate: {policy: {rules: [{name: only-org, repositories: [org/*]}]}}")
	r := p.Match("docker.io", "x/y")
	if r.Name != "default" || r.Mode != config.ModeEnforce || r.Block[0] != "CRITICAL" {
		t.Fatalf("%+v", r)
	}
}

var findings = []Finding{
	{ID: "CVE-2024-0001", Severity: "CRITICAL", PkgName: "openssl", Installed: "3.0.1", Fixed: "3.0.2"},
	{ID: "CVE-2024-0002", Severity: "HIGH", PkgName: "zlib", Installed: "1.2", Fixed: ""},
	{ID: "CVE-2024-0003", Severity: "MEDIUM", PkgName: "curl", Installed: "8.0", Fixed: "8.1"},
}

func TestEvaluate(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	p := rules(t, `
gate:
  policy:
    rules:
      - {name: strict, repositories: [strict/*], block: [CRITICAL, HIGH]}
      - {name: unfixed, repositories: [unfixed/*], block: [CRITICAL, HIGH], ignoreUnfixed: true}
      - {name: allow, repositories: [allow/*], block: [CRITICAL], allowlist: [{id: CVE-2024-0001, reason: not reachable, expires: 2026-11-30}]}
      - {name: expired, repositories: [expired/*], block: [CRITICAL], allowlist: [{id: CVE-2024-0001, reason: old, expires: 2026-11-01}]}
      - {name: audit, repositories: [audit/*], mode: audit, block: [CRITICAL]}
      - {name: off, repositories: [off/*], mode: off}
      - {name: default, block: [LOW]}
`)
	for _, tc := range []struct {
		repo     string
		admitted bool
		blocking int
		inMsg    string
	}{
		{"strict/a", false, 2, "CVE-2024-0001"},
		{"unfixed/a", false, 1, "openssl 3.0.1, fixed in 3.0.2"},
		{"allow/a", true, 0, "admitted"},
		{"expired/a", false, 1, "CVE-2024-0001"},
		{"audit/a", true, 1, "audit mode"},
		{"off/a", true, 0, "off"},
		{"other/a", true, 0, "admitted"},
	} {
		d := p.Match("docker.io", tc.repo).Evaluate(findings, now)
		if d.Admitted != tc.admitted || len(d.Blocking) != tc.blocking || !strings.Contains(d.Message, tc.inMsg) {
			t.Errorf("%s: %+v", tc.repo, d)
		}
		if !d.Admitted && !strings.Contains(d.Message, `rule "`) {
			t.Errorf("%s: message does not name the rule: %s", tc.repo, d.Message)
		}
	}
	d := p.Match("docker.io", "allow/a").Evaluate(findings, now)
	if len(d.Allowlisted) != 1 || !d.ValidUntil.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("allowlist decision %+v", d)
	}
	// The same rule after the expiry date denies.
	if d := p.Match("docker.io", "allow/a").Evaluate(findings, d.ValidUntil); d.Admitted {
		t.Fatal("allowlist entry honoured after its expiry")
	}
	if d.Counts["CRITICAL"] != 1 || d.Counts["HIGH"] != 1 || d.Counts["MEDIUM"] != 1 {
		t.Fatalf("counts %v", d.Counts)
	}
}

func TestHashChangesWithRule(t *testing.T) {
	a := rules(t, "gate: {policy: {rules: [{name: d, block: [CRITICAL]}]}}").Match("docker.io", "x").Hash
	b := rules(t, "gate: {policy: {rules: [{name: d, block: [CRITICAL, HIGH]}]}}").Match("docker.io", "x").Hash
	if a == b || a == "" {
		t.Fatal("policy hash does not follow the rule")
	}
}

func TestInvalidPolicyNamesField(t *testing.T) {
	for yml, field := range map[string]string{
		"gate: {policy: {rules: [{name: a, mode: maybe}]}}":                                     "gate.policy.rules[0].mode",
		"gate: {policy: {rules: [{name: a, block: [SEVERE]}]}}":                                 "gate.policy.rules[0].block[0]",
		"gate: {policy: {rules: [{name: a}, {name: b, repositories: [x]}]}}":                    "gate.policy.rules[0]",
		"gate: {policy: {rules: [{name: a, repositories: ['[']}]}}":                             "gate.policy.rules[0].repositories[0]",
		"gate: {policy: {rules: [{name: a, allowlist: [{id: CVE-1, expires: 2027-01-01}]}]}}":   "allowlist[0].reason",
		"gate: {policy: {rules: [{name: a, allowlist: [{id: CVE-1, reason: r}]}]}}":             "allowlist[0].expires",
		"gate: {policy: {rules: [{name: a, upstreams: [quay.io]}]}}":                            "gate.policy.rules[0].upstreams[0]",
		"gate: {policy: {rules: [{name: a, repositories: [x]}, {name: a, repositories: [y]}]}}": "gate.policy.rules[1].name",
		"gate: {blobs: some}": "gate.blobs",
	} {
		_, err := config.Parse([]byte("upstreams: [{name: docker.io}]\n" + yml))
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v does not name %s", yml, err, field)
		}
	}
}
