package gate

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/gatehouse/gatehouse/gate/records"
)

// The same image in dev/app and prod/app, prod/* blocking HIGH; a new DB
// knows a HIGH in it. How one would slip past: Reevaluate re-judging only
// the repository of the first pull (dev/app, still admitted) leaves no
// denial in prod/app under the new DB, and no verdict.changed event for
// it. Each repository is judged again under its own rule, against its own
// verdict.
func TestReevaluateEveryRepository(t *testing.T) {
	f := newFixture(t, `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - {name: prod, repositories: [prod/*], block: [CRITICAL, HIGH]}
      - {name: default, block: [CRITICAL]}
`)
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prod := f.subject("prod/app", img)
	for _, s := range []Subject{f.subject("dev/app", img), prod} {
		if v, err := f.g.Check(ctx, s); err != nil || !v.Admitted {
			t.Fatalf("%s: %+v %v", s.Repo, v, err)
		}
	}
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.vulns["up.example/dev/app"] = []Vuln{high}
	f.scanner.vulns["up.example/prod/app"] = []Vuln{high}
	f.scanner.mu.Unlock()
	res, err := f.g.Reevaluate(ctx)
	if err != nil || res.Images != 2 || res.Flipped != 1 || res.Failed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if f.scanner.rescans.Load() != 1 {
		t.Fatalf("%d rescans: one per image is enough", f.scanner.rescans.Load())
	}
	rule := f.g.Policy().Match("up.example", "prod/app")
	v, err := f.g.records.Verdict(ctx, records.VerdictKey(prod.Digest.String(), "up.example", "prod/app", rule.Hash, "db-2"))
	if err != nil || v == nil || v.Admitted {
		t.Fatalf("prod/app under db-2: %+v %v", v, err)
	}
}
