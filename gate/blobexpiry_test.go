package gate

import (
	"context"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// How one would slip past: have an image admitted under an allowlist entry
// or an exception, wait for it to expire (or for the exception to be
// withdrawn), and then GET the image's layers by digest (they are public
// upstream) without pulling its manifest, which would be judged again.
// A blob reference opens a blob only while the verdict that made it would
// still be used for the manifest.

const allowlistBlobsYAML = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - {name: d, block: [CRITICAL], allowlist: [{id: CVE-2026-1111, reason: not reachable, expires: 2026-11-30}]}
`

// blobsOK reports, for each layer of s, whether it may be served.
func (f *fixture) blobsOK(t *testing.T, s Subject) []bool {
	t.Helper()
	var oks []bool
	for _, d := range layerDigests(t, s) {
		oks = append(oks, f.blobOK(t, s.Repo, d))
	}
	return oks
}

// admit judges each of ss, which must be admitted.
func (f *fixture) admit(t *testing.T, ss ...Subject) {
	t.Helper()
	for _, s := range ss {
		if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
			t.Fatalf("%s: %+v %v", s.Repo, v, err)
		}
	}
}

// setRepo moves the exception to another repository (withdraws it from
// the one it covered).
func (e *fakeExceptions) setRepo(repo string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.repo = repo
}

// allAre reports whether oks is not empty and all its values are want.
func allAre(oks []bool, want bool) bool {
	for _, ok := range oks {
		if ok != want {
			return false
		}
	}
	return len(oks) > 0
}

func TestBlobsCloseWhenAllowlistEntryExpires(t *testing.T) {
	f := newFixture(t, allowlistBlobsYAML)
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	s, clean := f.image(t, "team/app"), f.image(t, "team/clean")
	f.admit(t, s, clean)
	if !allAre(f.blobsOK(t, s), true) {
		t.Fatal("allowlisted image's layers refused before the expiry")
	}
	f.now = time.Date(2026, 12, 1, 0, 0, 1, 0, time.UTC)
	if !allAre(f.blobsOK(t, s), false) {
		t.Fatal("layers served after the allowlist entry expired")
	}
	if !allAre(f.blobsOK(t, clean), true) {
		t.Fatal("a clean image's layers refused: the expiry is its neighbour's")
	}
	// Pulling the manifest judges it again: denied, the layers stay closed.
	if v, _ := f.g.Check(context.Background(), s); v == nil || v.Admitted {
		t.Fatalf("after the expiry: %+v", v)
	}
	if !allAre(f.blobsOK(t, s), false) {
		t.Fatal("layers served after the denial")
	}
}

func TestBlobsCloseWhenExceptionExpires(t *testing.T) {
	f := newFixture(t, exceptionsYAML)
	expires := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// ignoreExpiry: even an Exceptions that forgot the expiry does not
	// keep the layers open (the reference's own expiry ends it).
	f.g.excepts = &fakeExceptions{id: critical.ID, repo: "team/app", expires: expires, ignoreExpiry: true}
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	s := f.image(t, "team/app")
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("excepted: %+v %v", v, err)
	}
	f.now = expires.Add(-time.Second)
	if !allAre(f.blobsOK(t, s), true) {
		t.Fatal("excepted image's layers refused before the expiry")
	}
	f.now = expires
	if !allAre(f.blobsOK(t, s), false) {
		t.Fatal("layers served after the exception expired")
	}
}

func TestBlobsCloseWhenExceptionWithdrawn(t *testing.T) {
	f, ex := newExceptedFixture(t)
	s, clean := f.image(t, "team/app"), f.image(t, "team/clean")
	f.admit(t, s, clean)
	if !allAre(f.blobsOK(t, s), true) {
		t.Fatal("excepted image's layers refused")
	}
	ex.setRepo("team/other") // withdrawn, no Reevaluate, no pull of the manifest
	if !allAre(f.blobsOK(t, s), false) {
		t.Fatal("layers served after the exception was withdrawn")
	}
	ex.setRepo("team/app") // back: the stored verdict holds again
	if !allAre(f.blobsOK(t, s), true) {
		t.Fatal("exception restored, layers still refused")
	}

	// Across a restart (nothing remembered in memory) the same.
	cfg, err := config.Parse([]byte(exceptionsYAML))
	if err != nil {
		t.Fatal(err)
	}
	f.g.Close()
	f.open(t, cfg)
	f.g.excepts = ex
	if !allAre(f.blobsOK(t, s), true) {
		t.Fatal("after a restart, excepted image's layers refused")
	}
	f.g.excepts = nil // gate.exceptions removed from the config
	if !allAre(f.blobsOK(t, s), false) {
		t.Fatal("exceptions unconfigured, layers still served")
	}
	if !allAre(f.blobsOK(t, clean), true) {
		t.Fatal("a clean image's layers refused: it relied on no exception")
	}
}
