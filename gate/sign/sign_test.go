package sign_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"go.uber.org/goleak"

	"github.com/gatehouse/gatehouse/gate/sign"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

const (
	testIssuer   = "https://issuer.test"
	otherIssuer  = "https://other-issuer.test"
	testEmail    = "builder@example.com"
	testWorkflow = "https://github.com/example/app/.github/workflows/release.yml@refs/heads/main"
)

// fixture is one upstream with trusted and untrusted signers.
type fixture struct {
	up        *upstream
	key, evil *keyPair
	ca, rogue *testCA
	rekor     *testLog
	ct        *testLog
	tsa       *testTSA
	root      []byte // trusts ca, rekor, ct and tsa
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{
		up:    newUpstream(t),
		key:   newKey(t),
		evil:  newKey(t),
		ca:    newCA(t, "test fulcio"),
		rogue: newCA(t, "rogue fulcio"),
		rekor: newLog(t),
		ct:    newLog(t),
		tsa:   newTSA(t),
	}
	f.root = trustedRootJSON(t, []*testCA{f.ca}, []*testLog{f.rekor}, []*testLog{f.ct}, f.tsa)
	return f
}

func (f *fixture) verifier(opts ...func(*sign.Options)) *sign.Verifier {
	o := sign.Options{Transport: f.up.rt}
	for _, fn := range opts {
		fn(&o)
	}
	return sign.New(o)
}

func keyPolicy(keys ...*keyPair) *sign.Policy {
	p := &sign.Policy{Required: true}
	for _, k := range keys {
		p.Identities = append(p.Identities, sign.Identity{PublicKeyPEM: k.pubPEM})
	}
	return p
}

func (f *fixture) keylessPolicy(ids ...sign.Identity) *sign.Policy {
	return &sign.Policy{Required: true, Identities: ids, TrustedRoot: f.root}
}

// signKeyless makes a legacy keyless signature of h: a fresh key, a
// certificate from ca for l, and (if log is set) a Rekor entry dated at.
func (f *fixture) signKeyless(t *testing.T, h v1.Hash, ca *testCA, l leaf, tlog *testLog, at time.Time) {
	f.up.attachLegacy(t, h, f.keylessSig(t, h, ca, l, tlog, at, nil))
}

// keylessSig is signKeyless's signature, with a signed timestamp from tsa
// dated at if tsa is set.
func (f *fixture) keylessSig(t *testing.T, h v1.Hash, ca *testCA, l leaf, tlog *testLog, at time.Time, tsa *testTSA) oci.Signature {
	k := newKey(t)
	cert := certPEM(t, ca.issue(t, &k.priv.PublicKey, l))
	chain := certPEM(t, ca.cert)
	sig := f.up.legacySig(t, h, k, static.WithCertChain(cert, chain))
	opts := []static.Option{static.WithCertChain(cert, chain)}
	if tlog != nil {
		opts = append(opts, static.WithBundle(tlog.rekorBundle(t, sig, cert, at)))
	}
	if tsa != nil {
		raw, err := sig.Signature()
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, static.WithRFC3161Timestamp(&cbundle.RFC3161Timestamp{SignedRFC3161Timestamp: tsa.stamp(t, raw, at)}))
	}
	p, _ := sig.Payload()
	b64, _ := sig.Base64Signature()
	out, err := static.NewSignature(p, b64, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type want struct {
	verified bool
	format   string
	reason   string
	identity string // substring
	digest   *v1.Hash
}

func check(t *testing.T, res *sign.Result, err error, w want) {
	t.Helper()
	if err != nil {
		t.Fatalf("Verify: unexpected error %v (result %+v)", err, res)
	}
	if res == nil {
		t.Fatal("Verify returned a nil result")
	}
	if res.Verified != w.verified {
		t.Fatalf("Verified = %v, want %v (reason %q, detail %q)", res.Verified, w.verified, res.Reason, res.Detail)
	}
	if res.Reason != w.reason {
		t.Errorf("Reason = %q, want %q (detail %q)", res.Reason, w.reason, res.Detail)
	}
	if res.Format != w.format {
		t.Errorf("Format = %q, want %q", res.Format, w.format)
	}
	if !strings.Contains(res.Identity, w.identity) || (w.identity == "" && res.Identity != "") {
		t.Errorf("Identity = %q, want %q", res.Identity, w.identity)
	}
	if w.verified && w.digest != nil && res.Digest != w.digest.String() {
		t.Errorf("Digest = %q, want %q", res.Digest, w.digest)
	}
	if res.VerifiedAt.IsZero() {
		t.Error("VerifiedAt is zero")
	}
}

func TestVerify(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	emailID := sign.Identity{Issuer: testIssuer, Subject: testEmail}
	workflowID := sign.Identity{IssuerRegexp: `^https://issuer\.test$`, SubjectRegexp: `^https://github\.com/example/app/`}

	cases := []struct {
		name   string
		setup  func(t *testing.T, h v1.Hash) // signs h, the image under test
		policy *sign.Policy
		want   want
	}{
		{
			name:   "unsigned",
			setup:  func(*testing.T, v1.Hash) {},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonNoSignature},
		},
		{
			name: "legacy key signature",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
			},
			policy: keyPolicy(f.key),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t)},
		},
		{
			name: "legacy signature by an untrusted key",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.evil))
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "legacy signature of another digest copied to this one",
			setup: func(t *testing.T, h v1.Hash) {
				other := f.up.pushImage(t)
				f.up.attachLegacy(t, h, f.up.legacySig(t, other, f.key))
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonMismatch},
		},
		{
			name: "one valid signature among invalid ones",
			setup: func(t *testing.T, h v1.Hash) {
				other := f.up.pushImage(t)
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.evil))
				f.up.attachLegacy(t, h, f.up.legacySig(t, other, f.key))
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
			},
			policy: keyPolicy(f.key),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t)},
		},
		{
			name: "second trusted key",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
			},
			policy: keyPolicy(f.evil, f.key),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t)},
		},
		{
			name: "bundle key signature",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
			},
			policy: keyPolicy(f.key),
			want:   want{verified: true, format: sign.FormatBundle, identity: f.key.fingerprint(t)},
		},
		{
			name: "bundle signed by an untrusted key",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.evil, nil, nil), sign.CosignSignPredicate)
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "bundle of another digest attached to this one",
			setup: func(t *testing.T, h v1.Hash) {
				other := f.up.pushImage(t)
				f.up.attachBundle(t, h, f.up.bundleJSON(t, other, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonMismatch},
		},
		{
			name: "bundle attestation of another predicate type is no signature",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, "https://slsa.dev/provenance/v1", f.key, nil, nil), "https://slsa.dev/provenance/v1")
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonNoSignature},
		},
		{
			name: "bundle whose annotation lies about its predicate type",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, "https://slsa.dev/provenance/v1", f.key, nil, nil), sign.CosignSignPredicate)
			},
			policy: keyPolicy(f.key),
			want:   want{reason: sign.ReasonNoSignature},
		},
		{
			name: "keyless legacy, right identity",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
			},
			policy: f.keylessPolicy(emailID),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "issuer=" + testIssuer + " subject=" + testEmail},
		},
		{
			name: "keyless legacy, wrong subject",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: "intruder@example.com", issuer: testIssuer}, nil, time.Time{})
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, wrong issuer",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: otherIssuer}, nil, time.Time{})
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, certificate from an untrusted CA",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.rogue, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, expired certificate without log entry",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)}, nil, time.Time{})
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, expired certificate dated by its log entry",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)},
					f.rekor, time.Now().Add(-55*time.Minute))
			},
			policy: f.keylessPolicy(emailID),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "subject=" + testEmail},
		},
		{
			name: "keyless legacy, log entry signed by an unknown log",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, newLog(t), time.Now())
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, log entry required and present",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, f.rekor, time.Now())
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireTlog = true; return p }(),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "subject=" + testEmail},
		},
		{
			name: "keyless legacy, log entry required and missing",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonNoTlog},
		},
		{
			name: "keyless legacy, SCT required and missing",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireSCT = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless legacy, SCT required and present",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer, ct: f.ct}, nil, time.Time{})
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireSCT = true; return p }(),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "subject=" + testEmail},
		},
		{
			name: "keyless legacy, SCT from an unknown CT log",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer, ct: newLog(t)}, nil, time.Time{})
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireSCT = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, SCT required and present",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer, ct: f.ct}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireSCT = true; return p }(),
			want:   want{verified: true, format: sign.FormatBundle, identity: "subject=" + testWorkflow},
		},
		{
			name: "keyless bundle, SCT from an unknown CT log",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer, ct: newLog(t)}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireSCT = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "legacy key signature with a log entry, required",
			setup: func(t *testing.T, h v1.Hash) {
				sig := f.up.legacySig(t, h, f.key)
				f.up.attachLegacy(t, h, withRekor(t, sig, f.rekor.rekorBundle(t, sig, f.key.pubPEM, time.Now())))
			},
			policy: func() *sign.Policy { p := keyPolicy(f.key); p.TrustedRoot = f.root; p.RequireTlog = true; return p }(),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t)},
		},
		{
			name: "legacy key signature without a log entry, required",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
			},
			policy: func() *sign.Policy { p := keyPolicy(f.key); p.TrustedRoot = f.root; p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonNoTlog},
		},
		{
			name: "keyless bundle, right identity (URI subject, regexps)",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{verified: true, format: sign.FormatBundle, identity: "issuer=" + testIssuer + " subject=" + testWorkflow},
		},
		{
			name: "keyless bundle, wrong identity",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: "https://github.com/evil/app/.github/workflows/x.yml@refs/heads/main", issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, wrong issuer",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: otherIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle from an untrusted CA",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.rogue, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle of another digest",
			setup: func(t *testing.T, h v1.Hash) {
				other := f.up.pushImage(t)
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, other, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonMismatch},
		},
		{
			name: "keyless bundle, expired certificate dated by its log entry",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)}}
				tl := &bundleLog{t: t, log: f.rekor, at: time.Now().Add(-55 * time.Minute)}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, tl), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{verified: true, format: sign.FormatBundle, identity: "subject=" + testWorkflow},
		},
		{
			name: "keyless bundle, expired certificate without log entry",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, log entry required and present",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				tl := &bundleLog{t: t, log: f.rekor, at: time.Now()}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, tl), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireTlog = true; return p }(),
			want:   want{verified: true, format: sign.FormatBundle, identity: "subject=" + testWorkflow},
		},
		{
			name: "keyless bundle, log entry from an unknown log",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				tl := &bundleLog{t: t, log: newLog(t), at: time.Now()}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, tl), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, log entry required and missing",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonNoTlog},
		},
		{
			name: "keyless bundle, SCT required and missing",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireSCT = true; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "bundle key signature with a log entry, required",
			setup: func(t *testing.T, h v1.Hash) {
				tl := &bundleLog{t: t, log: f.rekor, at: time.Now()}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, tl), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := keyPolicy(f.key); p.TrustedRoot = f.root; p.RequireTlog = true; return p }(),
			want:   want{verified: true, format: sign.FormatBundle, identity: f.key.fingerprint(t)},
		},
		{
			name: "bundle key signature without a log entry, required",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := keyPolicy(f.key); p.TrustedRoot = f.root; p.RequireTlog = true; return p }(),
			want:   want{reason: sign.ReasonNoTlog},
		},
		{
			name: "keyless legacy, expired certificate dated by a signed timestamp",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.keylessSig(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)},
					nil, time.Now().Add(-55*time.Minute), f.tsa))
			},
			policy: f.keylessPolicy(emailID),
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "subject=" + testEmail},
		},
		{
			name: "keyless legacy, expired certificate, timestamp from an untrusted authority",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.keylessSig(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)},
					nil, time.Now().Add(-55*time.Minute), newTSA(t)))
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, expired certificate dated by a signed timestamp",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil,
					f.tsa.bundleStamp(t, time.Now().Add(-55*time.Minute))), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{verified: true, format: sign.FormatBundle, identity: "subject=" + testWorkflow},
		},
		{
			name: "keyless bundle, expired certificate, timestamp from an untrusted authority",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer,
					notBefore: time.Now().Add(-time.Hour), notAfter: time.Now().Add(-50 * time.Minute)}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, nil,
					newTSA(t).bundleStamp(t, time.Now().Add(-55*time.Minute))), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(workflowID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "keyless bundle, log entry and signed timestamp, required log",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testWorkflow, issuer: testIssuer}}
				tl := &bundleLog{t: t, log: f.rekor, at: time.Now()}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, newKey(t), cp, tl,
					f.tsa.bundleStamp(t, time.Now())), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := f.keylessPolicy(workflowID); p.RequireTlog = true; return p }(),
			want:   want{verified: true, format: sign.FormatBundle, identity: "subject=" + testWorkflow},
		},
		{
			name: "keyless identity does not accept a key signature",
			setup: func(t *testing.T, h v1.Hash) {
				f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
			},
			policy: f.keylessPolicy(emailID),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "key identity does not accept a keyless signature",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
				cp := &certProvider{t: t, ca: f.ca, l: leaf{subject: testEmail, issuer: testIssuer}}
				f.up.attachBundle(t, h, f.up.bundleJSON(t, h, sign.CosignSignPredicate, f.key, cp, nil), sign.CosignSignPredicate)
			},
			policy: func() *sign.Policy { p := keyPolicy(f.key); p.TrustedRoot = f.root; return p }(),
			want:   want{reason: sign.ReasonUntrusted},
		},
		{
			name: "mixed identities: keyless signer accepted by the second identity",
			setup: func(t *testing.T, h v1.Hash) {
				f.signKeyless(t, h, f.ca, leaf{subject: testEmail, issuer: testIssuer}, nil, time.Time{})
			},
			policy: &sign.Policy{Identities: []sign.Identity{{PublicKeyPEM: f.key.pubPEM}, emailID}, TrustedRoot: f.root},
			want:   want{verified: true, format: sign.FormatLegacyTag, identity: "subject=" + testEmail},
		},
	}
	v := f.verifier()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := f.up.pushImage(t)
			tc.setup(t, h)
			before := f.up.rt.n.Load()
			res, err := v.Verify(ctx, f.up.repo, h, tc.policy, nil)
			if res != nil {
				t.Logf("verified=%v format=%q identity=%q reason=%q detail=%q", res.Verified, res.Format, res.Identity, res.Reason, res.Detail)
			}
			check(t, res, err, tc.want)
			if tc.want.verified && res.Digest != h.String() {
				t.Errorf("Digest = %s, want %s", res.Digest, h)
			}
			if f.up.rt.n.Load() == before {
				t.Error("no request went through the transport given to sign.New")
			}
		})
	}
}

func TestVerifyIndexSignature(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v := f.verifier()

	for _, format := range []string{sign.FormatLegacyTag, sign.FormatBundle} {
		t.Run(format, func(t *testing.T) {
			index, platform := f.up.pushIndex(t)
			if format == sign.FormatLegacyTag {
				f.up.attachLegacy(t, index, f.up.legacySig(t, index, f.key))
			} else {
				f.up.attachBundle(t, index, f.up.bundleJSON(t, index, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
			}

			p := keyPolicy(f.key)
			res, err := v.Verify(ctx, f.up.repo, platform, p, &index)
			check(t, res, err, want{reason: sign.ReasonNoSignature})

			p.AllowIndexSignature = true
			res, err = v.Verify(ctx, f.up.repo, platform, p, &index)
			check(t, res, err, want{verified: true, format: format, identity: f.key.fingerprint(t), digest: &index})

			// Without the index digest there is nothing to fall back on.
			res, err = v.Verify(ctx, f.up.repo, platform, p, nil)
			check(t, res, err, want{reason: sign.ReasonNoSignature})

			// The index itself verifies directly.
			res, err = v.Verify(ctx, f.up.repo, index, keyPolicy(f.key), nil)
			check(t, res, err, want{verified: true, format: format, identity: f.key.fingerprint(t), digest: &index})
		})
	}

	t.Run("platform signature preferred, index reason kept", func(t *testing.T) {
		index, platform := f.up.pushIndex(t)
		f.up.attachLegacy(t, index, f.up.legacySig(t, index, f.evil))
		p := keyPolicy(f.key)
		p.AllowIndexSignature = true
		res, err := v.Verify(ctx, f.up.repo, platform, p, &index)
		check(t, res, err, want{reason: sign.ReasonUntrusted})

		f.up.attachLegacy(t, platform, f.up.legacySig(t, platform, f.key))
		res, err = v.Verify(ctx, f.up.repo, platform, p, &index)
		check(t, res, err, want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t), digest: &platform})
	})
}

// TestVerifyFailsClosed: errors never verify, and they come back as errors
// so that the caller does not store them as a final verdict.
func TestVerifyFailsClosed(t *testing.T) {
	f := newFixture(t)
	h := f.up.pushImage(t)
	f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
	ctx := context.Background()

	t.Run("upstream errors", func(t *testing.T) {
		// Signature requests fail with 500; everything else is served.
		var failed atomic.Int64
		broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/sha256-") || strings.Contains(r.URL.Path, "/referrers/") {
				failed.Add(1)
				http.Error(w, "boom", http.StatusInternalServerError)
				return
			}
			f.up.srv.Config.Handler.ServeHTTP(w, r)
		}))
		defer broken.Close()
		u, _ := url.Parse(broken.URL)
		repo, err := name.NewRepository(u.Host+"/library/app", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		v := sign.New(sign.Options{Transport: tr})
		res, err := v.Verify(ctx, repo, h, keyPolicy(f.key), nil)
		if err == nil || res == nil || res.Verified || res.Reason != sign.ReasonFetch {
			t.Fatalf("got %+v, %v; want unverified %q with an error", res, err, sign.ReasonFetch)
		}
		// No retries of its own: the transport retries.
		if n := failed.Load(); n != 2 {
			t.Errorf("%d failed signature requests, want 2 (signature tag, referrers)", n)
		}
	})

	t.Run("invalid policy", func(t *testing.T) {
		res, err := f.verifier().Verify(ctx, f.up.repo, h, &sign.Policy{}, nil)
		if err == nil || res == nil || res.Verified || res.Reason != sign.ReasonPolicy {
			t.Fatalf("got %+v, %v; want unverified %q with an error", res, err, sign.ReasonPolicy)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		res, err := f.verifier().Verify(cctx, f.up.repo, h, keyPolicy(f.key), nil)
		if err == nil || res == nil || res.Verified || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %+v, %v; want unverified with context.Canceled", res, err)
		}
	})

	t.Run("oversized signature manifest", func(t *testing.T) {
		v := f.verifier(func(o *sign.Options) { o.MaxBodyBytes = 64 })
		res, err := v.Verify(ctx, f.up.repo, h, keyPolicy(f.key), nil)
		if res == nil || res.Verified {
			t.Fatalf("got %+v, %v; want unverified", res, err)
		}
	})
}

// TestVerifyConcurrent: one Verifier serves concurrent calls (run with
// -race).
func TestVerifyConcurrent(t *testing.T) {
	f := newFixture(t)
	signed, unsigned := f.up.pushImage(t), f.up.pushImage(t)
	f.up.attachLegacy(t, signed, f.up.legacySig(t, signed, f.key))
	v := f.verifier()
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, want := signed, true
			if i%2 == 1 {
				h, want = unsigned, false
			}
			res, err := v.Verify(context.Background(), f.up.repo, h, keyPolicy(f.key), nil)
			if err != nil || res.Verified != want {
				errs <- fmt.Sprintf("%s: %+v, %v", h, res, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestVerifyRequests: one Verify authenticates once (go-containerregistry
// pings both schemes of an insecure registry) and an unsigned image costs
// two requests: the signature tag and the referrers.
func TestVerifyRequests(t *testing.T) {
	f := newFixture(t)
	h := f.up.pushImage(t)
	n, pings := f.up.rt.n.Load(), f.up.rt.pings.Load()
	res, err := f.verifier().Verify(context.Background(), f.up.repo, h, keyPolicy(f.key), nil)
	check(t, res, err, want{reason: sign.ReasonNoSignature})
	n, pings = f.up.rt.n.Load()-n, f.up.rt.pings.Load()-pings
	if pings > 2 || n-pings != 2 {
		t.Errorf("%d requests, %d of them pings; want 2 + at most 2 pings", n, pings)
	}
}

func TestVerifyMaxSignatures(t *testing.T) {
	f := newFixture(t)
	h := f.up.pushImage(t)
	f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.evil))
	f.up.attachLegacy(t, h, f.up.legacySig(t, h, f.key))
	ctx := context.Background()

	res, err := f.verifier(func(o *sign.Options) { o.MaxSignatures = 1 }).Verify(ctx, f.up.repo, h, keyPolicy(f.key), nil)
	check(t, res, err, want{reason: sign.ReasonUntrusted})
	res, err = f.verifier(func(o *sign.Options) { o.MaxSignatures = 2 }).Verify(ctx, f.up.repo, h, keyPolicy(f.key), nil)
	check(t, res, err, want{verified: true, format: sign.FormatLegacyTag, identity: f.key.fingerprint(t)})
}

func TestPolicyValidate(t *testing.T) {
	f := newFixture(t)
	noRekor := trustedRootJSON(t, []*testCA{f.ca}, nil, nil)
	noCA := trustedRootJSON(t, nil, []*testLog{f.rekor}, nil)
	email := sign.Identity{Issuer: testIssuer, Subject: testEmail}

	cases := []struct {
		name    string
		policy  sign.Policy
		wantErr string // substring; "" for valid
	}{
		{"key", *keyPolicy(f.key), ""},
		{"keyless", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: f.root}, ""},
		{"keyless regexps", sign.Policy{Identities: []sign.Identity{{IssuerRegexp: ".*", SubjectRegexp: "@example\\.com$"}}, TrustedRoot: f.root}, ""},
		{"tlog and SCT", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: f.root, RequireTlog: true, RequireSCT: true}, ""},
		{"no identities", sign.Policy{Required: true}, "at least one"},
		{"empty identity", sign.Policy{Identities: []sign.Identity{{}}}, "neither a public key"},
		{"bad key", sign.Policy{Identities: []sign.Identity{{PublicKeyPEM: []byte("not a key")}}}, "identities[0]: publicKey"},
		{"key and keyless", sign.Policy{Identities: []sign.Identity{{PublicKeyPEM: f.key.pubPEM, Issuer: testIssuer, Subject: testEmail}}, TrustedRoot: f.root}, "exclusive"},
		{"issuer only", sign.Policy{Identities: []sign.Identity{{Issuer: testIssuer}}, TrustedRoot: f.root}, "subject: required"},
		{"subject only", sign.Policy{Identities: []sign.Identity{{Subject: testEmail}}, TrustedRoot: f.root}, "issuer: required"},
		{"exact and regexp", sign.Policy{Identities: []sign.Identity{{Issuer: testIssuer, IssuerRegexp: ".*", Subject: testEmail}}, TrustedRoot: f.root}, "not both"},
		{"bad regexp", sign.Policy{Identities: []sign.Identity{{Issuer: testIssuer, SubjectRegexp: "("}}, TrustedRoot: f.root}, "subjectRegexp"},
		{"keyless without root", sign.Policy{Identities: []sign.Identity{email}}, "needs a trusted root"},
		{"keyless, root without CA", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: noCA}, "no certificate authority"},
		{"bad root", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: []byte("{")}, "trustedRoot"},
		{"tlog without root", sign.Policy{Identities: []sign.Identity{{PublicKeyPEM: f.key.pubPEM}}, RequireTlog: true}, "requireTlog"},
		{"tlog, root without log", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: noRekor, RequireTlog: true}, "requireTlog"},
		{"SCT, root without CT log", sign.Policy{Identities: []sign.Identity{email}, TrustedRoot: noRekor, RequireSCT: true}, "requireSCT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("Validate accepted %s", mustJSON(t, tc.policy))
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("Validate: %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}
