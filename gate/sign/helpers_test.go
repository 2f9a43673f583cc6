package sign_test

// Test fixtures: an in-process registry, signing keys, a Fulcio-like CA,
// a Rekor-like log key and the trusted_root.json that trusts them. Every
// signature is made here with freshly generated keys; nothing touches the
// network.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/digitorus/timestamp"
	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	ctx509 "github.com/google/certificate-transparency-go/x509"
	"github.com/google/certificate-transparency-go/x509util"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	rekorutil "github.com/sigstore/rekor/pkg/util"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgsign "github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// countingTransport counts the requests it carries: the proof that
// signatures are fetched through the transport handed to sign.New.
type countingTransport struct {
	inner http.RoundTripper
	n     atomic.Int64 // requests
	pings atomic.Int64 // of which GET /v2/
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.n.Add(1)
	if req.URL.Path == "/v2/" {
		c.pings.Add(1)
	}
	return c.inner.RoundTrip(req)
}

// upstream is an in-process OCI registry with one repository.
type upstream struct {
	srv  *httptest.Server
	repo name.Repository
	rt   *countingTransport
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(discardLogger())))
	inner := &http.Transport{}
	t.Cleanup(func() {
		srv.Close()
		inner.CloseIdleConnections()
	})
	u, _ := url.Parse(srv.URL)
	repo, err := name.NewRepository(u.Host+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return &upstream{srv: srv, repo: repo, rt: &countingTransport{inner: inner}}
}

func (u *upstream) remoteOpts() []remote.Option {
	return []remote.Option{remote.WithTransport(u.rt.inner)}
}

func (u *upstream) ociOpts() []ociremote.Option {
	return []ociremote.Option{ociremote.WithRemoteOptions(u.remoteOpts()...)}
}

// pushImage pushes a random single-platform image and returns its digest.
func (u *upstream) pushImage(t *testing.T) v1.Hash {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(u.repo.Digest(h.String()), img, u.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	return h
}

// pushIndex pushes a random two-platform index; it returns the index
// digest and the digest of its first platform manifest.
func (u *upstream) pushIndex(t *testing.T) (index, platform v1.Hash) {
	t.Helper()
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	index, err = idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(u.repo.Digest(index.String()), idx, u.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return index, im.Manifests[0].Digest
}

// ref names a digest in the upstream repository.
func (u *upstream) ref(h v1.Hash) name.Digest { return u.repo.Digest(h.String()) }

// attachLegacy adds sig to the sha256-<hex>.sig tag of target.
func (u *upstream) attachLegacy(t *testing.T, target v1.Hash, sig oci.Signature) {
	t.Helper()
	se, err := ociremote.SignedEntity(u.ref(target), u.ociOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	se, err = mutate.AttachSignatureToEntity(se, sig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteSignatures(u.repo, se, u.ociOpts()...); err != nil {
		t.Fatal(err)
	}
}

// attachBundle adds a bundle referrer to target, as cosign v3 does;
// annotated is the (unsigned) predicate type annotation it carries.
func (u *upstream) attachBundle(t *testing.T, target v1.Hash, bundleJSON []byte, annotated string) {
	t.Helper()
	if err := ociremote.WriteAttestationNewBundleFormat(u.ref(target), bundleJSON, annotated, u.ociOpts()...); err != nil {
		t.Fatal(err)
	}
}

// keyPair is a cosign-style signing key.
type keyPair struct {
	priv   *ecdsa.PrivateKey
	pubPEM []byte
}

func newKey(t *testing.T) *keyPair {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &keyPair{priv: priv, pubPEM: pub}
}

func (k *keyPair) fingerprint(t *testing.T) string {
	der, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return "key=sha256:" + hex.EncodeToString(sum[:])
}

// simpleSigning returns cosign's legacy payload for the image digest h.
func (u *upstream) simpleSigning(t *testing.T, h v1.Hash) []byte {
	t.Helper()
	p, err := payload.Cosign{Image: u.ref(h)}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// legacySig signs the legacy payload of h with k. opts add a certificate
// or a Rekor bundle.
func (u *upstream) legacySig(t *testing.T, h v1.Hash, k *keyPair, opts ...static.Option) oci.Signature {
	t.Helper()
	p := u.simpleSigning(t, h)
	raw := signBytes(t, k.priv, p)
	sig, err := static.NewSignature(p, base64.StdEncoding.EncodeToString(raw), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func signBytes(t *testing.T, priv *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	s, err := signature.LoadECDSASigner(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.SignMessage(strings.NewReader(string(msg)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// statement is the in-toto statement cosign v3 signs for an image.
func (u *upstream) statement(t *testing.T, h v1.Hash, predicateType string) []byte {
	t.Helper()
	st := map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": u.repo.Name(), "digest": map[string]string{h.Algorithm: h.Hex}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixedKeypair is a sigstore-go Keypair over a key of ours.
type fixedKeypair struct {
	*sgsign.EphemeralKeypair
	k *keyPair
}

// sgKeypair wraps k for sigstore-go's bundle signer.
func sgKeypair(t *testing.T, k *keyPair) sgsign.Keypair {
	t.Helper()
	// EphemeralKeypair brings the algorithm metadata; signing and the
	// public key are overridden with k.
	e, err := sgsign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixedKeypair{EphemeralKeypair: e, k: k}
}

func (f *fixedKeypair) GetPublicKey() crypto.PublicKey   { return &f.k.priv.PublicKey }
func (f *fixedKeypair) GetPublicKeyPem() (string, error) { return string(f.k.pubPEM), nil }
func (f *fixedKeypair) GetHint() []byte                  { return []byte("test-key") }
func (f *fixedKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sum := sha256.Sum256(data)
	sig, err := ecdsa.SignASN1(rand.Reader, f.k.priv, sum[:])
	return sig, sum[:], err
}

// bundleJSON signs the in-toto statement for h as a DSSE sigstore bundle
// v0.3, with a public key (certs nil) or a certificate from certs, logged
// in tlog if set; extra functions edit the bundle before it is encoded.
func (u *upstream) bundleJSON(t *testing.T, h v1.Hash, predicateType string, k *keyPair, certs sgsign.CertificateProvider, tlog sgsign.Transparency, extra ...func(*protobundle.Bundle)) []byte {
	t.Helper()
	content := &sgsign.DSSEData{Data: u.statement(t, h, predicateType), PayloadType: "application/vnd.in-toto+json"}
	opts := sgsign.BundleOptions{CertificateProvider: certs}
	if tlog != nil {
		opts.TransparencyLogs = []sgsign.Transparency{tlog}
	}
	pb, err := sgsign.Bundle(content, sgKeypair(t, k), opts)
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

// OIDs of the Fulcio certificate extensions for the OIDC issuer.
var (
	oidIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
)

// testCA is a Fulcio-like CA: a self-signed root issuing short-lived code
// signing certificates that name an OIDC identity.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"gatehouse test"}},
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
	return &testCA{key: key, cert: cert}
}

// leaf describes a certificate to issue.
type leaf struct {
	subject   string // an email address, or a URI when it has a scheme
	issuer    string // OIDC issuer
	notBefore time.Time
	notAfter  time.Time
	ct        *testLog // if set, the certificate embeds an SCT from this CT log
}

// issue certifies pub for l, as Fulcio would for an OIDC token.
func (ca *testCA) issue(t *testing.T, pub crypto.PublicKey, l leaf) *x509.Certificate {
	t.Helper()
	tmpl := ca.template(t, l)
	if l.ct != nil {
		// RFC 6962 3.3: the log signs the certificate as it is without
		// the SCT list, which is then added as an extension.
		l.ct.embedSCT(t, tmpl, ca.create(t, tmpl, pub), ca.cert)
	}
	return ca.create(t, tmpl, pub)
}

func (ca *testCA) create(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
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

// embedSCT adds to tmpl the SCT list extension with this log's SCT for
// cert (tmpl issued without it) under issuer.
func (l *testLog) embedSCT(t *testing.T, tmpl *x509.Certificate, cert, issuer *x509.Certificate) {
	t.Helper()
	ts := uint64(time.Now().UnixMilli())
	// What ct.MerkleTreeLeafForEmbeddedSCT rebuilds from the final
	// certificate: its TBS without the SCT list, and the issuer's key hash.
	mtl := ct.MerkleTreeLeaf{
		Version:  ct.V1,
		LeafType: ct.TimestampedEntryLeafType,
		TimestampedEntry: &ct.TimestampedEntry{
			EntryType: ct.PrecertLogEntryType,
			Timestamp: ts,
			PrecertEntry: &ct.PreCert{
				IssuerKeyHash:  sha256.Sum256(issuer.RawSubjectPublicKeyInfo),
				TBSCertificate: cert.RawTBSCertificate,
			},
		},
	}
	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: [32]byte(l.id)}, Timestamp: ts}
	input, err := ct.SerializeSCTSignatureInput(sct, ct.LogEntry{Leaf: mtl})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(input)
	sig, err := ecdsa.SignASN1(rand.Reader, l.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sct.Signature = ct.DigitallySigned{
		Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA},
		Signature: sig,
	}
	list, err := x509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{&sct})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cttls.Marshal(*list)
	if err != nil {
		t.Fatal(err)
	}
	val, err := asn1.Marshal(raw) // an OCTET STRING holding the TLS-encoded list
	if err != nil {
		t.Fatal(err)
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTSCT), Value: val})
}

// template is the Fulcio-like certificate for l.
func (ca *testCA) template(t *testing.T, l leaf) *x509.Certificate {
	t.Helper()
	if l.notBefore.IsZero() {
		l.notBefore = time.Now().Add(-time.Minute)
	}
	if l.notAfter.IsZero() {
		l.notAfter = time.Now().Add(10 * time.Minute)
	}
	issuerV2, err := asn1.MarshalWithParams(l.issuer, "utf8")
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    l.notBefore,
		NotAfter:     l.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{
			{Id: oidIssuerV1, Value: []byte(l.issuer)},
			{Id: oidIssuerV2, Value: issuerV2},
		},
	}
	if u, err := url.Parse(l.subject); err == nil && u.Scheme != "" {
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.EmailAddresses = []string{l.subject}
	}
	return tmpl
}

// certProvider is a sigstore-go CertificateProvider backed by a testCA.
type certProvider struct {
	t  *testing.T
	ca *testCA
	l  leaf
}

func (p *certProvider) GetCertificate(_ context.Context, kp sgsign.Keypair, _ *sgsign.CertificateProviderOptions) ([]byte, error) {
	return p.ca.issue(p.t, kp.GetPublicKey(), p.l).Raw, nil
}

func certPEM(t *testing.T, c *x509.Certificate) []byte {
	t.Helper()
	b, err := cryptoutils.MarshalCertificateToPEM(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testLog is a Rekor-like transparency log key (or a CT log key).
type testLog struct {
	key *ecdsa.PrivateKey
	id  []byte // SHA-256 of the DER public key, as Rekor log IDs are
}

func newLog(t *testing.T) *testLog {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return &testLog{key: key, id: sum[:]}
}

func (l *testLog) transparencyLog() *root.TransparencyLog {
	return &root.TransparencyLog{
		BaseURL:             "https://rekor.test",
		ID:                  l.id,
		ValidityPeriodStart: time.Now().Add(-24 * time.Hour),
		HashFunc:            crypto.SHA256,
		PublicKey:           &l.key.PublicKey,
		SignatureHashFunc:   crypto.SHA256,
	}
}

// rekorBundle is the Rekor entry (hashedrekord) of a legacy signature,
// with the log's signed entry timestamp, as cosign attaches it.
func (l *testLog) rekorBundle(t *testing.T, sig oci.Signature, verifierPEM []byte, integrated time.Time) *cbundle.RekorBundle {
	t.Helper()
	p, err := sig.Payload()
	if err != nil {
		t.Fatal(err)
	}
	b64sig, err := sig.Base64Signature()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(p)
	body := map[string]any{
		"apiVersion": "0.0.1",
		"kind":       "hashedrekord",
		"spec": map[string]any{
			"data": map[string]any{"hash": map[string]string{"algorithm": "sha256", "value": hex.EncodeToString(sum[:])}},
			"signature": map[string]any{
				"content":   b64sig,
				"publicKey": map[string]string{"content": base64.StdEncoding.EncodeToString(verifierPEM)},
			},
		},
	}
	bodyJSON, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	rp, set := l.promise(t, bodyJSON, integrated, 1)
	return &cbundle.RekorBundle{SignedEntryTimestamp: set, Payload: rp}
}

// promise is the log's signed entry timestamp (inclusion promise) for an
// entry body: its signature over the canonical JSON of body, time, index
// and log ID.
func (l *testLog) promise(t *testing.T, body []byte, integrated time.Time, index int64) (cbundle.RekorPayload, []byte) {
	t.Helper()
	rp := cbundle.RekorPayload{
		Body:           base64.StdEncoding.EncodeToString(body),
		IntegratedTime: integrated.Unix(),
		LogIndex:       index,
		LogID:          hex.EncodeToString(l.id),
	}
	raw, err := json.Marshal(rp)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := jsoncanonicalizer.Transform(raw)
	if err != nil {
		t.Fatal(err)
	}
	return rp, signBytes(t, l.key, canon)
}

// bundleLog is a sigstore-go Transparency that logs a DSSE bundle in
// testLog: a dsse v0.0.1 entry as the only leaf of the log, with an
// inclusion proof under a signed checkpoint and an inclusion promise, as
// Rekor v1 returns them.
type bundleLog struct {
	t   *testing.T
	log *testLog
	at  time.Time // integrated time
}

func (bl *bundleLog) GetTransparencyLogEntry(ctx context.Context, verifierPEM []byte, b *protobundle.Bundle) error {
	t := bl.t
	env := b.GetDsseEnvelope()
	if env == nil || len(env.Signatures) == 0 {
		t.Fatal("bundleLog: not a signed DSSE bundle")
	}
	envJSON, err := protojson.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	envHash := sha256.Sum256(envJSON)
	payloadHash := sha256.Sum256(env.Payload)
	body, err := json.Marshal(map[string]any{
		"apiVersion": "0.0.1",
		"kind":       "dsse",
		"spec": map[string]any{
			"envelopeHash": map[string]string{"algorithm": "sha256", "value": hex.EncodeToString(envHash[:])},
			"payloadHash":  map[string]string{"algorithm": "sha256", "value": hex.EncodeToString(payloadHash[:])},
			"signatures": []any{map[string]string{
				"signature": base64.StdEncoding.EncodeToString(env.Signatures[0].Sig),
				"verifier":  base64.StdEncoding.EncodeToString(verifierPEM),
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	body, err = jsoncanonicalizer.Transform(body)
	if err != nil {
		t.Fatal(err)
	}
	_, set := bl.log.promise(t, body, bl.at, 0)
	// A one-leaf tree: the root is the leaf hash (RFC 6962), no proof hashes.
	leafHash := sha256.Sum256(append([]byte{0}, body...))
	signer, err := signature.LoadECDSASigner(bl.log.key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	checkpoint, err := rekorutil.CreateAndSignCheckpoint(ctx, "rekor.test", 1, 1, leafHash[:], signer)
	if err != nil {
		t.Fatal(err)
	}
	b.VerificationMaterial.TlogEntries = append(b.VerificationMaterial.TlogEntries, &rekorpb.TransparencyLogEntry{
		LogIndex:          0,
		LogId:             &protocommon.LogId{KeyId: bl.log.id},
		KindVersion:       &rekorpb.KindVersion{Kind: "dsse", Version: "0.0.1"},
		IntegratedTime:    bl.at.Unix(),
		InclusionPromise:  &rekorpb.InclusionPromise{SignedEntryTimestamp: set},
		CanonicalizedBody: body,
		InclusionProof: &rekorpb.InclusionProof{
			LogIndex:   0,
			RootHash:   leafHash[:],
			TreeSize:   1,
			Checkpoint: &rekorpb.Checkpoint{Envelope: string(checkpoint)},
		},
	})
	return nil
}

// withRekor re-creates sig with a Rekor bundle from l attached.
func withRekor(t *testing.T, sig oci.Signature, b *cbundle.RekorBundle, certs ...[]byte) oci.Signature {
	t.Helper()
	p, _ := sig.Payload()
	b64, _ := sig.Base64Signature()
	opts := []static.Option{static.WithBundle(b)}
	if len(certs) > 0 {
		opts = append(opts, static.WithCertChain(certs[0], certs[1]))
	}
	out, err := static.NewSignature(p, b64, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testTSA is an RFC 3161 timestamping authority: a leaf certificate for
// time stamping under its own root.
type testTSA struct {
	root *testCA
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTSA(t *testing.T) *testTSA {
	t.Helper()
	ca := newCA(t, "test tsa root")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// RFC 3161 2.3: the only extended key usage, and critical.
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(2),
		Subject:         pkix.Name{CommonName: "test tsa"},
		NotBefore:       time.Now().Add(-24 * time.Hour),
		NotAfter:        time.Now().Add(24 * time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testTSA{root: ca, key: key, cert: cert}
}

// stamp returns a DER TimeStampResp for msg (the raw signature) at.
func (a *testTSA) stamp(t *testing.T, msg []byte, at time.Time) []byte {
	t.Helper()
	sum := sha256.Sum256(msg)
	ts := timestamp.Timestamp{
		HashAlgorithm:     crypto.SHA256,
		HashedMessage:     sum[:],
		Time:              at,
		Accuracy:          time.Second,
		SerialNumber:      big.NewInt(time.Now().UnixNano()),
		Policy:            asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2},
		AddTSACertificate: true,
	}
	resp, err := ts.CreateResponseWithOpts(a.cert, a.key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// bundleStamp adds a signed timestamp of the bundle's DSSE signature.
func (a *testTSA) bundleStamp(t *testing.T, at time.Time) func(*protobundle.Bundle) {
	return func(b *protobundle.Bundle) {
		sig := b.GetDsseEnvelope().GetSignatures()[0].GetSig()
		b.VerificationMaterial.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: a.stamp(t, sig, at)}},
		}
	}
}

func (a *testTSA) authority() root.TimestampingAuthority {
	return &root.SigstoreTimestampingAuthority{
		Root:                a.root.cert,
		Leaf:                a.cert,
		ValidityPeriodStart: time.Now().Add(-24 * time.Hour),
		URI:                 "https://tsa.test",
	}
}

// trustedRootJSON builds a trusted_root.json for the given CAs, Rekor
// logs, CT logs and timestamping authorities.
func trustedRootJSON(t *testing.T, cas []*testCA, rekor []*testLog, ct []*testLog, tsas ...*testTSA) []byte {
	t.Helper()
	var authorities []root.CertificateAuthority
	for _, ca := range cas {
		authorities = append(authorities, &root.FulcioCertificateAuthority{
			Root:                ca.cert,
			ValidityPeriodStart: time.Now().Add(-24 * time.Hour),
			URI:                 "https://fulcio.test",
		})
	}
	logs := func(ls []*testLog) map[string]*root.TransparencyLog {
		m := map[string]*root.TransparencyLog{}
		for _, l := range ls {
			m[hex.EncodeToString(l.id)] = l.transparencyLog()
		}
		return m
	}
	var stampers []root.TimestampingAuthority
	for _, a := range tsas {
		stampers = append(stampers, a.authority())
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, authorities, logs(ct), stampers, logs(rekor))
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s", b)
}
