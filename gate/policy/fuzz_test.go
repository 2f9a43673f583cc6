package policy

import (
	"path"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// FuzzPolicy parses a rule set as an operator writes it (through config
// validation) and matches a repository against it: a valid policy always
// yields a rule, and the rule it yields really matches.
func FuzzPolicy(f *testing.F) {
	for _, s := range []struct{ rules, up, repo string }{
		{`[{name: lib, upstreams: [docker.io], repositories: ["library/*"]}, {name: d}]`, "docker.io", "library/nginx"},
		{`[{name: org, repositories: ["myorg/**"]}, {name: app, repositories: [myorg/app]}]`, "ghcr.io", "myorg/app/sub"},
		{`[{name: x, repositories: ["[a-"]}]`, "docker.io", "a"},
		{`[{name: x, repositories: ["**"]}]`, "docker.io", "a/b"},
		{`[{name: x, repositories: ["/**"]}]`, "DOCKER.IO", "/x"},
		{`[{name: x, repositories: ["a/*/c/**"], mode: audit, block: [high]}]`, "ghcr.io", "a/b/c/d/e"},
		{`[{name: x}, {name: y}]`, "docker.io", "z"},
	} {
		f.Add(s.rules, s.up, s.repo)
	}
	f.Fuzz(func(t *testing.T, rules, up, repo string) {
		cfg, err := config.Parse([]byte("upstreams: [{name: docker.io}, {name: ghcr.io}]\ngate:\n  policy:\n    rules: " + rules + "\n"))
		if err != nil {
			return // config validation is fuzzed in package config
		}
		p := New(cfg.Gate.Policy.Rules)
		r := p.Match(up, repo)
		if r == nil {
			t.Fatal("no rule matched: the default rule must apply")
		}
		if r == p.def {
			for _, cr := range p.Rules() {
				if _, ok := cr.score(up, repo); ok {
					t.Fatalf("rule %q matches %s/%s but the built-in default was chosen", cr.Name, up, repo)
				}
			}
			return
		}
		if len(r.Upstreams) > 0 {
			found := false
			for _, u := range r.Upstreams {
				found = found || strings.EqualFold(u, up)
			}
			if !found {
				t.Fatalf("rule %q for %v chosen for upstream %q", r.Name, r.Upstreams, up)
			}
		}
		if len(r.Repositories) > 0 {
			found := false
			for _, g := range r.Repositories {
				found = found || matchRepo(g, repo)
			}
			if !found {
				t.Fatalf("rule %q (%v) chosen for %q", r.Name, r.Repositories, repo)
			}
		}
	})
}

// FuzzMatchRepo checks the glob matcher against its definition: a name
// without wildcards matches only itself; "p/**" matches what lies below a
// match of p, at any depth, and nothing else.
func FuzzMatchRepo(f *testing.F) {
	for _, s := range [][2]string{
		{"library/*", "library/nginx"}, {"myorg/**", "myorg/a/b"}, {"myorg/**", "myorg"}, {"a/b", "a/b"},
		{"*/**", "x/y"}, {"a?c/**", "abc/d"}, {"[", "["}, {"**", "a/b"}, {"a/**/**", "a/b/c"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, glob, repo string) {
		got := matchRepo(glob, repo)
		if !strings.ContainsAny(glob, `*?[\`) && got != (glob == repo) {
			t.Fatalf("matchRepo(%q, %q) = %v for a literal name", glob, repo, got)
		}
		if prefix, ok := strings.CutSuffix(glob, "/**"); ok {
			n := strings.Count(prefix, "/") + 1
			parts := strings.Split(repo, "/")
			want := false
			if len(parts) > n {
				want, _ = path.Match(prefix, strings.Join(parts[:n], "/"))
			}
			if got != want {
				t.Fatalf("matchRepo(%q, %q) = %v, want %v", glob, repo, got, want)
			}
		}
	})
}

// FuzzEvaluate: an enforcing rule denies exactly when a finding of a
// blocked severity (with a fix, when unfixed ones are ignored) is not
// allowlisted (any other mode string enforces: fail closed); audit and off
// never deny; the counts add up.
func FuzzEvaluate(f *testing.F) {
	f.Add("enforce", "CRITICAL", true, "CRITICAL", "CVE-1", "1.2", "CVE-2", int64(0))
	f.Add("audit", "HIGH", false, "HIGH", "CVE-1", "", "CVE-1", int64(1))
	f.Add("off", "LOW", false, "LOW", "x", "", "", int64(-5))
	f.Add("enforce", "UNKNOWN", false, "unknown", "CVE-3", "", "CVE-3", int64(-1))
	f.Fuzz(func(t *testing.T, mode, block string, ignoreUnfixed bool, sev, id, fixed, allowID string, expiresInDays int64) {
		expires := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		now := expires.AddDate(0, 0, int(expiresInDays%10000))
		r := New([]config.Rule{{Name: "r", Mode: mode, Block: []string{block}, IgnoreUnfixed: ignoreUnfixed,
			Allowlist: []config.Allow{{ID: allowID, Reason: "x", Expires: config.Date{Time: expires}}}}}).Rules()[0]
		fs := []Finding{{ID: id, Severity: sev, PkgName: "p", Installed: "1", Fixed: fixed}, {ID: id, Severity: sev, PkgName: "p", Installed: "1", Fixed: fixed}}
		d := r.Evaluate(fs, now)
		if mode == config.ModeOff {
			if !d.Admitted {
				t.Fatalf("mode off denied: %+v", d)
			}
			return
		}
		total := 0
		for _, n := range d.Counts {
			total += n
		}
		if total != len(fs) {
			t.Fatalf("counts %v for %d findings", d.Counts, len(fs))
		}
		if mode == config.ModeAudit {
			if !d.Admitted {
				t.Fatalf("mode %s denied: %+v", mode, d)
			}
			return
		}
		blocked := sev == block && !(ignoreUnfixed && fixed == "")
		allowed := id == allowID && now.Before(expires.AddDate(0, 0, 1))
		if want := !blocked || allowed; d.Admitted != want {
			t.Fatalf("admitted = %v, want %v: %+v", d.Admitted, want, d)
		}
		if !d.Admitted && (len(d.Blocking) != 1 || !strings.Contains(d.Message, id)) {
			t.Fatalf("denial does not name the one blocking finding once: %+v", d)
		}
	})
}
