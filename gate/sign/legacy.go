package sign

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
)

// verifyLegacy checks the signatures stored under the sha256-<hex>.sig tag
// of ref (cosign's original layout).
func (v *Verifier) verifyLegacy(ctx context.Context, opts []ociremote.Option, ref name.Digest, dgst v1.Hash, cp *compiled, t *tally) *Result {
	tag, err := ociremote.SignatureTag(ref, opts...)
	if err != nil {
		t.broken(err)
		return nil
	}
	list, err := v.legacyLayers(tag, opts, nil)
	if err != nil {
		t.broken(err)
		return nil
	}
	for _, sig := range list {
		if ctx.Err() != nil {
			return nil
		}
		// Read the layer (payload, certificate, Rekor bundle) once.
		sig, err := static.Copy(sig)
		if err != nil {
			t.broken(err)
			continue
		}
		if res := checkLegacy(ctx, opts, sig, dgst, cp, t, legacySignature); res != nil {
			res.Format, res.Digest = FormatLegacyTag, dgst.String()
			return res
		}
	}
	return nil
}

// legacyLayers lists the layers of the manifest tagged tag (signatures
// or attestations) whose annotations keep accepts (nil: all), at most
// v.maxSigs of them. A missing tag is an empty list, not an error. The
// layers are read lazily (static.Copy).
func (v *Verifier) legacyLayers(tag name.Tag, opts []ociremote.Option, keep func(annotations map[string]string) bool) ([]oci.Signature, error) {
	sigs, err := ociremote.Signatures(tag, opts...)
	if err != nil {
		return nil, err
	}
	all, err := sigs.Get()
	if err != nil {
		return nil, err
	}
	var list []oci.Signature
	for _, sig := range all {
		if len(list) == v.maxSigs {
			break
		}
		if keep != nil {
			ann, err := sig.Annotations()
			if err == nil && !keep(ann) {
				continue
			}
		}
		list = append(list, sig)
	}
	return list, nil
}

// legacyKind is what a legacy layer is verified as.
type legacyKind struct {
	// verify is cosign's verification of one layer.
	verify func(context.Context, oci.Signature, v1.Hash, *cosign.CheckOpts) (bool, error)
	// claim checks that the verified payload names the image digest.
	claim func(oci.Signature, v1.Hash, map[string]any) error
}

// legacySignature verifies a layer as a simple-signing signature.
var legacySignature = legacyKind{verify: cosign.VerifyImageSignature, claim: claimVerifier}

// checkLegacy verifies one signature (or attestation, by kind) against
// every trusted identity.
func checkLegacy(ctx context.Context, opts []ociremote.Option, sig oci.Signature, dgst v1.Hash, cp *compiled, t *tally, kind legacyKind) *Result {
	rb, err := sig.Bundle()
	if err != nil {
		t.fail(rankUntrusted, ReasonUntrusted, err)
		return nil
	}
	ts, err := sig.RFC3161Timestamp()
	if err != nil {
		t.fail(rankUntrusted, ReasonUntrusted, err)
		return nil
	}
	// cosign indexes the first verified timestamp without checking there
	// is one (v2.6.5 panics): only offer a timestamp that verifies.
	hasTlog, hasTS := rb != nil, ts != nil && timestampVerifies(sig, ts.SignedRFC3161Timestamp, cp)
	for _, k := range cp.keys {
		co := cp.checkOpts(opts)
		co.ClaimVerifier = kind.claim
		co.SigVerifier = k.verifier
		co.IgnoreSCT = true // no certificate
		modes, probe := cp.plan(false, hasTlog, hasTS)
		if tryLegacy(ctx, sig, dgst, co, modes, probe, t, kind) {
			return &Result{Verified: true, Identity: "key=" + k.fingerprint}
		}
	}
	for _, id := range cp.keyless {
		co := cp.checkOpts(opts)
		co.ClaimVerifier = kind.claim
		co.Identities = []cosign.Identity{id}
		modes, probe := cp.plan(true, hasTlog, hasTS)
		if tryLegacy(ctx, sig, dgst, co, modes, probe, t, kind) {
			cert, err := sig.Cert()
			if err != nil || cert == nil { // cannot happen: it verified with it
				t.fail(rankUntrusted, ReasonUntrusted, fmt.Errorf("reading the verified certificate: %v", err))
				continue
			}
			return &Result{Verified: true, Identity: certIdentity(cert)}
		}
	}
	return nil
}

// tryLegacy runs cosign's verification of one signature in each time mode
// until one passes, recording why it did not. Without modes, it probes
// whether the signature fails only for lack of a required log entry.
func tryLegacy(ctx context.Context, sig oci.Signature, dgst v1.Hash, co *cosign.CheckOpts, modes []timeMode, probe timeMode, t *tally, kind legacyKind) bool {
	if len(modes) == 0 {
		if _, err := guard(func() (bool, error) { return kind.verify(ctx, sig, dgst, probe.apply(co)) }); err != nil {
			t.failVerify(err)
		} else {
			t.fail(rankNoTlog, ReasonNoTlog, errNoTlog)
		}
		return false
	}
	for _, m := range modes {
		_, err := guard(func() (bool, error) { return kind.verify(ctx, sig, dgst, m.apply(co)) })
		if err == nil {
			return true
		}
		t.failVerify(err)
	}
	return false
}

// timestampVerifies reports whether an RFC 3161 timestamp of the
// signature verifies with a timestamping authority of the trusted root.
// An attestation has no detached signature: as in cosign, its timestamp
// covers the signed payload (the DSSE envelope).
func timestampVerifies(sig oci.Signature, tsr []byte, cp *compiled) bool {
	if !cp.tsa {
		return false
	}
	raw, err := sig.Signature()
	if err != nil {
		return false
	}
	if len(raw) == 0 {
		if raw, err = sig.Payload(); err != nil {
			return false
		}
	}
	for _, a := range cp.tm.TimestampingAuthorities() {
		if _, err := a.Verify(tsr, raw); err == nil {
			return true
		}
	}
	return false
}

// certIdentity names the signer of a verified certificate.
func certIdentity(cert *x509.Certificate) string {
	s, err := certificate.SummarizeCertificate(cert)
	if err != nil {
		return "certificate " + cert.Subject.String()
	}
	return identityString(s.Issuer, s.SubjectAlternativeName)
}

func identityString(issuer, subject string) string {
	return fmt.Sprintf("issuer=%s subject=%s", issuer, subject)
}
