package gate

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeSigs stands in for gate/sign (tested with real cosign signatures
// there): it answers per repository and records what it was asked.
type fakeSigs struct {
	mu      sync.Mutex
	results map[string]*SignatureResult
	err     error
	index   *v1.Hash
}

func (f *fakeSigs) Verify(ctx context.Context, up, repo string, d v1.Hash, rule string, index *v1.Hash) (*SignatureResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = index
	if f.err != nil {
		return nil, f.err
	}
	if r, ok := f.results[repo]; ok {
		return r, nil
	}
	return &SignatureResult{Reason: "no signature found"}, nil
}

const sigPolicy = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: signed
        repositories: ["signed/*"]
        signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}]}
      - name: audit-signed
        repositories: ["audit/*"]
        mode: audit
        signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}]}
      - name: optional
        repositories: ["optional/*"]
        signatures: {required: false, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}]}
      - name: default
`

func sigFixture(t *testing.T) (*fixture, *fakeSigs) {
	t.Helper()
	sigs := &fakeSigs{results: map[string]*SignatureResult{}}
	f := newFixtureWith(t, sigPolicy, sigs)
	return f, sigs
}

func TestSignatureRequired(t *testing.T) {
	f, sigs := sigFixture(t)
	sigs.results["signed/good"] = &SignatureResult{Verified: true, Format: "bundle", Identity: "key=sha256:ab"}
	sigs.results["signed/other"] = &SignatureResult{Reason: "signed by an untrusted identity"}
	for _, tc := range []struct {
		repo     string
		admitted bool
		inMsg    string
	}{
		{"signed/good", true, "admitted"},
		{"signed/none", false, `denied by rule "signed": signature required: no signature found`},
		{"signed/other", false, "signed by an untrusted identity"},
		{"audit/none", true, "audit mode"},
		{"optional/none", true, "admitted"},
	} {
		v, err := f.g.Check(context.Background(), f.image(t, tc.repo))
		if err != nil || v.Admitted != tc.admitted || !strings.Contains(v.Message, tc.inMsg) {
			t.Errorf("%s: %+v %v", tc.repo, v, err)
			continue
		}
		if v.Signature == nil {
			t.Errorf("%s: signature result not in the verdict", tc.repo)
		}
	}
}

func TestSignatureErrorFailsClosed(t *testing.T) {
	f, sigs := sigFixture(t)
	sigs.err = errors.New("registry unreachable")
	s := f.image(t, "signed/app")
	v, err := f.g.Check(context.Background(), s)
	if err != nil || v.Admitted || !strings.Contains(v.Message, "signature verification failed") {
		t.Fatalf("%+v %v", v, err)
	}
	// The outage ends: the image is judged again, not denied from a stored
	// verdict.
	sigs.mu.Lock()
	sigs.err = nil
	sigs.results["signed/app"] = &SignatureResult{Verified: true, Format: "legacy-tag"}
	sigs.mu.Unlock()
	v, err = f.g.Check(context.Background(), s)
	if err != nil || !v.Admitted {
		t.Fatalf("after the outage: %+v %v", v, err)
	}
}

// cosign writes legacy signatures with an ordinary image config and a
// simplesigning layer: they pass as artifacts, unscanned.
func TestCosignLegacySignatureManifestPasses(t *testing.T) {
	f, _ := sigFixture(t)
	sig := Subject{Upstream: "up.example", Repo: "signed/app", MediaType: "application/vnd.oci.image.manifest.v1+json",
		Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("d", 64)}, Tag: "sha256-" + strings.Repeat("e", 64) + ".sig",
		Manifest: []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("1", 64) + `","size":233},` +
			`"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:` + strings.Repeat("2", 64) + `","size":250}]}`)}
	v, err := f.g.Check(context.Background(), sig)
	if err != nil || !v.Admitted || v.Reason != ReasonArtifact {
		t.Fatalf("%+v %v", v, err)
	}
	if f.scanner.scans.Load() != 0 {
		t.Fatal("signature manifest was scanned")
	}
}

func TestIndexDigestPassedToVerifier(t *testing.T) {
	f, sigs := sigFixture(t)
	s := f.image(t, "signed/app")
	idx := Subject{Upstream: "up.example", Repo: "signed/app", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("c", 64)},
		MediaType: "application/vnd.oci.image.index.v1+json",
		Manifest:  []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + s.Digest.String() + `","size":1}]}`)}
	if _, err := f.g.Check(context.Background(), idx); err != nil {
		t.Fatal(err)
	}
	f.g.Check(context.Background(), s)
	if sigs.index == nil || *sigs.index != idx.Digest {
		t.Fatalf("verifier got index %v, want %s", sigs.index, idx.Digest)
	}
}

func TestSignatureRuleNeedsVerifier(t *testing.T) {
	if _, err := newGateErr(t, sigPolicy); err == nil || !strings.Contains(err.Error(), "no signature verifier") {
		t.Fatalf("a rule with signatures and no verifier: %v", err)
	}
}

const sigOnlyPolicy = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: signed-only
        repositories: ["signed/*"]
        vulnerabilities: off
        signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}]}
      - name: default
`

// A rule with vulnerabilities: off judges by signature alone: with no
// vulnerability DB loaded a signed image is admitted and an unsigned one
// refused, nothing is scanned, and a CRITICAL the scanner would find does
// not count; a rule that scans still fails closed without a DB.
func TestSignatureOnlyRuleNeedsNoDB(t *testing.T) {
	sigs := &fakeSigs{results: map[string]*SignatureResult{}}
	f := newFixtureWith(t, sigOnlyPolicy, sigs)
	f.scanner.mu.Lock()
	f.scanner.db = "" // no vulnerability DB loaded
	f.scanner.mu.Unlock()
	sigs.results["signed/good"] = &SignatureResult{Verified: true, Format: "bundle", Identity: "key=sha256:ab"}
	f.scanner.vulns["up.example/signed/good"] = []Vuln{{ID: "CVE-2026-1", Severity: "CRITICAL", PkgName: "openssl", Installed: "1", Fixed: "2"}}

	v, err := f.g.Check(context.Background(), f.image(t, "signed/good"))
	if err != nil || !v.Admitted || v.Signature == nil || !v.Signature.Verified || !strings.Contains(v.Message, "checks signatures only") {
		t.Fatalf("signed image under a signature-only rule without a DB: %+v %v", v, err)
	}
	v, err = f.g.Check(context.Background(), f.image(t, "signed/none"))
	if err != nil || v.Admitted || !strings.Contains(v.Message, `denied by rule "signed-only": signature required: no signature found`) {
		t.Fatalf("unsigned image under a signature-only rule: %+v %v", v, err)
	}
	if n := f.scanner.scans.Load(); n != 0 {
		t.Fatalf("%d scans under a signature-only rule", n)
	}
	if _, err := f.g.Check(context.Background(), f.image(t, "other/app")); !errors.Is(err, ErrNoDB) {
		t.Fatalf("a scanning rule without a DB: %v, want ErrNoDB", err)
	}
}
