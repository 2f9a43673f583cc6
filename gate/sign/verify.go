package sign

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/sigstore-go/pkg/root"
)

// Signature formats, as Result.Format reports them.
const (
	// FormatLegacyTag is cosign's original layout: a manifest tagged
	// sha256-<hex>.sig in the image's repository, one layer per signature.
	FormatLegacyTag = "legacy-tag"
	// FormatBundle is an OCI 1.1 referrer of the image whose single layer
	// is a sigstore bundle v0.3 (cosign v3's default).
	FormatBundle = "bundle"
)

// Reasons, as Result.Reason reports them when an image is not verified.
// ReasonFetch, ReasonPolicy and ReasonError come with an error from
// Verify: they say nothing about the image.
const (
	ReasonNoSignature = "no signature found"
	ReasonUntrusted   = "signed by an untrusted identity"
	ReasonMismatch    = "signature does not match the image digest"
	ReasonNoTlog      = "signature has no transparency-log entry"
	ReasonFetch       = "signatures could not be fetched"
	ReasonPolicy      = "invalid signature policy"
	ReasonError       = "signature verification failed unexpectedly"
)

// CosignSignPredicate is the in-toto predicate type of a cosign v3 image
// signature carried in a bundle. Bundles of other predicate types
// (SBOMs, provenance, ...) are attestations, not signatures.
const CosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"

// bundleArtifactPrefix starts the artifact type of sigstore bundle
// referrers (application/vnd.dev.sigstore.bundle.v0.3+json).
const bundleArtifactPrefix = "application/vnd.dev.sigstore.bundle"

// predicateAnnotation is set by cosign on bundle referrers. It is not
// signed: it only saves fetching attestations that cannot be signatures;
// the predicate type is checked again on the verified statement.
const predicateAnnotation = "dev.sigstore.bundle.predicateType"

// Defaults for Options.
const (
	DefaultMaxSignatures = 32
	DefaultMaxBodyBytes  = 4 << 20
)

// Result is the outcome of Verify: what the verdict stores and the JSON API
// shows.
type Result struct {
	Verified bool `json:"verified"`
	// Format is FormatLegacyTag or FormatBundle when verified.
	Format string `json:"format,omitempty"`
	// Identity names the signer when verified: "key=sha256:<hex>" (the
	// SHA-256 of the key's DER SubjectPublicKeyInfo) or
	// "issuer=<OIDC issuer> subject=<certificate SAN>".
	Identity string `json:"identity,omitempty"`
	// Digest is the manifest digest the accepted signature covers: the
	// image's own, or that of the index listing it (AllowIndexSignature).
	Digest string `json:"digest,omitempty"`
	// Reason says why the image is not verified: one of the Reason*
	// constants.
	Reason string `json:"reason,omitempty"`
	// Detail is the underlying error of the most relevant rejected
	// signature, for logs and the JSON API; not meant for clients.
	Detail     string    `json:"detail,omitempty"`
	VerifiedAt time.Time `json:"verifiedAt"`
}

// Options configure a Verifier.
type Options struct {
	// Transport carries every registry request made for signatures:
	// gatehouse's own upstream transport (TLS, retries, credentials).
	// Verify makes no retries of its own.
	// Nil means http.DefaultTransport, which only tests should want.
	Transport http.RoundTripper
	// Auth authenticates to the registry on top of Transport (go-
	// containerregistry's token flow). Nil means anonymous, for a
	// Transport that already authenticates. cosign's default keychain
	// (~/.docker/config.json) is never used.
	Auth authn.Authenticator
	// MaxSignatures caps the signatures examined per digest and format
	// (legacy layers, bundle referrers); more are ignored, never
	// accepted. Zero means DefaultMaxSignatures.
	MaxSignatures int
	// MaxBodyBytes caps every response body read for signatures. Zero
	// means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Now is the clock for Result.VerifiedAt; nil means time.Now.
	// Certificate validity is checked by sigstore against the real clock.
	Now func() time.Time
}

// Verifier verifies cosign signatures of images in upstream registries.
// It is safe for concurrent use.
type Verifier struct {
	rt      http.RoundTripper
	auth    authn.Authenticator
	maxSigs int
	now     func() time.Time
}

// New returns a Verifier that fetches signatures through opts.Transport.
func New(opts Options) *Verifier {
	v := &Verifier{
		auth:    opts.Auth,
		maxSigs: opts.MaxSignatures,
		now:     opts.Now,
	}
	if v.auth == nil {
		v.auth = authn.Anonymous
	}
	if v.maxSigs <= 0 {
		v.maxSigs = DefaultMaxSignatures
	}
	if v.now == nil {
		v.now = time.Now
	}
	rt := opts.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	maxBody := opts.MaxBodyBytes
	if maxBody <= 0 {
		maxBody = DefaultMaxBodyBytes
	}
	v.rt = &limitTransport{inner: rt, max: maxBody}
	return v
}

// registryOpts are cosign's RegistryClientOpts for one Verify call: our
// transport and authenticator instead of cosign's default keychain, and
// one puller shared by all the call's requests, so that the registry is
// pinged and a token fetched once per call rather than once per request.
//
// go-containerregistry's own retries are off: gatehouse's transport
// retries already, and its backoff (1 s, then 3 s, per request) would
// hold a pull waiting on the gate longer than clients wait for headers.
func (v *Verifier) registryOpts(ctx context.Context) []ociremote.Option {
	ropts := []remote.Option{
		remote.WithTransport(v.rt),
		remote.WithAuth(v.auth),
		remote.WithContext(ctx),
		remote.WithUserAgent("gatehouse"),
		remote.WithRetryBackoff(remote.Backoff{Duration: time.Second, Steps: 1}),
	}
	if p, err := remote.NewPuller(ropts...); err == nil {
		ropts = append(ropts, remote.Reuse(p))
	} // else: each request authenticates on its own
	return []ociremote.Option{ociremote.WithRemoteOptions(ropts...)}
}

// Verify checks the signatures of the manifest dgst in repo, in both
// formats (legacy signature tag and sigstore bundle referrers): any valid
// signature by an identity of p verifies it. When it does not and
// p.AllowIndexSignature is set, the signatures of indexDigest (the index
// that listed dgst, if any) are checked the same way.
//
// The Result is never nil. Verified is true only for a signature that was
// fully verified. A non-nil error comes with an unverified Result and
// means the outcome says nothing about the image (an invalid policy, a
// failed fetch, a cancelled ctx): the caller should deny without storing
// the result as final. Whether an unverified image is denied
// (p.Required) is the caller's decision.
func (v *Verifier) Verify(ctx context.Context, repo name.Repository, dgst v1.Hash, p *Policy, indexDigest *v1.Hash) (res *Result, err error) {
	defer func() {
		// Fetching and parsing run library code over untrusted input too.
		if r := recover(); r != nil {
			res = &Result{Reason: ReasonError, Detail: fmt.Sprintf("panic: %v", r), VerifiedAt: v.now()}
			err = fmt.Errorf("verifying signatures of %s@%s: panic: %v", repo, dgst, r)
		}
	}()
	cp, err := p.compile()
	if err != nil {
		return &Result{Reason: ReasonPolicy, Detail: err.Error(), VerifiedAt: v.now()}, fmt.Errorf("signature policy: %w", err)
	}
	opts := v.registryOpts(ctx)
	res, t := v.verifyDigest(ctx, opts, repo, dgst, cp)
	if res == nil && p.AllowIndexSignature && indexDigest != nil && *indexDigest != dgst {
		var ti tally
		res, ti = v.verifyDigest(ctx, opts, repo, *indexDigest, cp)
		if ti.fetchErr != nil && t.fetchErr == nil {
			t.fetchErr = ti.fetchErr
		}
		if ti.best.rank > t.best.rank {
			t.best = ti.best
		}
	}
	if res != nil {
		res.VerifiedAt = v.now()
		return res, nil
	}
	if err := ctx.Err(); err != nil && t.fetchErr == nil {
		t.fetchErr = err
	}
	if t.fetchErr != nil {
		// The signature that could not be fetched might have been valid.
		return &Result{Reason: ReasonFetch, Detail: t.fetchErr.Error(), VerifiedAt: v.now()},
			fmt.Errorf("fetching signatures of %s@%s: %w", repo, dgst, t.fetchErr)
	}
	r := &Result{Reason: ReasonNoSignature, VerifiedAt: v.now()}
	if t.best.rank > rankNone {
		r.Reason, r.Detail = t.best.reason, t.best.detail
	}
	return r, nil
}

// Failure ranks: with several rejected signatures, the reason shown is
// that of the one closest to being accepted.
const (
	rankNone      = iota
	rankUntrusted // the signer is not trusted (or the signature is invalid)
	rankNoTlog    // a trusted signer, but transparency-log evidence is missing
	rankMismatch  // a trusted signer, but of another digest
)

type failure struct {
	rank           int
	reason, detail string
}

// tally collects what was found for one digest.
type tally struct {
	best     failure
	fetchErr error // first fetch error
}

func (t *tally) fail(rank int, reason string, err error) {
	if rank > t.best.rank {
		t.best = failure{rank: rank, reason: reason, detail: err.Error()}
	}
}

func (t *tally) fetchFailed(err error) {
	if t.fetchErr == nil {
		t.fetchErr = err
	}
}

// verifyDigest checks the legacy signatures of dgst, then its bundles,
// and returns the first verified Result, or nil and what went wrong.
func (v *Verifier) verifyDigest(ctx context.Context, opts []ociremote.Option, repo name.Repository, dgst v1.Hash, cp *compiled) (*Result, tally) {
	var t tally
	ref := repo.Digest(dgst.String())
	if res := v.verifyLegacy(ctx, opts, ref, dgst, cp, &t); res != nil {
		return res, t
	}
	if ctx.Err() != nil {
		return nil, t
	}
	if res := v.verifyBundles(ctx, opts, ref, dgst, cp, &t); res != nil {
		return res, t
	}
	return nil, t
}

// checkOpts are the CheckOpts common to every check under cp. Offline
// always: nothing may be fetched from Rekor, Fulcio or TUF at pull time.
func (cp *compiled) checkOpts(opts []ociremote.Option) *cosign.CheckOpts {
	co := &cosign.CheckOpts{
		RegistryClientOpts: opts,
		ClaimVerifier:      claimVerifier,
		Offline:            true,
		IgnoreSCT:          !cp.requireSCT,
		TrustedMaterial:    cp.tm,
	}
	return co
}

// trustedMaterial returns cp.tm, or empty material when the policy has no
// trusted root: the bundle verifier needs one even for keys.
func (cp *compiled) trustedMaterial() root.TrustedMaterial {
	if cp.tm != nil {
		return cp.tm
	}
	return &root.BaseTrustedMaterial{}
}

// timeMode is one way of establishing when a signature was made, which a
// keyless certificate (valid for minutes) must have been valid at.
type timeMode struct {
	ignoreTlog bool // do not look at transparency-log entries
	tsa        bool // use RFC 3161 signed timestamps
}

func (m timeMode) apply(co *cosign.CheckOpts) *cosign.CheckOpts {
	c := *co
	c.IgnoreTlog = m.ignoreTlog
	c.UseSignedTimestamps = m.tsa
	return &c
}

// plan lists the time modes to try, in order, for a signature that does
// or does not carry a log entry (hasTlog) and a signed timestamp (hasTS).
// When the policy requires a log entry and the signature has none, modes
// is empty and probe is the mode that tells whether only the entry is
// missing.
//
// Keys need no time: a log entry is only looked at when required. A
// keyless certificate is dated by the log entry (Rekor v1's integrated
// time) or the signed timestamp when they verify, and is otherwise
// checked against the current time.
func (cp *compiled) plan(keyless, hasTlog, hasTS bool) (modes []timeMode, probe timeMode) {
	tsa := keyless && hasTS && cp.tsa
	if cp.requireTlog && !hasTlog {
		return nil, timeMode{ignoreTlog: true, tsa: tsa}
	}
	if !keyless {
		return []timeMode{{ignoreTlog: !cp.requireTlog}}, probe
	}
	if hasTlog && cp.rekor {
		modes = append(modes, timeMode{})
		if tsa {
			modes = append(modes, timeMode{tsa: true}) // Rekor v2: no integrated time
		}
	}
	if !cp.requireTlog {
		if tsa {
			modes = append(modes, timeMode{ignoreTlog: true, tsa: true})
		}
		modes = append(modes, timeMode{ignoreTlog: true})
	}
	return modes, probe
}

// mismatchError marks a signature whose signer is trusted but whose
// payload names another digest.
type mismatchError struct{ err error }

func (e *mismatchError) Error() string { return e.err.Error() }
func (e *mismatchError) Unwrap() error { return e.err }

// claimVerifier is cosign's SimpleClaimVerifier (the payload must name
// the image digest: without it a signature of any other image passes),
// with its failure marked. cosign runs it only after the signature
// verified with a trusted key or certificate.
func claimVerifier(sig oci.Signature, h v1.Hash, annotations map[string]any) error {
	if err := cosign.SimpleClaimVerifier(sig, h, annotations); err != nil {
		return &mismatchError{err}
	}
	return nil
}

// errNoTlog is the detail of a signature lacking a required log entry.
var errNoTlog = errors.New("the signature carries no transparency-log entry and the policy requires one")

// guard runs library code over untrusted input, turning a panic into an
// error: a malformed signature must be rejected, not take the proxy down.
func guard[T any](fn func() (T, error)) (res T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("verification panicked: %v", r)
		}
	}()
	return fn()
}

// broken records an error reading a signature: a fetch failure, or a
// malformed signature (which counts as untrusted).
func (t *tally) broken(err error) {
	if transient(err) {
		t.fetchFailed(err)
		return
	}
	t.fail(rankUntrusted, ReasonUntrusted, err)
}

// failVerify records why cosign rejected a signature.
func (t *tally) failVerify(err error) {
	var m *mismatchError
	if errors.As(err, &m) {
		t.fail(rankMismatch, ReasonMismatch, err)
		return
	}
	t.fail(rankUntrusted, ReasonUntrusted, err)
}
