package gate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
)

// fakeAtts stands in for gate/sign's attestation verification (tested
// with real signed attestations there): per repository.
type fakeAtts struct {
	mu       sync.Mutex
	atts     map[string][]Attestation
	rejected map[string][]AttestationRejection
	err      error
	calls    int
}

func (f *fakeAtts) Attestations(ctx context.Context, up, repo string, d v1.Hash, rule string) ([]Attestation, []AttestationRejection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, nil, f.err
	}
	return f.atts[repo], f.rejected[repo], nil
}

// fakeVEX suppresses the CVEs it is told to, from its files and from
// attached OpenVEX attestations (whose predicate names the CVE).
type fakeVEX struct {
	files    map[string]bool // CVE IDs the rule's files cover
	attached []Attestation   // what the last Apply was given
}

func (f *fakeVEX) Apply(rule string, img VEXImage, vulns []Vuln, attached []Attestation) ([]Vuln, []Suppression) {
	f.attached = attached
	var kept []Vuln
	var supp []Suppression
	for _, v := range vulns {
		src := ""
		if f.files[v.ID] {
			src = "file"
		}
		for _, a := range attached {
			if strings.Contains(string(a.Predicate), v.ID) {
				src = "attestation signed by " + a.Identity
			}
		}
		if src == "" {
			kept = append(kept, v)
			continue
		}
		supp = append(supp, Suppression{ID: v.ID, PkgName: v.PkgName, Status: "not_affected", Source: src})
	}
	return kept, supp
}

const key = `{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}`

func attFixture(t *testing.T, yml string) (*fixture, *fakeSigs, *fakeAtts, *fakeVEX) {
	t.Helper()
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	sigs := &fakeSigs{results: map[string]*SignatureResult{}}
	atts := &fakeAtts{atts: map[string][]Attestation{}, rejected: map[string][]AttestationRejection{}}
	vex := &fakeVEX{files: map[string]bool{}}
	f := &fixture{scanner: &fakeScanner{db: "db-1", vulns: map[string][]Vuln{}}, blobs: &memBlobs{blobs: map[v1.Hash][]byte{}},
		now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), dir: t.TempDir(), sigs: sigs, atts: atts, vex: vex}
	f.open(t, cfg)
	return f, sigs, atts, vex
}

const provenancePolicy = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: built
        repositories: ["app/*"]
        signatures: {required: false, identities: [` + key + `]}
        attestations:
          provenance:
            builderIds: ["https://github.com/our-org/.github/workflows/release.yml@*"]
            sourceRepositories: ["git+https://github.com/our-org/*"]
          sbom: true
          vulnerabilityScan: {maxAge: 24h}
      - name: default
`

func goodAtts(now time.Time) []Attestation {
	return []Attestation{
		{PredicateType: PredicateSLSAv1, Identity: "key=sha256:ab", BuilderID: "https://github.com/our-org/.github/workflows/release.yml@refs/tags/v1",
			SourceRepos: []string{"git+https://github.com/our-org/app@refs/tags/v1"}},
		{PredicateType: PredicateSPDX, Identity: "key=sha256:ab"},
		{PredicateType: PredicateVuln, Identity: "key=sha256:ab", ScanTime: now.Add(-time.Hour)},
	}
}

// A rule requiring attestations admits an image whose provenance names a
// trusted builder and source, with an SBOM and a fresh scan; each way of
// failing one is a denial that names the attestation and why.
func TestAttestationsRequired(t *testing.T) {
	f, _, atts, _ := attFixture(t, provenancePolicy)
	now := f.now
	atts.atts["app/good"] = goodAtts(now)
	wrongBuilder := goodAtts(now)
	wrongBuilder[0].BuilderID = "https://github.com/attacker/.github/workflows/release.yml@refs/tags/v1"
	atts.atts["app/evil-builder"] = wrongBuilder
	wrongSource := goodAtts(now)
	wrongSource[0].SourceRepos = []string{"git+https://github.com/attacker/app"}
	atts.atts["app/evil-source"] = wrongSource
	old := goodAtts(now)
	old[2].ScanTime = now.Add(-48 * time.Hour)
	atts.atts["app/stale-scan"] = old
	atts.atts["app/no-sbom"] = goodAtts(now)[0:1:1]
	atts.atts["app/no-sbom"] = append(atts.atts["app/no-sbom"], goodAtts(now)[2])
	atts.rejected["app/untrusted"] = []AttestationRejection{{PredicateType: PredicateSLSAv1, Count: 1, Reason: "signed by an untrusted identity"}}
	for _, tc := range []struct {
		repo     string
		admitted bool
		inMsg    string
	}{
		{"app/good", true, ""},
		{"app/evil-builder", false, `denied by rule "built": attestation required: provenance: builder "https://github.com/attacker/.github/workflows/release.yml@refs/tags/v1" is not one of`},
		{"app/evil-source", false, "provenance: source git+https://github.com/attacker/app is not one of git+https://github.com/our-org/*"},
		{"app/stale-scan", false, "vulnerabilityScan: the newest scan is 48h old, more than 24h"},
		{"app/no-sbom", false, "attestation required: sbom: no SBOM attestation found"},
		{"app/untrusted", false, "provenance: no trusted SLSA provenance attestation (1 rejected: signed by an untrusted identity)"},
	} {
		v, err := f.g.Check(context.Background(), f.image(t, tc.repo))
		if err != nil || v.Admitted != tc.admitted || !strings.Contains(v.Message, tc.inMsg) {
			t.Errorf("%s: %+v %v", tc.repo, v, err)
			continue
		}
		if len(v.Attestations) != 3 {
			t.Errorf("%s: attestation checks %+v, want 3", tc.repo, v.Attestations)
		}
		if !tc.admitted && v.Reason != ReasonAttestation {
			t.Errorf("%s: reason %q", tc.repo, v.Reason)
		}
	}
}

// Attestations that cannot be fetched deny the request (fail closed) but
// leave no lasting verdict: once the registry answers, the image is judged.
func TestAttestationFetchErrorFailsClosed(t *testing.T) {
	f, _, atts, _ := attFixture(t, provenancePolicy)
	atts.err = errors.New("registry unreachable")
	s := f.image(t, "app/good")
	v, err := f.g.Check(context.Background(), s)
	if err != nil || v.Admitted || !strings.Contains(v.Message, "attestations could not be fetched") {
		t.Fatalf("%+v %v", v, err)
	}
	atts.mu.Lock()
	atts.err = nil
	atts.atts["app/good"] = goodAtts(f.now)
	atts.mu.Unlock()
	if v, err = f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("after the outage: %+v %v", v, err)
	}
}

const vexPolicy = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: vexed
        repositories: ["app/*"]
        signatures: {required: false, identities: [` + key + `]}
        vex: {files: [VEXFILE], attestations: true}
      - name: files-only
        repositories: ["lib/*"]
        vex: {files: [VEXFILE]}
      - name: default
`

// VEX: a CVE a trusted statement covers no longer counts, and the verdict
// says which statement removed it; attached VEX attestations are given to
// the filter only under a rule that accepts them, and only verified ones
// (the verifier returns no others).
func TestVEXSuppresses(t *testing.T) {
	vexFile := filepath.Join(t.TempDir(), "vex.json")
	os.WriteFile(vexFile, []byte(`{"@context":"https://openvex.dev/ns/v0.2.0"}`), 0o600)
	f, _, atts, vex := attFixture(t, strings.ReplaceAll(vexPolicy, "VEXFILE", vexFile))
	crit := []Vuln{{ID: "CVE-2026-0001", Severity: "CRITICAL", PkgName: "openssl", Installed: "1", Fixed: "2"}}
	for _, r := range []string{"app/file", "app/attached", "app/unsigned", "lib/attached"} {
		f.scanner.vulns["up.example/"+r] = crit
	}
	vex.files["CVE-2026-0001"] = false
	atts.atts["app/attached"] = []Attestation{{PredicateType: PredicateOpenVEX, Identity: "key=sha256:ab", Predicate: []byte(`CVE-2026-0001`)}}
	atts.atts["lib/attached"] = atts.atts["app/attached"]

	v, err := f.g.Check(context.Background(), f.image(t, "app/attached"))
	if err != nil || !v.Admitted || len(v.Suppressed) != 1 || v.Suppressed[0].Source != "attestation signed by key=sha256:ab" {
		t.Fatalf("attached signed VEX: %+v %v", v, err)
	}
	if v, err = f.g.Check(context.Background(), f.image(t, "app/unsigned")); err != nil || v.Admitted || len(v.Suppressed) != 0 {
		t.Fatalf("no VEX: %+v %v", v, err)
	}
	// A rule that takes VEX from files only never reads attestations.
	if v, err = f.g.Check(context.Background(), f.image(t, "lib/attached")); err != nil || v.Admitted || len(vex.attached) != 0 {
		t.Fatalf("VEX attestation under a files-only rule: %+v %v (attached %v)", v, err, vex.attached)
	}
	vex.files["CVE-2026-0001"] = true
	if v, err = f.g.Check(context.Background(), f.image(t, "app/file")); err != nil || !v.Admitted || len(v.Suppressed) != 1 || v.Suppressed[0].Source != "file" {
		t.Fatalf("VEX file: %+v %v", v, err)
	}
}

// A rule that does not scan cannot take VEX, and attestations need the
// signatures' identities.
func TestAttestationConfigErrors(t *testing.T) {
	for yml, want := range map[string]string{
		`gate: {policy: {rules: [{name: a, attestations: {sbom: true}}]}}`:                                                     "rules[0].attestations: needs signatures.identities",
		`gate: {policy: {rules: [{name: a, vex: {attestations: true}}]}}`:                                                      "rules[0].vex.attestations: needs signatures.identities",
		`gate: {policy: {rules: [{name: a, vex: {files: [/does/not/exist]}}]}}`:                                                "rules[0].vex.files[0]",
		`gate: {policy: {rules: [{name: a, signatures: {identities: [` + key + `]}, attestations: {provenance: {}}}]}}`:        "rules[0].attestations.provenance.builderIds: required",
		`gate: {policy: {rules: [{name: a, signatures: {identities: [` + key + `]}, attestations: {vulnerabilityScan: {}}}]}}`: "maxAge: required",
		// "our-org*" would match our-org-evil; "https://*" any host.
		`gate: {policy: {rules: [{name: a, signatures: {identities: [` + key + `]}, attestations: {provenance: {builderIds: ["https://github.com/our-org*"]}}}]}}`:        "builderIds[0]: \"https://github.com/our-org*\" has a * that does not follow a / or @",
		`gate: {policy: {rules: [{name: a, signatures: {identities: [` + key + `]}, attestations: {provenance: {builderIds: [b], sourceRepositories: ["https://*"]}}}]}}`: "sourceRepositories[0]: \"https://*\" must name the scheme and host literally",
	} {
		if _, err := config.Parse([]byte(yml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", yml, err, want)
		}
	}
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"https://github.com/org/*", "https://github.com/org/repo/.github/workflows/x.yml@refs/heads/main", true},
		{"https://github.com/org/*", "https://github.com/organisation/repo", false},
		{"https://github.com/org/*@refs/tags/v*", "https://github.com/org/w.yml@refs/tags/v1.2", true},
		{"https://github.com/org/*@refs/tags/v*", "https://github.com/org/w.yml@refs/heads/main", false},
		{"exact", "exact", true},
		{"exact", "exactly", false},
		{"a*b", "ab", true},
		{"a*bb", "ab", false},
	} {
		if got := globMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

// A verdict that relied on a vulnerability-scan attestation holds only
// until that scan is older than maxAge: then the image is judged again
// (and refused while no newer scan is attached).
func TestScanAttestationAges(t *testing.T) {
	f, _, atts, _ := attFixture(t, provenancePolicy)
	atts.atts["app/good"] = goodAtts(f.now) // scanned an hour ago, maxAge 24h
	s := f.image(t, "app/good")
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("fresh scan: %+v %v", v, err)
	}
	f.now = f.now.Add(22 * time.Hour)
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("scan 23h old: %+v %v", v, err)
	}
	f.now = f.now.Add(2 * time.Hour)
	v, err := f.g.Check(context.Background(), s)
	if err != nil || v.Admitted || !strings.Contains(v.Message, "vulnerabilityScan: the newest scan is 25h old, more than 24h") {
		t.Fatalf("scan 25h old, verdict made when it was fresh: %+v %v", v, err)
	}
}

const staleDBPolicy = `
upstreams: [{name: up.example}]
gate:
  db: {maxAge: 48h, updateInterval: 6h}
  policy:
    rules:
      - name: strict
        repositories: ["strict/*"]
      - name: lenient
        repositories: ["lenient/*"]
        staleDB: warn
      - name: signed-only
        repositories: ["signed/*"]
        vulnerabilities: off
        signatures: {required: true, identities: [` + key + `]}
      - name: default
        mode: off
`

// gate.db.maxAge: with a DB older than it, a new verdict under a rule
// whose staleDB is deny (the default) is a denial that says so, and under
// warn an admission with the warning recorded; rules that do not scan do
// not care, and a fresh DB changes nothing.
func TestStaleDB(t *testing.T) {
	f, sigs, _, _ := attFixture(t, staleDBPolicy)
	sigs.results["signed/app"] = &SignatureResult{Verified: true}
	built := f.now.Add(-72 * time.Hour)
	f.g.dbBuilt = func() time.Time { return built }
	v, err := f.g.Check(context.Background(), f.image(t, "strict/app"))
	if err != nil || v.Admitted || v.Reason != ReasonStaleDB || !strings.Contains(v.Message, `denied by rule "strict": the vulnerability DB is 72h old, more than gate.db.maxAge 48h`) {
		t.Fatalf("deny: %+v %v", v, err)
	}
	v, err = f.g.Check(context.Background(), f.image(t, "lenient/app"))
	if err != nil || !v.Admitted || len(v.Warnings) != 1 || !strings.Contains(v.Message, "warning: the vulnerability DB is 72h old") {
		t.Fatalf("warn: %+v %v", v, err)
	}
	if v, err = f.g.Check(context.Background(), f.image(t, "signed/app")); err != nil || !v.Admitted || len(v.Warnings) != 0 {
		t.Fatalf("signature-only: %+v %v", v, err)
	}
	built = f.now.Add(-time.Hour)
	if v, err = f.g.Check(context.Background(), f.image(t, "strict/other")); err != nil || !v.Admitted {
		t.Fatalf("fresh DB: %+v %v", v, err)
	}
	// How one would slip past: make the DB's status unreadable (stack.go
	// then reports a zero build time), or run without one: an unknown age
	// is no fresh DB.
	for _, dbBuilt := range []func() time.Time{func() time.Time { return time.Time{} }, nil} {
		f.g.dbBuilt = dbBuilt
		v, err = f.g.Check(context.Background(), f.image(t, "strict/app"))
		if err != nil || v.Admitted || v.Reason != ReasonStaleDB || !strings.Contains(v.Message, "the vulnerability DB's age is unknown") {
			t.Fatalf("unknown age, deny: %+v %v", v, err)
		}
		v, err = f.g.Check(context.Background(), f.image(t, "lenient/app"))
		if err != nil || !v.Admitted || len(v.Warnings) != 1 || !strings.Contains(v.Message, "warning: the vulnerability DB's age is unknown") {
			t.Fatalf("unknown age, warn: %+v %v", v, err)
		}
		if v, err = f.g.Check(context.Background(), f.image(t, "signed/app")); err != nil || !v.Admitted || len(v.Warnings) != 0 {
			t.Fatalf("unknown age, signature-only: %+v %v", v, err)
		}
	}
}
