package gate

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// fakeExceptions covers a vulnerability in one repository, until a time;
// package gate/exceptions is tested on its own.
type fakeExceptions struct {
	mu           sync.Mutex
	id, repo     string
	expires      time.Time
	ignoreExpiry bool // misbehave: return the exception even when expired
}

func (e *fakeExceptions) Except(upstream, repo, digest string, f policy.Finding, now time.Time) (*Exception, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f.ID != e.id || repo != e.repo || (!e.ignoreExpiry && !now.Before(e.expires)) {
		return nil, false
	}
	return &Exception{ID: e.id, Owner: "team-a", Reason: "not reachable", Expires: e.expires, Source: "x.yaml"}, true
}

func (e *fakeExceptions) List(now time.Time) []ExceptionStatus { return nil }

const exceptionsYAML = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - {name: audit, repositories: [audit/*], mode: audit, block: [CRITICAL]}
      - {name: d, block: [CRITICAL]}
`

// How one would slip past: the exception is for team/app; the same image
// in team/app-evil must stay denied; once the exception expires the stored
// admitted verdict must not be served (its ValidUntil ends it), even if
// an Exceptions implementation forgot to check the expiry.
func TestExceptionsInDecide(t *testing.T) {
	f := newFixture(t, exceptionsYAML)
	expires := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ex := &fakeExceptions{id: critical.ID, repo: "team/app", expires: expires}
	f.g.excepts = ex
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	f.scanner.vulns["up.example/team/app-evil"] = []Vuln{critical}
	f.scanner.vulns["up.example/audit/app"] = []Vuln{critical}
	ctx := context.Background()

	v, err := f.g.Check(ctx, f.image(t, "team/app-evil"))
	if err != nil || v.Admitted {
		t.Fatalf("another repository: %+v %v", v, err)
	}
	s := f.image(t, "team/app")
	v, err = f.g.Check(ctx, s)
	if err != nil || !v.Admitted || v.Reason != ReasonClean {
		t.Fatalf("excepted: %+v %v", v, err)
	}
	d := v.Decision
	if len(d.Blocking) != 0 || len(d.Excepted) != 1 || d.Excepted[0].ID != critical.ID || d.Excepted[0].Exception.Owner != "team-a" ||
		d.Excepted[0].Exception.Source != "x.yaml" || !d.ValidUntil.Equal(expires) {
		t.Fatalf("decision %+v", d)
	}
	if !strings.Contains(v.Message, "1 excepted: CVE-2026-1111 (owner team-a, until 2026-12-01T00:00:00Z)") {
		t.Fatalf("message %q", v.Message)
	}
	// Audit mode: the excepted finding is not reported as blocking.
	if v, _ := f.g.Check(ctx, f.image(t, "audit/app")); v == nil || v.Reason != ReasonAudit {
		t.Fatalf("audit without an exception: %+v", v)
	}

	// The exception expired: the stored verdict is judged again (no scan).
	ex.mu.Lock()
	ex.ignoreExpiry = true
	ex.mu.Unlock()
	f.now = expires
	v, err = f.g.Check(ctx, s)
	if err != nil || v.Admitted || len(v.Decision.Excepted) != 0 {
		t.Fatalf("after the expiry: %+v %v", v, err)
	}
	if n := f.scanner.scans.Load(); n != 3 {
		t.Fatalf("%d scans for three images", n)
	}
}

// Reevaluate applies changed exceptions to the stored verdicts: an image
// admitted by an exception that was removed is denied, and back.
func TestExceptionsReevaluate(t *testing.T) {
	f, ex := newExceptedFixture(t)
	s := f.image(t, "team/app")
	ctx := context.Background()
	if v, _ := f.g.Check(ctx, s); v == nil || !v.Admitted {
		t.Fatalf("excepted: %+v", v)
	}
	ex.mu.Lock()
	ex.repo = "team/other"
	ex.mu.Unlock()
	if res, err := f.g.Reevaluate(ctx); err != nil || res.Flipped != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if v, _ := f.g.Check(ctx, s); v == nil || v.Admitted {
		t.Fatalf("exception removed, still admitted: %+v", v)
	}
	if f.scanner.scans.Load() != 1 {
		t.Fatal("re-judging scanned again")
	}
}

// How one would slip past a withdrawn exception: pull the image before
// Reevaluate has re-judged it (the reload runs every reloadInterval), or
// across a restart. The stored verdict is checked against the exceptions
// in force at every use.
func TestExceptionsHoldOnStoredVerdicts(t *testing.T) {
	f, ex := newExceptedFixture(t)
	s := f.image(t, "team/app")
	ctx := context.Background()
	move := func(repo string) {
		ex.mu.Lock()
		ex.repo = repo
		ex.mu.Unlock()
	}
	if v, _ := f.g.Check(ctx, s); v == nil || !v.Admitted {
		t.Fatalf("excepted: %+v", v)
	}
	move("team/other") // withdrawn, no Reevaluate
	if v, _ := f.g.Check(ctx, s); v == nil || v.Admitted {
		t.Fatalf("withdrawn exception still applied: %+v", v)
	}
	move("team/app") // back: the stored denial gives way
	if v, _ := f.g.Check(ctx, s); v == nil || !v.Admitted {
		t.Fatalf("exception added, still denied: %+v", v)
	}
	f.g.excepts = nil // gate.exceptions removed from the config
	if v, _ := f.g.Check(ctx, s); v == nil || v.Admitted {
		t.Fatalf("exceptions unconfigured, still admitted: %+v", v)
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans; the stored report suffices", n)
	}
}

// newExceptedFixture is a gate whose exceptions except critical in
// team/app until 2027, with team/app's image vulnerable to it.
func newExceptedFixture(t *testing.T) (*fixture, *fakeExceptions) {
	t.Helper()
	f := newFixture(t, exceptionsYAML)
	ex := &fakeExceptions{id: critical.ID, repo: "team/app", expires: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	f.g.excepts = ex
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	return f, ex
}
