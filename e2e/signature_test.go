package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	cosignmutate "github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// signedRule is the name of TestSignature's enforcing rule: distinctive,
// so finding it in ctr's error proves the reason reached the user.
const signedRule = "e2e-signed-only"

// Signature reasons as gatehouse reports them (gate/sign).
const (
	reasonNoSignature = "no signature found"
	reasonUntrusted   = "signed by an untrusted identity"
)

// TestSignature is issue 4's acceptance test: containerd pulls an image
// signed with a trusted key through gatehouse, byte for byte, and is
// refused an unsigned one and one signed with another key, with the reason
// and the rule in ctr's error. The signature is cosign's legacy layout (a
// sha256-<hex>.sig tag next to the image), made in process with cosign's
// library and a key generated here: no network, no transparency log.
//
// The rule also scans (it is not in mode off), so the vulnerability DB is
// the scantest fixture and the images are clean: only the signature can
// refuse them.
func TestSignature(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})

	trusted, untrusted := newCosignKey(t), newCosignKey(t)
	signed := reg.Push(t, "signed/app", "v1", cleanImage("signed"))
	unsigned := reg.Push(t, "signed/unsigned", "v1", cleanImage("unsigned"))
	other := reg.Push(t, "signed/other-key", "v1", cleanImage("other-key"))
	sigTag := signLegacy(t, reg, signed, trusted)
	signLegacy(t, reg, other, untrusted)
	// The harness's own check, without gatehouse: the signatures verify
	// with cosign straight from the upstream, each with its own key only.
	assertCosignVerifies(t, reg, signed, trusted, true)
	assertCosignVerifies(t, reg, other, untrusted, true)
	assertCosignVerifies(t, reg, other, trusted, false)

	pubPath := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(pubPath, trusted.pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	archive := writeTestDB(t)
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{
			reg.Upstream(), // containerd: ns=127.0.0.1:port
			{Name: skopeoUpstream, URL: reg.URL, TagTTL: "1h"}, // cosign: path prefix
		},
		Gate: &GateConfig{
			DB: GateDB{UpdateInterval: "0s"},
			Policy: GatePolicy{Rules: []GateRule{{
				Name:         signedRule,
				Repositories: []string{"signed/**"},
				Block:        []string{"CRITICAL"},
				Signatures: &GateSignatures{
					Required:   true,
					Identities: []GateSigner{{PublicKey: pubPath}},
				},
			}, {
				Name: "default",
				Mode: "off",
			}}},
		},
		DBArchive: archive,
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)

	ctrd := StartContainerd(t)
	// gatehouse is the only host: containerd never reaches the upstream.
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	t.Run("signed image", func(t *testing.T) {
		ctrd.MustPull(t, signed.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, signed.Repo, signed.Digest, nil))
	})

	refused := []struct {
		name   string
		img    Pushed
		reason string
	}{
		{"unsigned image", unsigned, reasonNoSignature},
		{"signed with another key", other, reasonUntrusted},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			res := ctrd.Pull(t, r.img.Ref(reg.Host), PullOptions{})
			if res.Err == nil {
				t.Fatalf("ctr pulled %s (%s): the signature gate let it through", r.img.Ref(reg.Host), r.reason)
			}
			t.Logf("ctr error line: %s", res.LastLine())
			out := res.Output()
			for _, want := range []string{"signature required: " + r.reason, signedRule, "403"} {
				if !strings.Contains(out, want) {
					t.Errorf("ctr's output does not show %q:\n%s", want, out)
				}
			}
			if t.Failed() {
				t.Logf("HEAD through gatehouse: %s", gh.Do(t, http.MethodHead, "/v2/"+r.img.Repo+"/manifests/"+r.img.Tag+ns))
			}
			// Nothing of the refused image reached containerd but the base
			// layer it shares with the signed image.
			objs := reg.Content(t, r.img.Repo, r.img.Digest, nil)
			for _, d := range ctrdHave(t, ctrd, objs) {
				if !sharedWith(t, reg, d, signed) {
					t.Errorf("containerd holds %s %s of the refused image", objs[d].Kind, d)
				}
			}
		})
	}

	t.Run("manifest requests", func(t *testing.T) {
		accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
		for _, r := range refused {
			for _, ref := range []string{r.img.Tag, r.img.Digest.String()} {
				get := gh.Do(t, http.MethodGet, "/v2/"+r.img.Repo+"/manifests/"+ref+ns, accept)
				errs := get.OCIErrors()
				if get.Status != http.StatusForbidden || len(errs) == 0 || errs[0].Code != "DENIED" {
					t.Errorf("GET %s manifest %s: %s; want 403 DENIED", r.img.Repo, ref, get)
					continue
				}
				want := `denied by rule "` + signedRule + `": signature required: ` + r.reason
				if !strings.Contains(errs[0].Message, want) {
					t.Errorf("GET %s manifest %s: message %q; want it to contain %q", r.img.Repo, ref, errs[0].Message, want)
				}
			}
		}
		get := gh.Do(t, http.MethodGet, "/v2/"+signed.Repo+"/manifests/"+signed.Tag+ns, accept)
		if get.Status != http.StatusOK || get.Header.Get("Docker-Content-Digest") != signed.Digest.String() {
			t.Errorf("GET %s manifest %s: %s, digest %q; want 200 with %s", signed.Repo, signed.Tag, get, get.Header.Get("Docker-Content-Digest"), signed.Digest)
		}
	})

	t.Run("signature artifact", func(t *testing.T) {
		// The .sig manifest and its payload layer are served as the
		// upstream has them: cosign clients verify through gatehouse.
		// cosign writes it with an OCI image config
		// (application/vnd.oci.image.config.v1+json) and one
		// application/vnd.dev.cosign.simplesigning.v1+json layer per
		// signature: an artifact by its layers, not an image to scan (nor
		// one whose own signature the rule could require).
		desc, err := remote.Get(sigTag, reg.RemoteOptions()...)
		if err != nil {
			t.Fatalf("read %s from upstream: %v", sigTag, err)
		}
		accept := "Accept: " + string(desc.MediaType)
		for _, ref := range []string{sigTag.TagStr(), desc.Digest.String()} {
			path := "/v2/" + signed.Repo + "/manifests/" + ref + ns
			get := gh.Do(t, http.MethodGet, path, accept)
			if get.Status != http.StatusOK {
				t.Errorf("GET %s: %s; want 200 (the upstream's signature manifest)", path, get)
				continue
			}
			if !bytes.Equal(get.Body, desc.Manifest) {
				t.Errorf("GET %s: body differs from the upstream's:\n  got:  %q\n  want: %q", path, get.Body, desc.Manifest)
			}
			if got := get.Header.Get("Docker-Content-Digest"); got != desc.Digest.String() {
				t.Errorf("GET %s: Docker-Content-Digest %q; want %s", path, got, desc.Digest)
			}
		}
		m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			want := blobFromUpstream(t, reg, signed.Repo, l.Digest)
			path := "/v2/" + signed.Repo + "/blobs/" + l.Digest.String() + ns
			get := gh.Do(t, http.MethodGet, path)
			if get.Status != http.StatusOK || !bytes.Equal(get.Body, want) {
				t.Errorf("GET %s (%s): %s; want 200 with the upstream's %d bytes", path, l.MediaType, get, len(want))
			}
		}
	})

	t.Run("cosign verify through gatehouse", func(t *testing.T) {
		// A user's cosign, pointed at gatehouse, verifies the signed image
		// with the trusted key and finds no signature of the others.
		through := func(p Pushed) name.Digest {
			ref, err := name.NewDigest(gh.Host+"/"+skopeoUpstream+"/"+p.Repo+"@"+p.Digest.String(), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			return ref
		}
		opts := []remote.Option{remote.WithTransport(http.DefaultTransport)}
		if err := cosignVerify(t, through(signed), trusted, opts); err != nil {
			t.Errorf("cosign verify %s: %v", through(signed), err)
		}
		for _, c := range []struct {
			img  Pushed
			want string // cosign's error
		}{{other, "no matching signatures"}, {unsigned, "no signatures found"}} {
			err := cosignVerify(t, through(c.img), trusted, opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("cosign verify %s with the trusted key: %v; want an error with %q", through(c.img), err, c.want)
				continue
			}
			t.Logf("cosign verify %s: %v", c.img.Repo, err)
		}
	})

	t.Run("api", func(t *testing.T) {
		var d sigImageDetail
		gh.API(t, "/api/v1/images/"+signed.Digest.String(), &d)
		if d.Verdict != nil {
			t.Logf("GET /api/v1/images/%s: verdict.signature %s", signed.Digest, d.Verdict.Signature)
		}
		if d.Verdict == nil || !d.Verdict.Admitted || d.Verdict.Rule != signedRule {
			t.Errorf("GET /api/v1/images/%s: verdict %+v; want admitted by rule %q", signed.Digest, d.Verdict, signedRule)
		}
		if s := d.signature(); !s.Verified || s.Format != "legacy-tag" || s.Identity != trusted.identity ||
			s.Digest != signed.Digest.String() || s.Reason != "" {
			t.Errorf("GET /api/v1/images/%s: verdict.signature %+v; want verified, format legacy-tag, identity %s, digest %s",
				signed.Digest, s, trusted.identity, signed.Digest)
		}
		for _, r := range refused {
			var d sigImageDetail
			gh.API(t, "/api/v1/images/"+r.img.Digest.String(), &d)
			if d.Verdict == nil || d.Verdict.Admitted || d.Verdict.Reason != "signature" || d.Verdict.Rule != signedRule {
				t.Errorf("GET /api/v1/images/%s (%s): verdict %+v; want denied with reason signature by rule %q", r.img.Digest, r.name, d.Verdict, signedRule)
			}
			if s := d.signature(); s.Verified || s.Reason != r.reason {
				t.Errorf("GET /api/v1/images/%s (%s): verdict.signature %+v; want not verified: %s", r.img.Digest, r.name, s, r.reason)
			}
		}

		var denials struct {
			Denials []struct {
				Repo    string `json:"repository"`
				Digest  string `json:"digest"`
				Rule    string `json:"rule"`
				Message string `json:"message"`
			} `json:"denials"`
		}
		gh.API(t, "/api/v1/denials", &denials)
		for _, r := range refused {
			found := false
			for _, d := range denials.Denials {
				if d.Digest != r.img.Digest.String() {
					continue
				}
				found = true
				if d.Repo != r.img.Repo || d.Rule != signedRule || !strings.Contains(d.Message, r.reason) {
					t.Errorf("denial of %s: %+v; want rule %q and %q", r.img.Repo, d, signedRule, r.reason)
					break
				}
			}
			if !found {
				t.Errorf("GET /api/v1/denials lists no refusal of %s@%s: %+v", r.img.Repo, r.img.Digest, denials.Denials)
			}
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		// The operator replaces the key file (same path) and restarts: the
		// rule's hash covers the key's bytes, so the image signed with the
		// old key is judged again and refused, blobs included.
		layer := reg.Content(t, signed.Repo, signed.Digest, nil)
		if err := os.WriteFile(pubPath, untrusted.pubPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		gh.Restart(t)
		res := ctrd.Pull(t, signed.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled %s, signed with the key that was replaced", signed.Ref(reg.Host))
		}
		if out := res.Output(); !strings.Contains(out, "signature required: "+reasonUntrusted) {
			t.Errorf("ctr's output does not name the untrusted signer:\n%s", out)
		}
		for d, o := range layer {
			if !strings.HasPrefix(o.Kind, "layer") {
				continue
			}
			if get := gh.Do(t, http.MethodGet, "/v2/"+signed.Repo+"/blobs/"+d+ns); get.Status != http.StatusForbidden {
				t.Errorf("GET layer %s of the image signed with the replaced key: %s; want 403", d, get)
			}
		}
		if err := os.WriteFile(pubPath, trusted.pubPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		gh.Restart(t)
		ctrd.MustPull(t, signed.Ref(reg.Host), PullOptions{})
	})
}

// cleanImage is scantest's clean Alpine image with one more layer naming
// it: a digest of its own, packages without advisories.
func cleanImage(label string) v1.Image {
	return scantest.OnBase(scantest.CleanAlpine(), scantest.Files{"etc/e2e-image": []byte(label + "\n")})
}

// cosignKey is an ECDSA P-256 signing key as `cosign generate-key-pair`
// makes them, with the identity gatehouse reports for it.
type cosignKey struct {
	priv     *ecdsa.PrivateKey
	pubPEM   []byte
	identity string // "key=sha256:<hex of the DER SubjectPublicKeyInfo>"
}

func newCosignKey(t testing.TB) *cosignKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return &cosignKey{priv: priv, pubPEM: pub, identity: "key=sha256:" + hex.EncodeToString(sum[:])}
}

// signLegacy signs p with k as `cosign sign --key --tlog-upload=false`
// does: a simple-signing payload naming p's digest, signed, attached as a
// layer (with the dev.cosignproject.cosign/signature annotation) of the
// manifest tagged sha256-<hex>.sig in p's repository. It returns that tag.
func signLegacy(t testing.TB, reg *Registry, p Pushed, k *cosignKey) name.Tag {
	t.Helper()
	ref := reg.Repo(t, p.Repo).Digest(p.Digest.String())
	pl, err := payload.Cosign{Image: ref}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadECDSASigner(k.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := signer.SignMessage(bytes.NewReader(pl))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := static.NewSignature(pl, base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	opts := []ociremote.Option{ociremote.WithRemoteOptions(reg.RemoteOptions()...)}
	se, err := ociremote.SignedEntity(ref, opts...)
	if err != nil {
		t.Fatalf("read %s for signing: %v", ref, err)
	}
	if se, err = cosignmutate.AttachSignatureToEntity(se, sig); err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteSignatures(ref.Context(), se, opts...); err != nil {
		t.Fatalf("push the signature of %s: %v", ref, err)
	}
	tag, err := ociremote.SignatureTag(ref, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

// assertCosignVerifies checks with cosign's own verification, straight
// from the upstream, whether p has a legacy signature by k.
func assertCosignVerifies(t testing.TB, reg *Registry, p Pushed, k *cosignKey, want bool) {
	t.Helper()
	ref := reg.Repo(t, p.Repo).Digest(p.Digest.String())
	err := cosignVerify(t, ref, k, reg.RemoteOptions())
	switch {
	case want && err != nil:
		t.Fatalf("harness: cosign does not verify the signature of %s with its key: %v", ref, err)
	case !want && err == nil:
		t.Fatalf("harness: cosign verifies %s with a key that did not sign it", ref)
	}
}

// cosignVerify runs `cosign verify --key --insecure-ignore-tlog` on ref as
// cosign's library does it: the legacy signatures of ref, by k, offline.
func cosignVerify(t testing.TB, ref name.Digest, k *cosignKey, opts []remote.Option) error {
	t.Helper()
	verifier, err := signature.LoadECDSAVerifier(&k.priv.PublicKey, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = cosign.VerifyImageSignatures(t.Context(), ref, &cosign.CheckOpts{
		SigVerifier:        verifier,
		ClaimVerifier:      cosign.SimpleClaimVerifier,
		IgnoreTlog:         true,
		IgnoreSCT:          true,
		RegistryClientOpts: []ociremote.Option{ociremote.WithRemoteOptions(opts...)},
	})
	return err
}

// blobFromUpstream reads a blob straight from the registry.
func blobFromUpstream(t testing.TB, reg *Registry, repo string, dgst v1.Hash) []byte {
	t.Helper()
	l, err := remote.Layer(reg.Repo(t, repo).Digest(dgst.String()), reg.RemoteOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatalf("read blob %s from upstream: %v", dgst, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rc); err != nil {
		t.Fatalf("read blob %s from upstream: %v", dgst, err)
	}
	return buf.Bytes()
}

// sigImageDetail is what TestSignature reads of GET /api/v1/images/<digest>.
type sigImageDetail struct {
	Digest  string `json:"digest"`
	Verdict *struct {
		Admitted  bool            `json:"admitted"`
		Rule      string          `json:"rule"`
		Reason    string          `json:"reason"`
		Message   string          `json:"message"`
		Signature json.RawMessage `json:"signature"`
	} `json:"verdict"`
}

// apiSignature is verdict.signature in the JSON API.
type apiSignature struct {
	Verified bool   `json:"verified"`
	Format   string `json:"format"`
	Identity string `json:"identity"`
	Digest   string `json:"digest"`
	Reason   string `json:"reason"`
	Detail   string `json:"detail"`
}

// signature decodes verdict.signature; the zero value when absent.
func (d *sigImageDetail) signature() apiSignature {
	var s apiSignature
	if d.Verdict != nil && len(d.Verdict.Signature) > 0 {
		_ = json.Unmarshal(d.Verdict.Signature, &s)
	}
	return s
}
