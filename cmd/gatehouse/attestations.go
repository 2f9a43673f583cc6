package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/sign"
)

var _ gate.AttestationVerifier = (*signatureVerifier)(nil)

// Attestations fetches and verifies the attestations of up/repo@dgst with
// the named rule's signature identities, and reads what the gate judges
// out of each: a provenance's builder and sources, a scan's time, an
// OpenVEX document. A predicate that does not parse is dropped (logged):
// it can satisfy no requirement.
func (sv *signatureVerifier) Attestations(ctx context.Context, up, repo string, dgst v1.Hash, rule string) ([]gate.Attestation, []gate.AttestationRejection, error) {
	p, v := sv.policies[rule], sv.verifiers[up]
	if p == nil || v == nil {
		return nil, nil, fmt.Errorf("no signature policy for rule %q on upstream %q", rule, up)
	}
	r, err := name.NewRepository(up+"/"+repo, name.Insecure)
	if err != nil {
		return nil, nil, err
	}
	atts, rej, err := v.Attestations(ctx, r, dgst, p, nil)
	if err != nil {
		return nil, nil, err
	}
	var out []gate.Attestation
	for _, a := range atts {
		ga := gate.Attestation{PredicateType: sign.NormalizePredicateType(a.PredicateType), Identity: a.Identity, Format: a.Format}
		switch ga.PredicateType {
		case sign.PredicateSLSAProvenanceV02, sign.PredicateSLSAProvenanceV1:
			if ga.BuilderID, ga.SourceRepos, err = sign.ParseProvenance(a.PredicateType, a.Predicate); err != nil {
				slog.Warn("provenance attestation not understood; ignored", "repo", up+"/"+repo, "digest", dgst, "signer", a.Identity, "err", err)
				continue
			}
		case sign.PredicateVuln:
			if ga.ScanTime, err = sign.ScanTime(a.Predicate); err != nil {
				slog.Warn("vulnerability-scan attestation not understood; ignored", "repo", up+"/"+repo, "digest", dgst, "signer", a.Identity, "err", err)
				continue
			}
		case sign.PredicateOpenVEX:
			ga.Predicate = a.Predicate
		}
		out = append(out, ga)
	}
	var rejected []gate.AttestationRejection
	for _, x := range rej {
		rejected = append(rejected, gate.AttestationRejection{PredicateType: x.PredicateType, Count: x.Count, Reason: x.Reason})
	}
	return out, rejected, nil
}
