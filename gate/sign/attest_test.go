package sign_test

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	sgsign "github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"github.com/gatehouse/gatehouse/gate/sign"
)

// Attestation fixtures: in-toto statements signed as cosign v2 attests
// (a DSSE envelope in a layer of the sha256-<hex>.att tag) and as cosign
// v3 does (a sigstore bundle referrer).

const (
	statementV01 = "https://in-toto.io/Statement/v0.1" // cosign v2 attest
	statementV1  = "https://in-toto.io/Statement/v1"   // cosign v3, sigstore-go
)

// provenance is a small SLSA v1 predicate; its bytes are checked to come
// back as signed.
const provenance = `{"buildDefinition":{"buildType":"https://actions.github.io/buildtypes/workflow/v1","externalParameters":{"workflow":{"ref":"refs/heads/main","repository":"https://github.com/example/app","path":".github/workflows/release.yml"}}},"runDetails":{"builder":{"id":"https://github.com/actions/runner/github-hosted"}}}`

// inToto is an in-toto statement of stType about subjects.
func (u *upstream) inToto(t *testing.T, stType string, subjects []v1.Hash, predicateType, predicate string) []byte {
	t.Helper()
	var subj []any
	for _, h := range subjects {
		subj = append(subj, map[string]any{"name": u.repo.Name(), "digest": map[string]string{h.Algorithm: h.Hex}})
	}
	b, err := json.Marshal(map[string]any{
		"_type":         stType,
		"subject":       subj,
		"predicateType": predicateType,
		"predicate":     json.RawMessage(predicate),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// envelope signs stmt with k as a DSSE envelope, as cosign attest does.
func envelope(t *testing.T, stmt []byte, k *keyPair) []byte {
	t.Helper()
	s, err := signature.LoadECDSASigner(k.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dsse.WrapSigner(s, ctypes.IntotoPayloadType).SignMessage(bytes.NewReader(stmt))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// attachAtt adds a layer holding env to the sha256-<hex>.att tag of
// target, annotated (unsigned) with a predicate type as cosign does;
// opts add a certificate.
func (u *upstream) attachAtt(t *testing.T, target v1.Hash, env []byte, annotated string, opts ...static.Option) {
	t.Helper()
	opts = append([]static.Option{
		static.WithLayerMediaType(ctypes.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": annotated}),
	}, opts...)
	att, err := static.NewAttestation(env, opts...)
	if err != nil {
		t.Fatal(err)
	}
	se, err := ociremote.SignedEntity(u.ref(target), u.ociOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	se, err = mutate.AttachAttestationToEntity(se, att)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestations(u.repo, se, u.ociOpts()...); err != nil {
		t.Fatal(err)
	}
}

// stmtBundle signs stmt as a DSSE sigstore bundle v0.3 with k, or with a
// certificate from certs if set; extra functions edit it before encoding.
func stmtBundle(t *testing.T, stmt []byte, k *keyPair, certs sgsign.CertificateProvider, extra ...func(*protobundle.Bundle)) []byte {
	t.Helper()
	pb, err := sgsign.Bundle(&sgsign.DSSEData{Data: stmt, PayloadType: ctypes.IntotoPayloadType}, sgKeypair(t, k), sgsign.BundleOptions{CertificateProvider: certs})
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range extra {
		fn(pb)
	}
	b, err := (&sgbundle.Bundle{Bundle: pb}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keylessCert is a certificate of ca for a fresh key, and the key.
func keylessCert(t *testing.T, ca *testCA, l leaf) (*keyPair, []static.Option) {
	k := newKey(t)
	cert := certPEM(t, ca.issue(t, &k.priv.PublicKey, l))
	return k, []static.Option{static.WithCertChain(cert, certPEM(t, ca.cert))}
}

// wantAtt is an expected attestation.
type wantAtt struct {
	predicateType, format, identity string
}

// wantRej is an expected rejection summary.
type wantRej struct {
	predicateType, reason string
	count                 int
}

func checkAttestations(t *testing.T, atts []sign.Attestation, rej sign.Rejections, err error, h v1.Hash, want []wantAtt, wantRejections []wantRej) {
	t.Helper()
	if err != nil {
		t.Fatalf("Attestations: unexpected error %v", err)
	}
	if len(atts) != len(want) {
		t.Fatalf("got %d attestations %+v, want %d %+v (rejections %+v)", len(atts), atts, len(want), want, rej)
	}
	for i, w := range want {
		a := atts[i]
		if a.PredicateType != w.predicateType || a.Format != w.format || a.Identity != w.identity || a.Digest != h.String() {
			t.Errorf("attestation %d = %+v, want %+v for %s", i, a, w, h)
		}
	}
	if len(rej) != len(wantRejections) {
		t.Fatalf("got rejections %+v, want %+v", rej, wantRejections)
	}
	for i, w := range wantRejections {
		r := rej[i]
		if r.PredicateType != w.predicateType || r.Reason != w.reason || r.Count != w.count {
			t.Errorf("rejection %d = %+v, want %+v", i, r, w)
		}
		if r.Detail == "" {
			t.Errorf("rejection %d has no detail", i)
		}
	}
}

func TestAttestations(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	u := f.up
	slsa := sign.PredicateSLSAProvenanceV1
	keyID := f.key.fingerprint(t)
	emailID := sign.Identity{Issuer: testIssuer, Subject: testEmail}
	emailIdentity := "issuer=" + testIssuer + " subject=" + testEmail
	trusted := leaf{subject: testEmail, issuer: testIssuer}
	stranger := leaf{subject: "mallory@example.com", issuer: testIssuer}

	cases := []struct {
		name       string
		setup      func(t *testing.T, h v1.Hash)
		policy     *sign.Policy
		types      []string
		want       []wantAtt
		rejections []wantRej
	}{
		{
			name:   "nothing attached",
			setup:  func(*testing.T, v1.Hash) {},
			policy: keyPolicy(f.key),
		},
		{
			name: "legacy, trusted key",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), f.key), slsa)
			},
			policy: keyPolicy(f.key),
			want:   []wantAtt{{slsa, sign.FormatLegacyTag, keyID}},
		},
		{
			name: "bundle, trusted key",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.key, nil), slsa)
			},
			policy: keyPolicy(f.key),
			want:   []wantAtt{{slsa, sign.FormatBundle, keyID}},
		},
		{
			name: "a statement about several subjects, this image among them",
			setup: func(t *testing.T, h v1.Hash) {
				other := u.pushImage(t)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{other, h}, slsa, provenance), f.key, nil), slsa)
			},
			policy: keyPolicy(f.key),
			want:   []wantAtt{{slsa, sign.FormatBundle, keyID}},
		},
		{
			name: "legacy, untrusted key",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), f.evil), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "bundle, untrusted key",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.evil, nil), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "legacy, trusted key, statement about another image copied here",
			setup: func(t *testing.T, h v1.Hash) {
				other := u.pushImage(t)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{other}, slsa, provenance), f.key), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMismatch, 1}},
		},
		{
			name: "bundle, trusted key, statement about another image copied here",
			setup: func(t *testing.T, h v1.Hash) {
				other := u.pushImage(t)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{other}, slsa, provenance), f.key, nil), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMismatch, 1}},
		},
		{
			name: "the closest reason wins: one untrusted, one of another image",
			setup: func(t *testing.T, h v1.Hash) {
				other := u.pushImage(t)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.evil, nil), slsa)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{other}, slsa, provenance), f.key, nil), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMismatch, 2}},
		},
		{
			name: "legacy, unsigned envelope",
			setup: func(t *testing.T, h v1.Hash) {
				env := fmt.Sprintf(`{"payloadType":%q,"payload":%q,"signatures":[]}`, ctypes.IntotoPayloadType,
					base64.StdEncoding.EncodeToString(u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance)))
				u.attachAtt(t, h, []byte(env), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "legacy, a bare statement instead of an envelope",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachAtt(t, h, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "bundle referrer holding a bare statement",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "bundle with its signature removed",
			setup: func(t *testing.T, h v1.Hash) {
				strip := func(b *protobundle.Bundle) { b.GetDsseEnvelope().Signatures = nil }
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.key, nil, strip), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "legacy, a predicate that is not an object",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, `"builder"`), f.key), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "bundle, duplicate predicateType in the signed statement",
			setup: func(t *testing.T, h v1.Hash) {
				stmt := fmt.Sprintf(`{"_type":%q,"subject":[{"name":"x","digest":{"sha256":%q}}],"predicateType":%q,"predicate":{},"predicateType":%q}`,
					statementV1, h.Hex, sign.PredicateSPDX, slsa)
				u.attachBundle(t, h, stmtBundle(t, []byte(stmt), f.key, nil), slsa)
			},
			policy:     keyPolicy(f.key),
			rejections: []wantRej{{slsa, sign.ReasonMalformed, 1}},
		},
		{
			name: "signatures are not attestations",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, u.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
				// Annotated as an attestation: still a signature.
				u.attachBundle(t, h, u.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), slsa)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.CosignSignPredicate, `{}`), f.key), slsa)
				u.attachLegacy(t, h, u.legacySig(t, h, f.key))
			},
			policy: keyPolicy(f.key),
		},
		{
			name: "legacy, keyless, trusted identity",
			setup: func(t *testing.T, h v1.Hash) {
				k, opts := keylessCert(t, f.ca, trusted)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), k), slsa, opts...)
			},
			policy: f.keylessPolicy(emailID),
			want:   []wantAtt{{slsa, sign.FormatLegacyTag, emailIdentity}},
		},
		{
			name: "legacy, keyless, another subject",
			setup: func(t *testing.T, h v1.Hash) {
				k, opts := keylessCert(t, f.ca, stranger)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), k), slsa, opts...)
			},
			policy:     f.keylessPolicy(emailID),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "legacy, keyless, certificate of an untrusted CA",
			setup: func(t *testing.T, h v1.Hash) {
				k, opts := keylessCert(t, f.rogue, trusted)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), k), slsa, opts...)
			},
			policy:     f.keylessPolicy(emailID),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "legacy, keyless, expired certificate dated by a signed timestamp of the envelope",
			setup: func(t *testing.T, h v1.Hash) {
				at := time.Now().Add(-time.Hour)
				k, opts := keylessCert(t, f.ca, leaf{subject: testEmail, issuer: testIssuer, notBefore: at.Add(-time.Minute), notAfter: at.Add(10 * time.Minute)})
				env := envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), k)
				ts := &cbundle.RFC3161Timestamp{SignedRFC3161Timestamp: f.tsa.stamp(t, env, at)}
				u.attachAtt(t, h, env, slsa, append(opts, static.WithRFC3161Timestamp(ts))...)
			},
			policy: f.keylessPolicy(emailID),
			want:   []wantAtt{{slsa, sign.FormatLegacyTag, emailIdentity}},
		},
		{
			name: "legacy, keyless, expired certificate",
			setup: func(t *testing.T, h v1.Hash) {
				at := time.Now().Add(-time.Hour)
				k, opts := keylessCert(t, f.ca, leaf{subject: testEmail, issuer: testIssuer, notBefore: at.Add(-time.Minute), notAfter: at.Add(10 * time.Minute)})
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), k), slsa, opts...)
			},
			policy:     f.keylessPolicy(emailID),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "bundle, keyless, trusted identity",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: trusted}
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), newKey(t), cp), slsa)
			},
			policy: f.keylessPolicy(emailID),
			want:   []wantAtt{{slsa, sign.FormatBundle, emailIdentity}},
		},
		{
			name: "bundle, keyless, another subject",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: stranger}
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), newKey(t), cp), slsa)
			},
			policy:     f.keylessPolicy(emailID),
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
		{
			name: "bundle, keyless, no log entry where one is required",
			setup: func(t *testing.T, h v1.Hash) {
				cp := &certProvider{t: t, ca: f.ca, l: trusted}
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), newKey(t), cp), slsa)
			},
			policy:     func() *sign.Policy { p := f.keylessPolicy(emailID); p.RequireTlog = true; return p }(),
			rejections: []wantRej{{slsa, sign.ReasonNoTlog, 1}},
		},
		{
			name: "the predicate type is the signed one, not the annotation",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, sign.PredicateSPDX, `{"spdxVersion":"SPDX-2.3"}`), f.key, nil), slsa)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateCycloneDX, `{"bomFormat":"CycloneDX"}`), f.key), slsa)
			},
			policy: keyPolicy(f.key),
			want:   []wantAtt{{sign.PredicateCycloneDX, sign.FormatLegacyTag, keyID}, {sign.PredicateSPDX, sign.FormatBundle, keyID}},
		},
		{
			name: "a lying annotation does not make an attestation of the type asked for",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, sign.PredicateSPDX, `{}`), f.key, nil), slsa)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateSPDX, `{}`), f.key), slsa)
			},
			policy: keyPolicy(f.key),
			types:  []string{slsa},
		},
		{
			name: "type filter, with cosign's short names and versioned types",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.key, nil), slsa)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, "https://openvex.dev/ns/v0.2.0", `{}`), f.key, nil), "https://openvex.dev/ns/v0.2.0")
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateSPDX, `{}`), f.key), sign.PredicateSPDX)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateVuln, `{}`), f.key), sign.PredicateVuln)
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateVuln, `{}`), f.evil), sign.PredicateVuln)
			},
			policy: keyPolicy(f.key),
			types:  []string{"spdxjson", sign.PredicateOpenVEX},
			want:   []wantAtt{{sign.PredicateSPDX, sign.FormatLegacyTag, keyID}, {"https://openvex.dev/ns/v0.2.0", sign.FormatBundle, keyID}},
		},
		{
			name: "rejections of types not asked for are not counted",
			setup: func(t *testing.T, h v1.Hash) {
				u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateVuln, `{}`), f.evil), sign.PredicateVuln)
				u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.evil, nil), slsa)
			},
			policy:     keyPolicy(f.key),
			types:      []string{"slsaprovenance1"},
			rejections: []wantRej{{slsa, sign.ReasonUntrusted, 1}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := u.pushImage(t)
			tc.setup(t, h)
			atts, rej, err := f.verifier().Attestations(ctx, u.repo, h, tc.policy, tc.types)
			checkAttestations(t, atts, rej, err, h, tc.want, tc.rejections)
		})
	}
}

// TestAttestationsPredicate: the predicate comes back byte for byte as
// signed, in both formats, and the signature of the image still verifies
// next to its attestations.
func TestAttestationsPredicate(t *testing.T) {
	f := newFixture(t)
	u := f.up
	h := u.pushImage(t)
	slsa := sign.PredicateSLSAProvenanceV1
	u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, provenance), f.key), slsa)
	u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.key, nil), slsa)
	u.attachBundle(t, h, u.bundleJSON(t, h, sign.CosignSignPredicate, f.key, nil, nil), sign.CosignSignPredicate)
	v := f.verifier()

	atts, rej, err := v.Attestations(context.Background(), u.repo, h, keyPolicy(f.key), []string{slsa})
	if err != nil || len(atts) != 2 || len(rej) != 0 {
		t.Fatalf("got %+v, %+v, %v; want two attestations", atts, rej, err)
	}
	for _, a := range atts {
		if string(a.Predicate) != provenance {
			t.Errorf("%s predicate = %s, want it as signed", a.Format, a.Predicate)
		}
		builder, repos, err := sign.ParseProvenance(a.PredicateType, a.Predicate)
		if err != nil || builder != "https://github.com/actions/runner/github-hosted" || len(repos) != 1 || repos[0] != "https://github.com/example/app" {
			t.Errorf("ParseProvenance = %q, %q, %v", builder, repos, err)
		}
	}
	res, err := v.Verify(context.Background(), u.repo, h, keyPolicy(f.key), nil)
	check(t, res, err, want{verified: true, format: sign.FormatBundle, identity: f.key.fingerprint(t)})
}

// TestAttestationsMaxSignatures: no more than MaxSignatures attestations
// are read per format, whatever is attached.
func TestAttestationsMaxSignatures(t *testing.T) {
	f := newFixture(t)
	u := f.up
	h := u.pushImage(t)
	slsa := sign.PredicateSLSAProvenanceV1
	for i := range 4 {
		pred := fmt.Sprintf(`{"n":%d}`, i)
		u.attachAtt(t, h, envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, slsa, pred), f.key), slsa)
		u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, pred), f.key, nil), slsa)
	}
	ctx := context.Background()

	atts, _, err := f.verifier().Attestations(ctx, u.repo, h, keyPolicy(f.key), nil)
	if err != nil || len(atts) != 8 {
		t.Fatalf("uncapped: %d attestations, %v; want 8", len(atts), err)
	}
	n := u.rt.n.Load()
	atts, _, err = f.verifier(func(o *sign.Options) { o.MaxSignatures = 2 }).Attestations(ctx, u.repo, h, keyPolicy(f.key), nil)
	if err != nil {
		t.Fatal(err)
	}
	formats := map[string]int{}
	for _, a := range atts {
		formats[a.Format]++
	}
	if formats[sign.FormatLegacyTag] != 2 || formats[sign.FormatBundle] != 2 || len(atts) != 4 {
		t.Errorf("capped at 2: %v, want 2 per format", formats)
	}
	// .att manifest + 2 layers, referrers + 2 x (manifest + layer), and
	// at most two pings.
	if got := u.rt.n.Load() - n; got > 3+1+4+2 {
		t.Errorf("%d requests with a cap of 2, want at most 10", got)
	}
}

// TestAttestationsFailsClosed: fetch failures and invalid input are
// errors, with nothing returned.
func TestAttestationsFailsClosed(t *testing.T) {
	f := newFixture(t)
	u := f.up
	h := u.pushImage(t)
	slsa := sign.PredicateSLSAProvenanceV1
	u.attachBundle(t, h, stmtBundle(t, u.inToto(t, statementV1, []v1.Hash{h}, slsa, provenance), f.key, nil), slsa)
	ctx := context.Background()

	for _, path := range []string{"/manifests/sha256-", "/referrers/", "/blobs/"} {
		t.Run("upstream errors on "+path, func(t *testing.T) {
			var failed atomic.Int64
			broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, path) {
					failed.Add(1)
					http.Error(w, "boom", http.StatusInternalServerError)
					return
				}
				u.srv.Config.Handler.ServeHTTP(w, r)
			}))
			defer broken.Close()
			bu, _ := url.Parse(broken.URL)
			repo, err := name.NewRepository(bu.Host+"/library/app", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			atts, rej, err := sign.New(sign.Options{Transport: tr}).Attestations(ctx, repo, h, keyPolicy(f.key), nil)
			if err == nil || atts != nil || rej != nil || failed.Load() == 0 {
				t.Fatalf("got %+v, %+v, %v after %d failures; want an error and nothing else", atts, rej, err, failed.Load())
			}
		})
	}

	t.Run("invalid policy", func(t *testing.T) {
		atts, _, err := f.verifier().Attestations(ctx, u.repo, h, &sign.Policy{}, nil)
		if err == nil || atts != nil {
			t.Fatalf("got %+v, %v; want an error", atts, err)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		atts, _, err := f.verifier().Attestations(cctx, u.repo, h, keyPolicy(f.key), nil)
		if !errors.Is(err, context.Canceled) || atts != nil {
			t.Fatalf("got %+v, %v; want context.Canceled", atts, err)
		}
	})

	t.Run("not sha256", func(t *testing.T) {
		h512 := v1.Hash{Algorithm: "sha512", Hex: strings.Repeat("ab", 64)}
		atts, _, err := f.verifier().Attestations(ctx, u.repo, h512, keyPolicy(f.key), nil)
		if err == nil || atts != nil {
			t.Fatalf("got %+v, %v; want an error", atts, err)
		}
	})

	t.Run("oversized bundle", func(t *testing.T) {
		v := f.verifier(func(o *sign.Options) { o.MaxBodyBytes = 256 })
		atts, _, err := v.Attestations(ctx, u.repo, h, keyPolicy(f.key), nil)
		if len(atts) != 0 {
			t.Fatalf("got %+v, %v; want nothing", atts, err)
		}
	})
}

// TestRejectionsFor: a summary is found by any name of its type.
func TestRejectionsFor(t *testing.T) {
	r := sign.Rejections{{PredicateType: sign.PredicateSPDX, Count: 2, Reason: sign.ReasonUntrusted}}
	if got, ok := r.For("spdxjson"); !ok || got.Count != 2 {
		t.Errorf("For(spdxjson) = %+v, %v", got, ok)
	}
	if _, ok := r.For(sign.PredicateCycloneDX); ok {
		t.Error("For(CycloneDX) found a rejection")
	}
}
