package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/sign"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/pull/transport"
)

// signaturePolicies maps every rule with a signatures section to its
// verification policy, reading keys and trusted roots from disk and
// validating them (a start-up error names the rule).
func signaturePolicies(cfg *config.Config) (map[string]*sign.Policy, error) {
	out := map[string]*sign.Policy{}
	for i, r := range cfg.Gate.Policy.Rules {
		s := r.Signatures
		if s == nil {
			continue
		}
		field := fmt.Sprintf("config: gate.policy.rules[%d].signatures", i)
		p := &sign.Policy{Required: s.Required, RequireTlog: s.RequireTlog, RequireSCT: s.RequireSCT,
			AllowIndexSignature: *s.AllowIndexSignature}
		for j, id := range s.Identities {
			pem, err := id.PublicKeyPEM()
			if err != nil {
				return nil, fmt.Errorf("%s.identities[%d].publicKey: %w", field, j, err)
			}
			p.Identities = append(p.Identities, sign.Identity{PublicKeyPEM: pem, Issuer: id.Issuer, Subject: id.Subject,
				IssuerRegexp: id.IssuerRegexp, SubjectRegexp: id.SubjectRegexp})
		}
		b, err := s.TrustedRootJSON()
		if err != nil {
			return nil, fmt.Errorf("%s.trustedRoot: %w", field, err)
		}
		p.TrustedRoot = b
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		out[r.Name] = p
	}
	return out, nil
}

// signatureVerifier verifies signatures for the gate, fetching them through
// the content layer in process (so through the upstream client and cache).
type signatureVerifier struct {
	policies  map[string]*sign.Policy
	verifiers map[string]*sign.Verifier // by upstream
}

var _ gate.SignatureVerifier = (*signatureVerifier)(nil)

func newSignatureVerifier(cfg *config.Config, content *pull.Content) (*signatureVerifier, error) {
	policies, err := signaturePolicies(cfg)
	if err != nil {
		return nil, err
	}
	if len(policies) == 0 {
		return nil, nil
	}
	sv := &signatureVerifier{policies: policies, verifiers: map[string]*sign.Verifier{}}
	for _, u := range cfg.Upstreams {
		sv.verifiers[u.Name] = sign.New(sign.Options{Transport: transport.New(content, u.Name)})
	}
	return sv, nil
}

func (sv *signatureVerifier) Verify(ctx context.Context, up, repo string, dgst v1.Hash, rule string, index *v1.Hash) (*gate.SignatureResult, error) {
	p, v := sv.policies[rule], sv.verifiers[up]
	if p == nil || v == nil {
		return nil, fmt.Errorf("no signature policy for rule %q on upstream %q", rule, up)
	}
	// The host only names the repository: the in-process transport routes
	// by upstream, whatever the host.
	r, err := name.NewRepository(up+"/"+repo, name.Insecure)
	if err != nil {
		return nil, err
	}
	res, err := v.Verify(ctx, r, dgst, p, index)
	if err != nil {
		return nil, err
	}
	return &gate.SignatureResult{Verified: res.Verified, Format: res.Format, Identity: res.Identity, Digest: res.Digest,
		Reason: res.Reason, Detail: res.Detail, VerifiedAt: res.VerifiedAt}, nil
}
