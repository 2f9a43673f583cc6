package sign

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// verifyBundles checks the sigstore bundles attached to ref as OCI 1.1
// referrers (the referrers API, or its tag fallback sha256-<hex>).
//
// This is what cosign.VerifyImageAttestations does with NewBundleFormat,
// done here one bundle at a time (cosign.GetBundles + VerifyNewBundle) so
// that the bundles are fetched once for all identities, fetch errors are
// not mistaken for "not a bundle", each rejection has its own reason, and
// the signer's identity and predicate type come from the verified result.
func (v *Verifier) verifyBundles(ctx context.Context, opts []ociremote.Option, ref name.Digest, dgst v1.Hash, cp *compiled, t *tally) *Result {
	want, err := hex.DecodeString(dgst.Hex)
	if err != nil {
		t.fail(rankUntrusted, ReasonUntrusted, err) // cannot happen for a parsed v1.Hash
		return nil
	}
	// An annotated attestation is not a signature.
	skip := func(pt string) bool { return pt != CosignSignPredicate }
	var found *Result
	err = v.eachBundle(ctx, opts, ref, skip, func(desc v1.Descriptor, b *sgbundle.Bundle, err error) bool {
		if err != nil {
			t.broken(fmt.Errorf("bundle %s: %w", desc.Digest, err))
			return true
		}
		if res := checkBundle(ctx, opts, b, dgst, want, cp, t, isSignature); res != nil {
			res.Format, res.Digest = FormatBundle, dgst.String()
			found = res
			return false
		}
		return true
	})
	if err != nil {
		t.broken(err)
	}
	return found
}

// eachBundle lists the OCI 1.1 referrers of ref that are, or may be,
// sigstore bundles (the referrers API, or its tag fallback sha256-<hex>)
// and fetches them one at a time, at most v.maxSigs, until fn returns
// false or ctx is done. A referrer whose predicate type annotation
// (unsigned, present on cosign's bundles) skip rejects is not fetched: the
// annotation may only ever save a fetch, never admit anything. fn gets
// each bundle, or the error fetching one that is a bundle (by its
// artifact type or cosign's annotation) or that could not be fetched; a
// referrer that merely might have been a bundle and is not is passed
// over. The error is that of listing the referrers.
func (v *Verifier) eachBundle(ctx context.Context, opts []ociremote.Option, ref name.Digest, skip func(predicateType string) bool, fn func(v1.Descriptor, *sgbundle.Bundle, error) bool) error {
	// No referrers is an empty index, not an error (go-containerregistry
	// falls back to the sha256-<hex> tag when the API is missing).
	idx, err := ociremote.Referrers(ref, "", opts...)
	if err != nil {
		return err
	}
	n := 0
	for _, desc := range idx.Manifests {
		bundleType := strings.HasPrefix(desc.ArtifactType, bundleArtifactPrefix)
		// Some registries report the config media type (empty for a
		// bundle) instead of the manifest's artifactType: such a
		// referrer may be a bundle too.
		maybe := desc.ArtifactType == "" || desc.ArtifactType == emptyConfigType
		if !bundleType && !maybe {
			continue // SBOMs, other artifacts
		}
		pt, annotated := desc.Annotations[predicateAnnotation]
		if annotated && skip(pt) {
			continue
		}
		if n == v.maxSigs {
			break
		}
		n++
		if ctx.Err() != nil {
			return nil
		}
		b, err := ociremote.Bundle(ref.Context().Digest(desc.Digest.String()), opts...)
		// cosign's annotation says it was meant as a bundle: a broken
		// one is reported, not taken for some other artifact.
		if err != nil && !bundleType && !annotated && !transient(err) {
			continue // some other artifact
		}
		if !fn(desc, b, err) {
			return nil
		}
	}
	return nil
}

// emptyConfigType is the config media type of artifacts without config,
// bundle referrers included.
const emptyConfigType = string(types.OCIEmptyJSON)

// errNotSignature is a verified bundle of another kind than the one
// sought (an attestation when verifying signatures, or the reverse).
var errNotSignature = errors.New("not a cosign signature")

// bundleKind tells whether a verified bundle is of the kind sought:
// isSignature, or an attestation of the type read from it
// (bundleAttestations).
type bundleKind func(*verify.VerificationResult) bool

// checkBundle verifies one bundle as kind against every trusted identity.
func checkBundle(ctx context.Context, opts []ociremote.Option, b *sgbundle.Bundle, dgst v1.Hash, want []byte, cp *compiled, t *tally, kind bundleKind) *Result {
	entries, err := b.TlogEntries()
	if err != nil {
		t.fail(rankUntrusted, ReasonUntrusted, err)
		return nil
	}
	timestamps, err := b.Timestamps()
	if err != nil {
		t.fail(rankUntrusted, ReasonUntrusted, err)
		return nil
	}
	hasTlog, hasTS := len(entries) > 0, len(timestamps) > 0
	for _, k := range cp.keys {
		co := cp.checkOpts(opts)
		co.NewBundleFormat = true
		co.TrustedMaterial = cp.trustedMaterial()
		co.SigVerifier = k.verifier
		co.IgnoreSCT = true
		modes, probe := cp.plan(false, hasTlog, hasTS)
		_, err := tryBundle(ctx, b, dgst, want, co, modes, probe, t, kind)
		if errors.Is(err, errNotSignature) {
			return nil
		}
		if err == nil {
			return &Result{Verified: true, Identity: "key=" + k.fingerprint}
		}
	}
	for _, id := range cp.keyless {
		co := cp.checkOpts(opts)
		co.NewBundleFormat = true
		co.Identities = []cosign.Identity{id}
		modes, probe := cp.plan(true, hasTlog, hasTS)
		res, err := tryBundle(ctx, b, dgst, want, co, modes, probe, t, kind)
		if errors.Is(err, errNotSignature) {
			return nil
		}
		if err == nil {
			ident := "certificate"
			if c := res.Signature.Certificate; c != nil {
				ident = identityString(c.Issuer, c.SubjectAlternativeName)
			}
			return &Result{Verified: true, Identity: ident}
		}
	}
	return nil
}

// tryBundle verifies a bundle in each time mode until one passes,
// recording why it did not; without modes, it probes whether the bundle
// fails only for lack of a required log entry. A verified bundle of
// another kind returns errNotSignature and is recorded as nothing.
func tryBundle(ctx context.Context, b *sgbundle.Bundle, dgst v1.Hash, want []byte, co *cosign.CheckOpts, modes []timeMode, probe timeMode, t *tally, kind bundleKind) (*verify.VerificationResult, error) {
	if len(modes) == 0 {
		if _, err := verifyBundle(ctx, b, dgst, want, probe.apply(co), kind); err != nil {
			if !errors.Is(err, errNotSignature) {
				t.failVerify(err)
			}
			return nil, err
		}
		t.fail(rankNoTlog, ReasonNoTlog, errNoTlog)
		return nil, errNoTlog
	}
	var last error
	for _, m := range modes {
		res, err := verifyBundle(ctx, b, dgst, want, m.apply(co), kind)
		if err == nil || errors.Is(err, errNotSignature) {
			return res, err
		}
		t.failVerify(err)
		last = err
	}
	return nil, last
}

// verifyBundle verifies b as a signature (or attestation, by kind) of
// dgst: sigstore checks the signature, certificate, log entries and that
// the in-toto statement's subject is dgst; the predicate type is checked
// here. A bundle that fails only on its subject is reported as a mismatch.
func verifyBundle(ctx context.Context, b *sgbundle.Bundle, dgst v1.Hash, want []byte, co *cosign.CheckOpts, kind bundleKind) (*verify.VerificationResult, error) {
	res, err := guard(func() (*verify.VerificationResult, error) {
		return cosign.VerifyNewBundle(ctx, co, verify.WithArtifactDigest(dgst.Algorithm, want), b)
	})
	if err != nil {
		// Everything but the subject: if this passes, the trusted signer
		// signed some other digest.
		r, uerr := guard(func() (*verify.VerificationResult, error) {
			return cosign.VerifyNewBundle(ctx, co, verify.WithoutArtifactUnsafe(), b)
		})
		if uerr == nil && kind(r) {
			return nil, &mismatchError{err}
		}
		return nil, err
	}
	if !kind(res) {
		return nil, errNotSignature
	}
	return res, nil
}

func isSignature(res *verify.VerificationResult) bool {
	return res != nil && res.Statement != nil && res.Statement.GetPredicateType() == CosignSignPredicate
}
