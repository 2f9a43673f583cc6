package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/gatehouse/gatehouse/storage"
)

// The live policy of the dry-run tests: CRITICAL only, and a signature
// rule for signed/*.
const dryRunLive = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: signed
        repositories: ["signed/*"]
        signatures: {required: true, identities: [` + key + `]}
      - {name: off, repositories: [off/*], mode: off}
      - {name: default, block: [CRITICAL]}
`

var high = Vuln{ID: "CVE-2026-2222", Severity: "HIGH", PkgName: "zlib", Installed: "1.2", Fixed: "1.3"}

// dryFixture judges four images under dryRunLive: team/high (a fixable
// HIGH: admitted), team/crit (CRITICAL: denied), signed/app (signed:
// admitted) and off/app (not scanned: admitted).
func dryFixture(t *testing.T) (*fixture, *ruleSigs) {
	t.Helper()
	sigs := newRuleSigs()
	sigs.rules["signed"] = &SignatureResult{Verified: true, Format: "legacy-tag", Identity: "key=x"}
	f := newFixtureWith(t, dryRunLive, sigs)
	f.scanner.vulns["up.example/team/high"] = []Vuln{high}
	f.scanner.vulns["up.example/team/crit"] = []Vuln{critical}
	for repo, admitted := range map[string]bool{"team/high": true, "team/crit": false, "signed/app": true, "off/app": true} {
		v, err := f.g.Check(context.Background(), f.image(t, repo))
		if err != nil || v.Admitted != admitted {
			t.Fatalf("%s: %+v %v", repo, v, err)
		}
	}
	return f, sigs
}

// dump is every record the gate's database holds, to prove a dry run
// writes none.
func dump(t *testing.T, f *fixture) string {
	t.Helper()
	var b bytes.Buffer
	err := f.meta.View(context.Background(), func(tx storage.Tx) error {
		for _, table := range []string{"verdicts", "reports", "images", "signatures", "denials"} {
			if err := tx.Scan(table, nil, false, func(k, v []byte) (bool, error) {
				b.WriteString(table + " " + string(k) + " " + string(v) + "\n")
				return true, nil
			}); err != nil && err != storage.ErrNotFound {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func dryRun(t *testing.T, f *fixture, yml string) *DryRunResult {
	t.Helper()
	cfg := parseConfig(t, yml)
	res, err := f.g.DryRun(context.Background(), &cfg.Gate, DryRunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func changes(res *DryRunResult) map[string]string {
	out := map[string]string{}
	for _, im := range res.Images {
		out[im.Repo] = im.Change
	}
	return out
}

func byRepo(t *testing.T, res *DryRunResult, repo string) DryRunImage {
	t.Helper()
	for _, im := range res.Images {
		if im.Repo == repo {
			return im
		}
	}
	t.Fatalf("%s not in the dry run: %+v", repo, res.Images)
	return DryRunImage{}
}

// A stricter rule turns the HIGH image denied (the summary fails); a
// looser one admits the CRITICAL one; the live policy changes nothing.
// How one would try to slip past: a dry run that reported a denial as
// unchanged would let a stricter policy break pulls unannounced.
func TestDryRunStricterAndLooser(t *testing.T) {
	f, _ := dryFixture(t)
	res := dryRun(t, f, strings.Replace(dryRunLive, "block: [CRITICAL]}", "block: [CRITICAL, HIGH]}", 1))
	got := changes(res)
	if got["team/high"] != ChangeDenied || got["team/crit"] != ChangeUnchanged || got["signed/app"] != ChangeUnchanged || got["off/app"] != ChangeUnchanged {
		t.Fatalf("stricter: %v", got)
	}
	im := byRepo(t, res, "team/high")
	if im.Current.Verdict != DryAdmitted || im.Proposed.Verdict != DryDenied || im.Proposed.Rule != "default" ||
		len(im.Proposed.Blocking) != 1 || im.Proposed.Blocking[0].ID != high.ID || im.Proposed.Reason != ReasonVulnerable ||
		len(im.Tags) != 1 || im.Tags[0] != "v1" {
		t.Fatalf("team/high: %+v", im)
	}
	if s := res.Summary; s.Images != 4 || s.BecomeDenied != 1 || s.Unchanged != 3 || !s.Fails() || res.Images[0].Repo != "team/high" {
		t.Fatalf("summary %+v, first %s", s, res.Images[0].Repo)
	}

	looser := strings.Replace(dryRunLive, "block: [CRITICAL]}", "block: [CRITICAL], allowlist: [{id: CVE-2026-1111, reason: r, expires: 2027-01-01}]}", 1)
	res = dryRun(t, f, looser)
	if got := changes(res); got["team/crit"] != ChangeAdmitted || got["team/high"] != ChangeUnchanged || res.Summary.Fails() {
		t.Fatalf("looser: %v %+v", got, res.Summary)
	}

	res = dryRun(t, f, dryRunLive)
	if res.Summary.Unchanged != 4 || res.Summary.Fails() {
		t.Fatalf("the live policy itself: %+v", res.Summary)
	}
}

// A signature is never assumed: a new signature rule gives undetermined
// (not admitted) for images whose signature is not on record, and fails
// the summary for those admitted now; an image its vulnerabilities deny
// is denied whatever its signature. The live rule's stored result (same
// hash) decides. An attestation rule is undetermined.
func TestDryRunSignaturesUndetermined(t *testing.T) {
	f, sigs := dryFixture(t)
	yml := strings.Replace(dryRunLive, `repositories: ["signed/*"]`, `repositories: ["signed/*", "team/*"]`, 1)
	res := dryRun(t, f, yml)
	// The rule changed (its repositories are hashed): the stored result of
	// signed/app no longer counts either.
	got := changes(res)
	if got["team/high"] != ChangeUndetermined || got["team/crit"] != ChangeUnchanged || got["signed/app"] != ChangeUndetermined {
		t.Fatalf("new signature rule: %v", got)
	}
	if im := byRepo(t, res, "team/high"); im.Proposed.Verdict != DryUndetermined || !strings.Contains(im.Proposed.Message, "signature would be verified") {
		t.Fatalf("team/high: %+v", im)
	}
	if im := byRepo(t, res, "team/crit"); im.Proposed.Verdict != DryDenied || im.Proposed.Rule != "signed" {
		t.Fatalf("team/crit: %+v", im)
	}
	if s := res.Summary; s.Undetermined != 2 || s.UndeterminedAdmitted != 2 || !s.Fails() {
		t.Fatalf("summary %+v", s)
	}
	// A separate, identical rule for team/*: the stored result of signed/app
	// (same rule, same hash) still decides it.
	yml = strings.Replace(dryRunLive, "      - {name: off", "      - name: team\n        repositories: [\"team/*\"]\n        signatures: {required: true, identities: ["+key+"]}\n      - {name: off", 1)
	res = dryRun(t, f, yml)
	if got := changes(res); got["signed/app"] != ChangeUnchanged || got["team/high"] != ChangeUndetermined {
		t.Fatalf("identical signed rule: %v", got)
	}
	if n := sigs.calls["signed"] + sigs.calls["team"]; n != 1 {
		t.Fatalf("%d signature verifications: a dry run verified", n)
	}
	// Attestations are never on record.
	att := strings.Replace(dryRunLive, "        signatures: {required: true, identities: ["+key+"]}",
		"        signatures: {required: true, identities: ["+key+"]}\n        attestations: {sbom: true}", 1)
	if im := byRepo(t, dryRun(t, f, att), "signed/app"); im.Change != ChangeUndetermined || !strings.Contains(im.Proposed.Message, "attestations") {
		t.Fatalf("attestation rule: %+v", im)
	}
}

// A scanning rule over an image never scanned (judged under an off rule)
// is undetermined; a report made with an older DB is detected again with
// the loaded one, and not stored.
func TestDryRunUnscannedAndOlderDB(t *testing.T) {
	f, _ := dryFixture(t)
	res := dryRun(t, f, strings.Replace(dryRunLive, "      - {name: off, repositories: [off/*], mode: off}\n", "", 1))
	if im := byRepo(t, res, "off/app"); im.Change != ChangeUndetermined || !strings.Contains(im.Proposed.Message, "not scanned") {
		t.Fatalf("off/app under a scanning rule: %+v", im)
	}
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.vulns["up.example/team/high"] = []Vuln{high, critical}
	f.scanner.mu.Unlock()
	before := dump(t, f)
	res = dryRun(t, f, dryRunLive)
	if im := byRepo(t, res, "team/high"); im.Change != ChangeDenied || res.DBVersion != "db-2" {
		t.Fatalf("team/high with db-2: %+v (db %s)", im, res.DBVersion)
	}
	if f.scanner.rescans.Load() == 0 || f.scanner.scans.Load() != 3 {
		t.Fatalf("%d rescans, %d scans", f.scanner.rescans.Load(), f.scanner.scans.Load())
	}
	if after := dump(t, f); after != before {
		t.Fatal("the dry run stored a report detected with db-2")
	}
}

// Attacker view: a dry run is not a way to change the live policy or the
// stored verdicts (a proposal admitting everything, then a pull of the
// denied image, is still denied), nor does it fetch anything: the
// scanner, the signature verifier and the blob store are not asked.
func TestDryRunChangesNothing(t *testing.T) {
	f, sigs := dryFixture(t)
	before, hash := dump(t, f), f.g.Policy().Match("up.example", "team/crit").Hash
	opens, scans := f.blobs.opens, f.scanner.scans.Load()
	crit := f.image(t, "team/crit")
	res := dryRun(t, f, `
upstreams: [{name: up.example}]
gate:
  passArtifactTypes: [application/vnd.oci.image.config.v1+json]
  policy:
    rules: [{name: open, mode: off}]
`)
	if got := changes(res); got["team/crit"] != ChangeAdmitted {
		t.Fatalf("everything off: %v", got)
	}
	if after := dump(t, f); after != before {
		t.Fatalf("the dry run wrote records:\nbefore %s\nafter %s", before, after)
	}
	if f.blobs.opens != opens || f.scanner.scans.Load() != scans || sigs.calls["signed"] != 1 {
		t.Fatal("the dry run fetched, scanned or verified")
	}
	if f.g.Policy().Match("up.example", "team/crit").Hash != hash {
		t.Fatal("the live policy changed")
	}
	v, err := f.g.Check(context.Background(), crit)
	if err != nil || v.Admitted {
		t.Fatalf("team/crit after the dry run: %+v %v", v, err)
	}
	// The JSON is stable: lists are never null.
	b, _ := json.Marshal(dryRun(t, f, dryRunLive))
	if bytes.Contains(b, []byte("null")) {
		t.Fatalf("null in %s", b)
	}
}

// A proposed rule with VEX needs a VEX filter for the proposal; without
// one the dry run refuses rather than judge without the statements.
func TestDryRunVEXNeedsFilter(t *testing.T) {
	f, _ := dryFixture(t)
	cfg := parseConfig(t, `
upstreams: [{name: up.example}]
gate:
  policy:
    rules: [{name: v, vex: {repositories: [up.example/vex:1]}}]
`)
	if _, err := f.g.DryRun(context.Background(), &cfg.Gate, DryRunOptions{}); err == nil {
		t.Fatal("VEX rule judged without a filter")
	}
	vex := &fakeVEX{files: map[string]bool{critical.ID: true}}
	res, err := f.g.DryRun(context.Background(), &cfg.Gate, DryRunOptions{VEX: vex})
	if err != nil || byRepo(t, res, "team/crit").Change != ChangeAdmitted {
		t.Fatalf("VEX suppressing the CRITICAL: %+v %v", res, err)
	}
}

// The same image pulled in dev/app, where a rule blocks HIGH (denied), and
// in prod/app (admitted); a proposal moves that rule to prod/*. How one
// would slip past: the image record names only the repository of the
// first pull, and its latest verdict is that of another repository; a dry
// run judging one repository per image against that verdict reports both
// unchanged, while every pull of prod/app would be denied. Each repository
// is judged under its own rule, against its own verdict.
func TestDryRunEveryRepository(t *testing.T) {
	live := strings.Replace(dryRunLive, "      - {name: default", "      - {name: dev, repositories: [dev/*], block: [CRITICAL, HIGH]}\n      - {name: default", 1)
	f := newFixtureWith(t, live, newRuleSigs())
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.scanner.vulns["up.example/dev/app"] = []Vuln{high}
	f.scanner.vulns["up.example/prod/app"] = []Vuln{high}
	for repo, admitted := range map[string]bool{"dev/app": false, "prod/app": true} {
		if v, err := f.g.Check(context.Background(), f.subject(repo, img)); err != nil || v.Admitted != admitted {
			t.Fatalf("%s: %+v %v", repo, v, err)
		}
	}
	res := dryRun(t, f, strings.Replace(live, "name: dev, repositories: [dev/*]", "name: prod, repositories: [prod/*]", 1))
	got := changes(res)
	if len(res.Images) != 2 || got["prod/app"] != ChangeDenied || got["dev/app"] != ChangeAdmitted || !res.Summary.Fails() ||
		res.Summary.Images != 2 || res.Summary.BecomeDenied != 1 || res.Summary.BecomeAdmitted != 1 {
		t.Fatalf("rule moved to prod: %v %+v", got, res.Summary)
	}
	prod, dev := byRepo(t, res, "prod/app"), byRepo(t, res, "dev/app")
	if prod.Digest != dev.Digest || prod.Proposed.Rule != "prod" || prod.Current.Rule != "default" || dev.Current.Rule != "dev" ||
		dev.Proposed.Rule != "default" {
		t.Fatalf("prod %+v\ndev %+v", prod, dev)
	}
	if res := dryRun(t, f, live); res.Summary.Unchanged != 2 || res.Summary.Fails() {
		t.Fatalf("the live policy itself: %+v", res.Summary)
	}
}

// The proposal's exceptions apply, never those in force. How one would
// slip past: a proposal that drops gate.exceptions, tested while the live
// exceptions still apply, is reported unchanged, and once in force denies
// every image the exceptions admitted.
func TestDryRunProposedExceptions(t *testing.T) {
	f, _ := dryFixture(t)
	f.scanner.vulns["up.example/team/exc"] = []Vuln{critical}
	exc := f.image(t, "team/exc")
	f.g.excepts = &fakeExceptions{id: critical.ID, repo: "team/exc", expires: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	if v, err := f.g.Check(context.Background(), exc); err != nil || !v.Admitted {
		t.Fatalf("excepted: %+v %v", v, err)
	}
	res := dryRun(t, f, dryRunLive) // no exceptions proposed
	if im := byRepo(t, res, "team/exc"); im.Change != ChangeDenied || im.Proposed.Verdict != DryDenied || !res.Summary.Fails() {
		t.Fatalf("exceptions dropped: %+v", im)
	}
	cfg := parseConfig(t, dryRunLive)
	res, err := f.g.DryRun(context.Background(), &cfg.Gate, DryRunOptions{Exceptions: f.g.excepts})
	if err != nil || res.Summary.Unchanged != 5 || res.Summary.Fails() {
		t.Fatalf("the same exceptions: %+v %v", res, err)
	}
}
