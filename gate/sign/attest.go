package sign

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	jsonv1 "encoding/json"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// Attestation is an in-toto statement attached to an image, signed by an
// identity of a Policy, whose subject is the image.
type Attestation struct {
	// PredicateType is the signed statement's, as written (compare it
	// through NormalizePredicateType). Never taken from an annotation.
	PredicateType string `json:"predicateType"`
	// Predicate is the statement's predicate, byte for byte as signed;
	// nil when the statement has none.
	Predicate jsonv1.RawMessage `json:"-"`
	// Format is FormatLegacyTag (a layer of the sha256-<hex>.att tag) or
	// FormatBundle (a sigstore bundle referrer).
	Format string `json:"format"`
	// Identity names the signer, as Result.Identity does.
	Identity string `json:"identity"`
	// Digest is the subject digest the statement was verified against.
	Digest string `json:"digest"`
}

// ReasonMalformed is the Rejection reason of something attached as an
// attestation that is not a signed in-toto statement: not a DSSE envelope
// or sigstore bundle, no signature, not an in-toto statement, or a
// predicate that is not a JSON object.
const ReasonMalformed = "not a signed in-toto attestation"

// Rejection sums up the attached statements of one predicate type that
// were not accepted, so that a denial can say why the attestation it
// needed is missing.
type Rejection struct {
	// PredicateType is the type the rejected statements claim,
	// normalized (NormalizePredicateType); "" when none could be read.
	// It is not verified: it says what they pretend to be, for messages
	// only.
	PredicateType string `json:"predicateType"`
	// Count is how many were rejected (at most Options.MaxSignatures per
	// format are looked at).
	Count int `json:"count"`
	// Reason is that of the one closest to being accepted:
	// ReasonMismatch (a trusted signer, but its subject is another
	// image), ReasonNoTlog, ReasonUntrusted (an untrusted signer or an
	// invalid signature), or ReasonMalformed.
	Reason string `json:"reason"`
	// Detail is the underlying error of that one, for logs and the JSON
	// API; not meant for clients.
	Detail string `json:"detail,omitempty"`
}

// Rejections are the rejected attestations of an image by predicate
// type, sorted by type.
type Rejections []Rejection

// For returns the rejections of statements claiming the predicate type t
// (compared normalized).
func (r Rejections) For(t string) (Rejection, bool) {
	t = NormalizePredicateType(t)
	for _, x := range r {
		if x.PredicateType == t {
			return x, true
		}
	}
	return Rejection{}, false
}

// Attestations returns the attestations of the manifest dgst (sha256) in
// repo, in both formats (the sha256-<hex>.att tag and sigstore bundle
// referrers), whose signature verifies under p exactly as Verify checks
// signatures (identities, trusted root, transparency-log and SCT rules,
// offline) and whose in-toto subject names dgst. With types (predicate
// types or cosign's short names, normalized), only attestations of those
// types are returned and examined; nil or empty means every type. cosign
// image signatures (CosignSignPredicate) are never attestations.
//
// At most Options.MaxSignatures attestations are examined per format,
// every body read is capped by Options.MaxBodyBytes, and annotations
// (unsigned) are only used to skip a fetch, never to admit or type
// anything. Attached statements that are rejected (an untrusted signer,
// a subject of another digest, malformed or unsigned) are never returned;
// they are summed up in Rejections. p.Required and p.AllowIndexSignature
// are not looked at: the caller decides, and asks for an index's
// attestations with the index digest.
//
// A non-nil error (an invalid policy, a failed fetch, a cancelled ctx)
// comes with no attestations and says nothing about the image: the
// caller should deny without storing the outcome as final.
func (v *Verifier) Attestations(ctx context.Context, repo name.Repository, dgst v1.Hash, p *Policy, types []string) (atts []Attestation, rej Rejections, err error) {
	defer func() {
		// Fetching and parsing run library code over untrusted input too.
		if r := recover(); r != nil {
			atts, rej = nil, nil
			err = fmt.Errorf("verifying attestations of %s@%s: panic: %v", repo, dgst, r)
		}
	}()
	if dgst.Algorithm != "sha256" {
		return nil, nil, fmt.Errorf("attestations of %s@%s: only sha256 subjects are supported", repo, dgst)
	}
	cp, err := p.compile()
	if err != nil {
		return nil, nil, fmt.Errorf("signature policy: %w", err)
	}
	c := &attCollector{dgst: dgst, filter: typeFilter(types), rejected: map[string]*rejection{}}
	opts := v.registryOpts(ctx)
	ref := repo.Digest(dgst.String())
	v.legacyAttestations(ctx, opts, ref, cp, c)
	if ctx.Err() == nil {
		v.bundleAttestations(ctx, opts, ref, cp, c)
	}
	if err := ctx.Err(); err != nil && c.fetchErr == nil {
		c.fetchErr = err
	}
	if c.fetchErr != nil {
		// An attestation that could not be fetched might have been valid.
		return nil, nil, fmt.Errorf("fetching attestations of %s@%s: %w", repo, dgst, c.fetchErr)
	}
	return c.found, c.rejections(), nil
}

// legacyAttestations checks the DSSE envelopes stored as layers of the
// sha256-<hex>.att tag of ref (cosign's original layout).
func (v *Verifier) legacyAttestations(ctx context.Context, opts []ociremote.Option, ref name.Digest, cp *compiled, c *attCollector) {
	tag, err := ociremote.AttestationTag(ref, opts...)
	if err != nil {
		c.broken("", err)
		return
	}
	list, err := v.legacyLayers(tag, opts, func(ann map[string]string) bool {
		pt, ok := ann[legacyPredicateAnnotation]
		return !ok || c.wants(pt)
	})
	if err != nil {
		c.broken("", err)
		return
	}
	for _, att := range list {
		if ctx.Err() != nil {
			return
		}
		ann, _ := att.Annotations()
		claimed := ann[legacyPredicateAnnotation]
		// Read the layer (envelope, certificate, Rekor bundle) once.
		att, err := static.Copy(att)
		if err != nil {
			c.broken(claimed, err)
			continue
		}
		payload, err := att.Payload()
		if err != nil {
			c.broken(claimed, err)
			continue
		}
		st, err := parseEnvelope(payload)
		if err != nil {
			c.broken(claimed, err)
			continue
		}
		if !c.wants(st.PredicateType) {
			continue
		}
		var t tally
		if res := checkLegacy(ctx, opts, att, c.dgst, cp, &t, legacyAttestation); res != nil {
			c.accept(st, FormatLegacyTag, res.Identity)
			continue
		}
		c.fold(st.PredicateType, &t)
	}
}

// bundleAttestations checks the sigstore bundles attached to ref as OCI
// 1.1 referrers whose statement is not a cosign signature.
func (v *Verifier) bundleAttestations(ctx context.Context, opts []ociremote.Option, ref name.Digest, cp *compiled, c *attCollector) {
	want, err := hex.DecodeString(c.dgst.Hex)
	if err != nil { // cannot happen for a parsed v1.Hash
		c.broken("", err)
		return
	}
	skip := func(pt string) bool { return !c.wants(pt) }
	err = v.eachBundle(ctx, opts, ref, skip, func(desc v1.Descriptor, b *sgbundle.Bundle, err error) bool {
		claimed := desc.Annotations[predicateAnnotation]
		if err != nil {
			c.broken(claimed, fmt.Errorf("bundle %s: %w", desc.Digest, err))
			return true
		}
		env := b.GetDsseEnvelope()
		if env == nil {
			return true // a message signature: not an in-toto statement
		}
		st, err := parseStatement(env.GetPayloadType(), env.GetPayload(), len(env.GetSignatures()))
		if err != nil {
			c.broken(claimed, fmt.Errorf("bundle %s: %w", desc.Digest, err))
			return true
		}
		if !c.wants(st.PredicateType) {
			return true
		}
		// sigstore verifies the same payload bytes and parses them on its
		// own: its statement must have the type read here, or nothing.
		kind := func(r *verify.VerificationResult) bool {
			return r != nil && r.Statement != nil && r.Statement.GetPredicateType() == st.PredicateType
		}
		var t tally
		if res := checkBundle(ctx, opts, b, c.dgst, want, cp, &t, kind); res != nil {
			c.accept(st, FormatBundle, res.Identity)
			return true
		}
		c.fold(st.PredicateType, &t)
		return true
	})
	if err != nil {
		c.broken("", err)
	}
}

// legacyPredicateAnnotation is set by cosign attest on each .att layer.
// Like predicateAnnotation, it is not signed.
const legacyPredicateAnnotation = "predicateType"

// legacyAttestation verifies a legacy layer as a DSSE envelope of an
// in-toto statement whose subject names the image.
var legacyAttestation = legacyKind{verify: cosign.VerifyBlobAttestation, claim: attestationClaimVerifier}

// attestationClaimVerifier is cosign's IntotoSubjectClaimVerifier (one
// subject of the statement must be the image digest), with its failure
// marked; cosign runs it only after the envelope verified.
func attestationClaimVerifier(sig oci.Signature, h v1.Hash, annotations map[string]any) error {
	if err := cosign.IntotoSubjectClaimVerifier(sig, h, annotations); err != nil {
		return &mismatchError{err}
	}
	return nil
}

// attCollector gathers what Attestations finds for one digest.
type attCollector struct {
	dgst     v1.Hash
	filter   map[string]bool // normalized predicate types; nil: all
	found    []Attestation
	rejected map[string]*rejection // by normalized claimed predicate type
	fetchErr error                 // first fetch error
}

// rejection is a Rejection with the rank of its reason.
type rejection struct {
	Rejection
	rank int
}

// wants reports whether statements of predicate type t are looked at.
func (c *attCollector) wants(t string) bool {
	return t != CosignSignPredicate && wantsType(c.filter, t)
}

// accept records a verified statement.
func (c *attCollector) accept(st *statement, format, identity string) {
	if !st.names(c.dgst) {
		// cosign and sigstore checked the subject on their own parse of
		// the same bytes: they cannot disagree, but if they did, the
		// statement would be about another image.
		c.reject(st.PredicateType, rankMismatch, ReasonMismatch, "the statement's subject is not "+c.dgst.String())
		return
	}
	c.found = append(c.found, Attestation{
		PredicateType: st.PredicateType,
		Predicate:     jsonv1.RawMessage(st.Predicate),
		Format:        format,
		Identity:      identity,
		Digest:        c.dgst.String(),
	})
}

// reject counts one rejected statement claiming predicate type claimed,
// keeping the reason of highest rank (ReasonMalformed is rankNone).
func (c *attCollector) reject(claimed string, rank int, reason, detail string) {
	if !c.wants(claimed) && claimed != "" {
		return
	}
	t := NormalizePredicateType(claimed)
	r := c.rejected[t]
	if r == nil {
		r = &rejection{Rejection: Rejection{PredicateType: t}}
		c.rejected[t] = r
	}
	r.Count++
	if r.Reason == "" || rank > r.rank {
		r.rank, r.Reason, r.Detail = rank, reason, detail
	}
}

// broken records an error reading a statement: a fetch failure, or a
// malformed statement.
func (c *attCollector) broken(claimed string, err error) {
	if transient(err) {
		if c.fetchErr == nil {
			c.fetchErr = err
		}
		return
	}
	c.reject(claimed, rankNone, ReasonMalformed, err.Error())
}

// fold records why a statement that did not verify was rejected.
func (c *attCollector) fold(claimed string, t *tally) {
	if t.fetchErr != nil {
		if c.fetchErr == nil {
			c.fetchErr = t.fetchErr
		}
		return
	}
	if t.best.rank > rankNone {
		c.reject(claimed, t.best.rank, t.best.reason, t.best.detail)
	}
}

func (c *attCollector) rejections() Rejections {
	var out Rejections
	for _, r := range c.rejected {
		out = append(out, r.Rejection)
	}
	slices.SortFunc(out, func(a, b Rejection) int { return strings.Compare(a.PredicateType, b.PredicateType) })
	return out
}

// In-toto statement types: v0.1 is what cosign v2 attests, v1 what
// cosign v3 and sigstore-go sign.
const (
	statementV01 = "https://in-toto.io/Statement/v0.1"
	statementV1  = "https://in-toto.io/Statement/v1"
	// intotoPayloadType is the DSSE payload type of in-toto statements.
	intotoPayloadType = "application/vnd.in-toto+json"
)

// statement is the part of an in-toto statement that is read here.
type statement struct {
	Type    string `json:"_type"`
	Subject []struct {
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	PredicateType string         `json:"predicateType"`
	Predicate     jsontext.Value `json:"predicate"`
}

// names reports whether a subject of st has the sha256 digest dgst.
func (st *statement) names(dgst v1.Hash) bool {
	for _, s := range st.Subject {
		if strings.EqualFold(s.Digest["sha256"], dgst.Hex) {
			return true
		}
	}
	return false
}

// dsseEnvelope is a DSSE envelope as cosign stores it in a .att layer:
// every member it may have, so that any other is refused.
type dsseEnvelope struct {
	PayloadType string `json:"payloadType"`
	Payload     string `json:"payload"`
	Signatures  []struct {
		KeyID string `json:"keyid"`
		Sig   string `json:"sig"`
	} `json:"signatures"`
}

// parseEnvelope reads the statement of a legacy attestation layer.
//
// cosign verifies the envelope with encoding/json v1, which matches member
// names case-insensitively and lets the last of them win; JSON v2 here is
// exact. An envelope with a second, differently-cased "Payload" would have
// cosign verify one statement and gatehouse read another: unknown members
// (and a case variant is one) are refused, and so are duplicates.
func parseEnvelope(b []byte) (*statement, error) {
	var env dsseEnvelope
	if err := json.Unmarshal(b, &env, json.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("DSSE envelope: %w", err)
	}
	// cosign's subject check decodes the payload this way.
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("DSSE envelope payload: %w", err)
	}
	return parseStatement(env.PayloadType, payload, len(env.Signatures))
}

// parseStatement reads an in-toto statement strictly: JSON v2 refuses
// duplicate names and matches them case-sensitively, so that the type
// and predicate read here are the ones the signature verifiers (which
// parse the same bytes their own way) saw, or nothing is.
func parseStatement(payloadType string, payload []byte, signatures int) (*statement, error) {
	if payloadType != intotoPayloadType {
		return nil, fmt.Errorf("payload type %q is not %s", payloadType, intotoPayloadType)
	}
	if signatures == 0 {
		return nil, errors.New("the statement is not signed")
	}
	var st statement
	if err := json.Unmarshal(payload, &st); err != nil {
		return nil, fmt.Errorf("in-toto statement: %w", err)
	}
	switch {
	case st.Type != statementV01 && st.Type != statementV1:
		return nil, fmt.Errorf("in-toto statement: unknown _type %q", st.Type)
	case st.PredicateType == "":
		return nil, errors.New("in-toto statement: no predicateType")
	case len(st.Subject) == 0:
		return nil, errors.New("in-toto statement: no subject")
	case st.Predicate != nil && st.Predicate.Kind() != '{':
		return nil, errors.New("in-toto statement: the predicate is not an object")
	}
	return &st, nil
}
