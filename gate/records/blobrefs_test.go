package records

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/storage"
)

func hashOf(s string) v1.Hash {
	h, _, _ := v1.SHA256(strings.NewReader(s))
	return h
}

// How one would slip past: keep an admitted image's layers open after
// what its verdict relied on is gone — an allowlist entry or exception
// that expired, an exception withdrawn — or with an index entry written
// by an earlier version, which says neither. An entry past its expiry
// never opens; one whose verdict relied on exceptions, and one of an
// earlier version, opens only when the gate says its verdict holds.
func TestBlobClaimsAskWhatTheVerdictReliedOn(t *testing.T) {
	f := newFixture(t, "{}")
	ctx := context.Background()
	rule := &policy.Rule{Rule: config.Rule{Name: "d", Mode: config.ModeEnforce}, Hash: "h1"}
	until := f.now.Add(time.Hour)
	// Each case's image, with a layer of its own.
	manifest := func(name string) *Manifest {
		return &Manifest{Upstream: "up", Repo: "team/app", Digest: hashOf(name), Kind: "image",
			Config: v1.Descriptor{Digest: hashOf(name + "-config")}, Layers: []v1.Descriptor{{Digest: hashOf(name + "-layer")}}}
	}
	verdict := func(m *Manifest, d *policy.Decision) *Verdict {
		return &Verdict{Digest: m.Digest.String(), Upstream: m.Upstream, Repo: m.Repo, Admitted: true, Kind: "image",
			PolicyHash: rule.Hash, DBVersion: "db-1", Decision: d}
	}
	excepted := []policy.Excepted{{Finding: policy.Finding{ID: "CVE-1"}, Exception: policy.Exception{ID: "CVE-1", Expires: until}}}

	for _, tc := range []struct {
		name     string
		decision *policy.Decision
		raw      string // a value written as it is (an earlier version's)
		now      time.Time
		holds    bool
		wantAsk  bool
		wantOpen bool
	}{
		{name: "clean", decision: &policy.Decision{}, now: f.now, wantOpen: true},
		{name: "allowlisted", decision: &policy.Decision{ValidUntil: until}, now: f.now, wantOpen: true},
		{name: "allowlist expired", decision: &policy.Decision{ValidUntil: until}, now: until},
		{name: "excepted, holds", decision: &policy.Decision{Excepted: excepted, ValidUntil: until}, now: f.now, holds: true, wantAsk: true, wantOpen: true},
		{name: "excepted, withdrawn", decision: &policy.Decision{Excepted: excepted, ValidUntil: until}, now: f.now, wantAsk: true},
		{name: "excepted, expired", decision: &policy.Decision{Excepted: excepted, ValidUntil: until}, now: until, holds: true},
		{name: "audit, blocking", decision: &policy.Decision{Blocking: []policy.Finding{{ID: "CVE-2"}}}, now: f.now, wantAsk: true},
		{name: "earlier version, holds", raw: `{"k":"image","h":"h1","d":"db-1"}`, now: f.now, holds: true, wantAsk: true, wantOpen: true},
		{name: "earlier version, gone", raw: `{"k":"image","h":"h1","d":"db-1"}`, now: f.now, wantAsk: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest(tc.name)
			layer := m.Layers[0].Digest
			if tc.raw != "" {
				err := f.meta.Update(ctx, func(tx storage.Tx) error {
					return tx.Put(tableBlobRefs, append(openKey(m.Upstream, layer, m.Repo), m.Digest.String()...), []byte(tc.raw))
				})
				if err != nil {
					t.Fatal(err)
				}
			} else if err := f.s.Record(ctx, m, verdict(m, tc.decision)); err != nil {
				t.Fatal(err)
			}
			var asked []string
			holds := func(key string) bool {
				asked = append(asked, key)
				return tc.holds
			}
			c, err := f.s.BlobClaims(ctx, "up", "team/app", layer, rule, "db-1", tc.now, holds)
			if err != nil {
				t.Fatal(err)
			}
			want := VerdictKey(m.Digest.String(), "up", "team/app", "h1", "db-1")
			if tc.wantAsk != (len(asked) == 1 && asked[0] == want) {
				t.Errorf("asked %q, want %v of %q", asked, tc.wantAsk, want)
			}
			if c.Image != tc.wantOpen {
				t.Errorf("opened %v, want %v", c.Image, tc.wantOpen)
			}
		})
	}
}
