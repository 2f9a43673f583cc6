package exceptions

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

const (
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

var now = time.Date(2027, 1, 10, 12, 0, 0, 0, time.UTC)

func upstreams(name string) (string, bool) {
	switch strings.ToLower(name) {
	case "docker.io", "hub":
		return "docker.io", true
	case "ghcr.io":
		return "ghcr.io", true
	}
	return "", false
}

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(Options{Path: path, WarnBefore: 7 * 24 * time.Hour, Upstream: upstreams})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func finding(id, pkg, purl string) policy.Finding {
	return policy.Finding{ID: id, Severity: "CRITICAL", PkgName: pkg, Installed: "1.0", PURL: purl}
}

func TestParseValid(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", `
exceptions:
  - id: CVE-2024-1
    upstreams: [hub]
    repositories: [team/app]
    owner: team-a
    reason: not reachable
    expires: 2027-01-31
  - id: GHSA-abcd-efgh-ijkl
    digests: [`+digestA+`]
    packages: [openssl, "pkg:deb/debian/libssl3?distro=debian-12"]
    owner: sec@example.com
    reason: vendor patch pending
    expires: "2027-01-15T18:00:00+02:00"
`)
	write(t, dir, "b.yml", "exceptions:\n  - {id: CVE-2024-1, repositories: [other/**], owner: b, reason: r, expires: 2027-02-01}\n")
	write(t, dir, "notes.txt", "not read")
	write(t, dir, ".hidden.yaml", "not: [read")
	if err := os.Mkdir(filepath.Join(dir, "..data"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir)
	l := s.List(now)
	if len(l) != 3 {
		t.Fatalf("loaded %d exceptions, want 3: %+v", len(l), l)
	}
	if l[0].Scope.Upstreams[0] != "docker.io" {
		t.Errorf("the alias is not resolved: %v", l[0].Scope.Upstreams)
	}
	if want := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC); !l[0].Expires.Equal(want) {
		t.Errorf("a date expires at %v, want the end of the day %v", l[0].Expires, want)
	}
	if want := time.Date(2027, 1, 15, 16, 0, 0, 0, time.UTC); !l[1].Expires.Equal(want) {
		t.Errorf("an RFC 3339 expiry is %v, want %v", l[1].Expires, want)
	}
	if l[0].Source != filepath.Join(dir, "a.yaml") || l[2].Source != filepath.Join(dir, "b.yml") {
		t.Errorf("sources %q, %q", l[0].Source, l[2].Source)
	}
	if l[0].Owner != "team-a" || l[0].Reason != "not reachable" || l[0].State != gate.ExceptionActive {
		t.Errorf("first: %+v", l[0])
	}
	if l[1].State != gate.ExceptionExpiring {
		t.Errorf("an exception expiring in 5 days with warnBefore 7d is %s", l[1].State)
	}
}

func TestParseErrors(t *testing.T) {
	good := "owner: o\n    reason: r\n    expires: 2027-01-31\n"
	tests := []struct{ name, body, want string }{
		{"no id", "  - repositories: [a]\n    " + good, "exceptions[0].id: required"},
		{"bad id", "  - id: 'CVE 1'\n    repositories: [a]\n    " + good, "exceptions[0].id: \"CVE 1\" is not"},
		{"no scope", "  - id: CVE-1\n    upstreams: [docker.io]\n    " + good, "exceptions[0].repositories: a scope is required"},
		{"unknown upstream", "  - id: CVE-1\n    upstreams: [quay.io]\n    repositories: [a]\n    " + good, "exceptions[0].upstreams[0]: \"quay.io\" is not a configured upstream"},
		{"bad glob", "  - id: CVE-1\n    repositories: ['a/[']\n    " + good, "exceptions[0].repositories[0]: \"a/[\" is not a valid glob"},
		{"empty glob", "  - id: CVE-1\n    repositories: ['']\n    " + good, "exceptions[0].repositories[0]"},
		{"bad digest", "  - id: CVE-1\n    digests: [sha256:abc]\n    " + good, "exceptions[0].digests[0]: \"sha256:abc\" is not a digest"},
		{"bad purl", "  - id: CVE-1\n    packages: ['pkg:']\n    " + good, "exceptions[0].packages[0]: \"pkg:\" is not a package URL"},
		{"empty package", "  - id: CVE-1\n    packages: ['']\n    " + good, "exceptions[0].packages[0]: empty package name"},
		{"no owner", "  - id: CVE-1\n    repositories: [a]\n    reason: r\n    expires: 2027-01-31\n", "exceptions[0].owner: required"},
		{"no reason", "  - id: CVE-1\n    repositories: [a]\n    owner: o\n    reason: ' '\n    expires: 2027-01-31\n", "exceptions[0].reason: required"},
		{"no expiry", "  - id: CVE-1\n    repositories: [a]\n    owner: o\n    reason: r\n", "exceptions[0].expires: required"},
		{"bad expiry", "  - id: CVE-1\n    repositories: [a]\n    owner: o\n    reason: r\n    expires: next week\n", "\"next week\" is not a date"},
		// A misspelt scope field must not be dropped: the exception would
		// cover every repository.
		{"unknown field", "  - id: CVE-1\n    repositorys: [a]\n    packages: [x]\n    " + good, "field repositorys not found"},
		{"second entry", "  - id: CVE-1\n    repositories: [a]\n    " + good + "  - id: CVE-2\n    repositories: [a]\n    owner: o\n    reason: r\n", "exceptions[1].expires: required"},
		{"not yaml", "  - [", "x.yaml: yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(t, t.TempDir(), "x.yaml", "exceptions:\n"+tt.body)
			_, err := Open(Options{Path: p, Upstream: upstreams})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %v, want one naming %s and %q", err, p, tt.want)
			}
		})
	}
	if _, err := Open(Options{Path: filepath.Join(t.TempDir(), "missing.yaml")}); err == nil {
		t.Fatal("a missing file loaded")
	}
}

// How one would slip past the scope: a repository whose name extends the
// excepted one (team/app-evil), one below it (team/app/sub), the same
// repository on another upstream (anyone can push docker.io/team/app's
// namesake to another registry), another digest, another package, another
// vulnerability, or an exception that has expired. None of these is
// covered.
func TestScope(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "x.yaml", `
exceptions:
  - {id: CVE-1, upstreams: [docker.io], repositories: [team/app], owner: o, reason: r, expires: 2027-01-31}
  - {id: CVE-2, digests: [`+digestA+`], owner: o, reason: r, expires: 2027-01-31}
  - {id: CVE-3, packages: [openssl], owner: o, reason: r, expires: 2027-01-31}
  - {id: CVE-4, packages: ["pkg:deb/debian/libssl3"], repositories: [team/*, other/**], owner: o, reason: r, expires: 2027-01-31}
  - {id: CVE-5, repositories: [team/app], owner: o, reason: r, expires: 2027-01-10}
  - {id: CVE-6, repositories: [team/app], owner: o, reason: r, expires: "2027-01-10T12:00:00Z"}
`)
	s := open(t, filepath.Join(dir, "x.yaml"))
	deb := "pkg:deb/debian/libssl3@3.0.1?arch=amd64&distro=debian-12"
	tests := []struct {
		name                   string
		upstream, repo, digest string
		f                      policy.Finding
		want                   bool
	}{
		{"repository", "docker.io", "team/app", digestB, finding("CVE-1", "x", ""), true},
		{"id case", "docker.io", "team/app", digestB, finding("cve-1", "x", ""), true},
		{"upstream case", "Docker.IO", "team/app", digestB, finding("CVE-1", "x", ""), true},
		{"longer name", "docker.io", "team/app-evil", digestB, finding("CVE-1", "x", ""), false},
		{"sub-repository", "docker.io", "team/app/sub", digestB, finding("CVE-1", "x", ""), false},
		{"prefix", "docker.io", "team/ap", digestB, finding("CVE-1", "x", ""), false},
		{"other upstream", "ghcr.io", "team/app", digestB, finding("CVE-1", "x", ""), false},
		{"other vulnerability", "docker.io", "team/app", digestB, finding("CVE-10", "x", ""), false},
		{"digest", "ghcr.io", "any/repo", digestA, finding("CVE-2", "x", ""), true},
		{"other digest", "ghcr.io", "any/repo", digestB, finding("CVE-2", "x", ""), false},
		{"package", "ghcr.io", "any/repo", digestB, finding("CVE-3", "openssl", ""), true},
		{"other package", "ghcr.io", "any/repo", digestB, finding("CVE-3", "openssl-evil", ""), false},
		{"purl", "ghcr.io", "team/x", digestB, finding("CVE-4", "libssl3", deb), true},
		{"purl any depth", "ghcr.io", "other/a/b", digestB, finding("CVE-4", "libssl3", deb), true},
		{"purl glob does not cross /", "ghcr.io", "team/x/y", digestB, finding("CVE-4", "libssl3", deb), false},
		{"purl other package", "ghcr.io", "team/x", digestB, finding("CVE-4", "libssl3", "pkg:deb/debian/libssl3-evil@1"), false},
		{"purl other type", "ghcr.io", "team/x", digestB, finding("CVE-4", "libssl3", "pkg:npm/libssl3@1"), false},
		{"purl name only", "ghcr.io", "team/x", digestB, finding("CVE-4", "libssl3", ""), false},
		{"expired at the end of its day", "docker.io", "team/app", digestB, finding("CVE-5", "x", ""), true},
		{"expired at its instant", "docker.io", "team/app", digestB, finding("CVE-6", "x", ""), false},
	}
	for _, tt := range tests {
		e, ok := s.Except(tt.upstream, tt.repo, tt.digest, tt.f, now)
		if ok != tt.want {
			t.Errorf("%s: covered = %v, want %v", tt.name, ok, tt.want)
		}
		if ok && e.Source == "" {
			t.Errorf("%s: no source", tt.name)
		}
	}
	// The day after CVE-5's date, it is expired: never applied.
	if _, ok := s.Except("docker.io", "team/app", digestB, finding("CVE-5", "x", ""), time.Date(2027, 1, 11, 0, 0, 0, 0, time.UTC)); ok {
		t.Error("an expired exception was applied")
	}
}

func TestPurlQualifiersAndVersion(t *testing.T) {
	p := write(t, t.TempDir(), "x.yaml", `
exceptions:
  - {id: CVE-1, packages: ["pkg:deb/debian/libssl3@3.0.1?distro=debian-12"], owner: o, reason: r, expires: 2027-01-31}
`)
	s := open(t, p)
	for purl, want := range map[string]bool{
		"pkg:deb/debian/libssl3@3.0.1?arch=amd64&distro=debian-12": true,
		"pkg:deb/debian/libssl3@3.0.2?arch=amd64&distro=debian-12": false,
		"pkg:deb/debian/libssl3@3.0.1?arch=amd64&distro=debian-11": false,
		"pkg:deb/ubuntu/libssl3@3.0.1?distro=debian-12":            false,
	} {
		if _, ok := s.Except("docker.io", "a", digestA, finding("CVE-1", "libssl3", purl), now); ok != want {
			t.Errorf("%s: covered = %v, want %v", purl, ok, want)
		}
	}
}

func TestLatestExpiryWins(t *testing.T) {
	p := write(t, t.TempDir(), "x.yaml", `
exceptions:
  - {id: CVE-1, repositories: [a], owner: short, reason: r, expires: 2027-01-20}
  - {id: CVE-1, repositories: ["*"], owner: long, reason: r, expires: 2027-03-01}
  - {id: CVE-1, repositories: [b], owner: other, reason: r, expires: 2028-01-01}
`)
	e, ok := open(t, p).Except("docker.io", "a", digestA, finding("CVE-1", "x", ""), now)
	if !ok || e.Owner != "long" {
		t.Fatalf("got %+v, want the exception that lasts longest", e)
	}
}

type recorder struct{ got []events.Event }

func (r *recorder) Publish(e events.Event) { r.got = append(r.got, e) }

func TestReloadAndCheck(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "x.yaml", "exceptions:\n  - {id: CVE-1, repositories: [a], owner: o, reason: r, expires: 2027-01-15}\n")
	s := open(t, dir)
	cov := func() bool { _, ok := s.Except("docker.io", "a", digestA, finding("CVE-1", "x", ""), now); return ok }
	if changed, err := s.Reload(); changed || err != nil {
		t.Fatalf("unchanged files: changed %v, err %v", changed, err)
	}
	// A file that no longer loads keeps the exceptions read before.
	errs := testutil.ToFloat64(metrics.ExceptionsReloadErrors)
	write(t, dir, "x.yaml", "exceptions:\n  - {id: CVE-1, repositories: [b], owner: o, reason: r}\n")
	changed, err := s.Reload()
	if changed || err == nil || !strings.Contains(err.Error(), "exceptions[0].expires") {
		t.Fatalf("broken file: changed %v, err %v", changed, err)
	}
	if !cov() || testutil.ToFloat64(metrics.ExceptionsReloadErrors) != errs+1 {
		t.Fatal("a failed reload dropped the exceptions in force, or was not counted")
	}
	rec := &recorder{}
	if s.Check(now, rec); len(rec.got) != 1 || rec.got[0].Type != events.ExceptionExpiring || rec.got[0].Subject != "CVE-1" ||
		!strings.Contains(rec.got[0].Message, "exception for CVE-1 (owner ") {
		t.Fatalf("events %+v, want one ExceptionExpiring", rec.got)
	}
	if d := rec.got[0].Data.(ExpiringData); d.Owner != "o" || d.Source != p || d.Scope.Repositories[0] != "a" {
		t.Errorf("event data %+v", d)
	}
	if s.Check(now.Add(time.Hour), rec); len(rec.got) != 1 {
		t.Fatal("the expiring event was published again")
	}
	if got := testutil.ToFloat64(metrics.Exceptions.WithLabelValues("expiring")); got != 1 {
		t.Errorf("expiring gauge %v", got)
	}
	if got := testutil.ToFloat64(metrics.ExceptionsNextExpiry); got != float64(time.Date(2027, 1, 16, 0, 0, 0, 0, time.UTC).Unix()) {
		t.Errorf("next expiry %v", got)
	}
	// Expired: reported once, so that verdicts relying on it are judged again.
	later := time.Date(2027, 1, 16, 0, 0, 0, 0, time.UTC)
	if !s.Check(later, rec) || s.Check(later, rec) {
		t.Error("the expiry was not reported exactly once")
	}
	if testutil.ToFloat64(metrics.Exceptions.WithLabelValues("expired")) != 1 || testutil.ToFloat64(metrics.ExceptionsNextExpiry) != 0 {
		t.Error("metrics after the expiry")
	}
	// A fixed file is put in force.
	write(t, dir, "x.yaml", "exceptions:\n  - {id: CVE-1, repositories: [b], owner: o, reason: r, expires: 2027-06-01}\n")
	if changed, err := s.Reload(); !changed || err != nil {
		t.Fatalf("fixed file: changed %v, err %v", changed, err)
	}
	if cov() {
		t.Error("the old exception is still in force")
	}
}
