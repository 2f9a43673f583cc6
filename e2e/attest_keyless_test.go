package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cosignmutate "github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
)

// The keyless identities of TestAttestKeyless: the OIDC issuer and
// subjects the test CA certifies, as Fulcio would for an OIDC token.
const (
	keylessIssuer  = "https://oidc.test"
	keylessTrusted = "ci@example.test"
	keylessMallory = "mallory@example.test"
)

// TestAttestKeyless: a rule requiring SLSA provenance signed keylessly by
// one OIDC identity, with a trusted root holding a test Fulcio-like CA and
// no transparency log or timestamping authority, serves to containerd an
// image whose provenance (a legacy .att DSSE envelope, the certificate
// and chain in cosign's annotations) is signed under a certificate of the
// CA for that identity, and refuses its twin whose provenance, otherwise
// identical, is signed under a certificate of the same CA for another
// subject, naming the provenance and the untrusted signer in ctr's error
// and in the verdict. Offline: the certificates are checked against the
// current time, as there is no log entry or timestamp to date them.
func TestAttestKeyless(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	ca := newKeylessCA(t)
	rootPath := filepath.Join(t.TempDir(), "trusted_root.json")
	if err := os.WriteFile(rootPath, ca.trustedRootJSON(t), 0o644); err != nil {
		t.Fatal(err)
	}

	gh := startGatehouseWithRules(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate:      &GateConfig{DB: GateDB{UpdateInterval: "0s"}},
		DBArchive: writeTestDB(t),
	}, []attestRule{{
		GateRule: GateRule{Name: "built-keyless", Repositories: []string{"e2e/keyless-*"},
			Signatures: &GateSignatures{
				Required:    false,
				Identities:  []GateSigner{{Issuer: keylessIssuer, Subject: keylessTrusted}},
				TrustedRoot: rootPath,
				// requireTlog: false (the default, omitted): no Rekor log.
			}},
		Attestations: &attestRequirements{Provenance: &attestProvenance{BuilderIDs: []string{trustedBuilders}}},
	}, {
		GateRule: GateRule{Name: "default", Mode: "off"},
	}})

	// Clean images: the scan passes them, only the provenance can refuse.
	// The two attestations differ only in the certificate's subject.
	good := reg.Push(t, "e2e/keyless-good", "v1", cleanImage("keyless-good"))
	attestKeyless(t, reg, good, ca, keylessTrusted, predicateSLSAv1, slsaV1(goodBuilder, goodSource))
	forged := reg.Push(t, "e2e/keyless-mallory", "v1", cleanImage("keyless-mallory"))
	attestKeyless(t, reg, forged, ca, keylessMallory, predicateSLSAv1, slsaV1(goodBuilder, goodSource))

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	identity := "issuer=" + keylessIssuer + " subject=" + keylessTrusted

	t.Run("provenance signed by the trusted identity admitted", func(t *testing.T) {
		ctrd.MustPull(t, good.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, good.Repo, good.Digest, nil))
		var d attestImageDetail
		gh.API(t, "/api/v1/images/"+good.Digest.String(), &d)
		if d.Verdict == nil || !d.Verdict.Admitted || d.Verdict.Rule != "built-keyless" {
			t.Fatalf("GET /api/v1/images/%s: verdict %+v; want admitted by rule built-keyless", good.Digest, d.Verdict)
		}
		if c := d.Verdict.Attestations; len(c) != 1 || c[0].Requirement != "provenance" || !c[0].Passed ||
			!strings.Contains(c[0].Found, goodBuilder) || !strings.Contains(c[0].Found, identity) {
			t.Errorf("verdict.attestations %+v; want one passed provenance check naming builder %s and signer %q", c, goodBuilder, identity)
		}
	})

	t.Run("provenance signed by another subject of the same CA refused", func(t *testing.T) {
		res := ctrd.Pull(t, forged.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled %s, whose provenance is signed by %s: the keyless identity was not checked", forged.Ref(reg.Host), keylessMallory)
		}
		t.Logf("ctr error line: %s", res.LastLine())
		reason := "no trusted SLSA provenance attestation (1 rejected: " + reasonUntrusted + ")"
		want := `denied by rule "built-keyless": attestation required: provenance: ` + reason
		out := res.Output()
		for _, w := range []string{want, "403"} {
			if !strings.Contains(out, w) {
				t.Errorf("ctr's output does not show %q:\n%s", w, out)
			}
		}
		var d attestImageDetail
		gh.API(t, "/api/v1/images/"+forged.Digest.String(), &d)
		if d.Verdict == nil || d.Verdict.Admitted || d.Verdict.Reason != "attestation" || !strings.Contains(d.Verdict.Message, want) {
			t.Errorf("GET /api/v1/images/%s: verdict %+v; want denied for attestation with %q", forged.Digest, d.Verdict, want)
		} else if c := d.Verdict.Attestations; len(c) != 1 || c[0].Requirement != "provenance" || c[0].Passed || c[0].Reason != reason || c[0].Found != "" {
			t.Errorf("verdict.attestations %+v; want one failed provenance check: reason %q, nothing found", c, reason)
		}
		objs := reg.Content(t, forged.Repo, forged.Digest, nil)
		for _, dgst := range ctrdHave(t, ctrd, objs) {
			if !sharedWith(t, reg, dgst, good) {
				t.Errorf("containerd holds %s %s of the refused image", objs[dgst].Kind, dgst)
			}
		}
	})
}

// keylessCA is a Fulcio-like CA (after gate/sign's testCA): a self-signed
// root issuing short-lived code signing certificates naming an OIDC
// identity.
type keylessCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newKeylessCA(t *testing.T) *keylessCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "e2e fulcio", Organization: []string{"gatehouse e2e"}},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &keylessCA{key: key, cert: cert}
}

// issue certifies pub for the OIDC identity (issuer, email subject), as
// Fulcio does: valid from a minute ago for an hour, since with no log
// entry or timestamp gatehouse checks it against the current time.
func (ca *keylessCA) issue(t *testing.T, pub crypto.PublicKey, issuer, subject string) *x509.Certificate {
	t.Helper()
	issuerV2, err := asn1.MarshalWithParams(issuer, "utf8")
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		NotBefore:      time.Now().Add(-time.Minute),
		NotAfter:       time.Now().Add(time.Hour),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		EmailAddresses: []string{subject},
		ExtraExtensions: []pkix.Extension{
			// Fulcio's OIDC issuer extensions, v1 (raw) and v2 (DER UTF8String).
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}, Value: []byte(issuer)},
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}, Value: issuerV2},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// trustedRootJSON is a sigstore trusted_root.json with ca as its only
// certificate authority: no Rekor log, CT log or timestamping authority.
func (ca *keylessCA) trustedRootJSON(t *testing.T) []byte {
	t.Helper()
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{
			Root:                ca.cert,
			ValidityPeriodStart: time.Now().Add(-24 * time.Hour),
			URI:                 "https://fulcio.test",
		}},
		map[string]*root.TransparencyLog{}, nil, map[string]*root.TransparencyLog{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// attestKeyless attaches to p, as `cosign attest --tlog-upload=false` with
// a Fulcio certificate does, an in-toto statement about p with predicate,
// signed by a fresh key certified by ca for subject (issuer
// keylessIssuer): a DSSE envelope in a layer of the sha256-<hex>.att tag,
// the certificate and the CA's as its cosign certificate and chain
// annotations.
func attestKeyless(t *testing.T, reg *Registry, p Pushed, ca *keylessCA, subject, predicateType string, predicate any) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, err := cryptoutils.MarshalCertificateToPEM(ca.issue(t, &priv.PublicKey, keylessIssuer, subject))
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := cryptoutils.MarshalCertificateToPEM(ca.cert)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Repo(t, p.Repo).Digest(p.Digest.String())
	stmt, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v0.1", // what cosign v2 writes
		"subject":       []any{map[string]any{"name": ref.Context().Name(), "digest": map[string]string{p.Digest.Algorithm: p.Digest.Hex}}},
		"predicateType": predicateType,
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadECDSASigner(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dsse.WrapSigner(signer, ctypes.IntotoPayloadType).SignMessage(bytes.NewReader(stmt))
	if err != nil {
		t.Fatal(err)
	}
	att, err := static.NewAttestation(env,
		static.WithLayerMediaType(ctypes.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": predicateType}),
		static.WithCertChain(leafPEM, chainPEM))
	if err != nil {
		t.Fatal(err)
	}
	opts := []ociremote.Option{ociremote.WithRemoteOptions(reg.RemoteOptions()...)}
	se, err := ociremote.SignedEntity(ref, opts...)
	if err != nil {
		t.Fatalf("read %s for attesting: %v", ref, err)
	}
	if se, err = cosignmutate.AttachAttestationToEntity(se, att); err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestations(ref.Context(), se, opts...); err != nil {
		t.Fatalf("push the attestation of %s: %v", ref, err)
	}
}
