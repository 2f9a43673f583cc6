package gate

import (
	"context"

	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/metrics"
)

func sigKey(s *Subject, rule *policy.Rule) string {
	return records.SignatureKey(s.Digest.String(), s.Upstream, s.Repo, rule.Hash)
}

// sigOutcome is a signature check's result. failed marks a check that
// could not be made (an error); indexMayAdmit one under a rule that accepts
// index signatures, where an index seen later (or lost at a restart) may
// still admit the image. A denial from either must not outlive the request.
type sigOutcome struct {
	res           *SignatureResult
	failed        bool
	indexMayAdmit bool
}

// lasting reports whether a denial made with this outcome may be stored.
func (o sigOutcome) lasting() bool {
	return !o.failed && (!o.indexMayAdmit || o.res == nil || o.res.Verified)
}

// verifySignature runs the rule's signature check; a failure is a result
// that is not verified (fail closed), with the error as its reason.
func (g *Gate) verifySignature(ctx context.Context, s *Subject, rule *policy.Rule) sigOutcome {
	if rule.Signatures == nil {
		return sigOutcome{}
	}
	parent := g.parent(s)
	res, err := g.sigs.Verify(ctx, s.Upstream, s.Repo, s.Digest, rule.Name, parent)
	if err != nil {
		metrics.SignatureVerifications.WithLabelValues("error").Inc()
		g.log.Warn("signature verification failed; image refused (fail closed)", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "err", err)
		return sigOutcome{res: &SignatureResult{Reason: "signature verification failed", Detail: err.Error(), VerifiedAt: g.now()}, failed: true}
	}
	result := "verified"
	if !res.Verified {
		result = "not_verified"
	}
	metrics.SignatureVerifications.WithLabelValues(result).Inc()
	// With index signatures allowed, an image not verified may still be
	// admitted by an index listing it, seen later or not known now (after a
	// restart, or pulled by digest): the result depends on the index.
	return sigOutcome{res: res, indexMayAdmit: allowIndexSignature(rule)}
}

func allowIndexSignature(rule *policy.Rule) bool {
	a := rule.Signatures.AllowIndexSignature
	return a == nil || *a
}

// signature returns the stored signature result of s under rule, or nil.
func (g *Gate) signature(ctx context.Context, s *Subject, rule *policy.Rule) *SignatureResult {
	return g.records.Signature(ctx, sigKey(s, rule))
}

// putSignature stores a signature result of s under rule (nil: none).
func (g *Gate) putSignature(ctx context.Context, s *Subject, rule *policy.Rule, res *SignatureResult) error {
	return g.records.PutSignature(ctx, sigKey(s, rule), res)
}
