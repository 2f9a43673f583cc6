package main

import (
	"testing"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/sign"
)

// The gate judges predicate types by the names the verifier normalises
// them to: the two lists must not drift apart.
func TestPredicateTypesAgree(t *testing.T) {
	for g, s := range map[string]string{
		gate.PredicateSLSAv02: sign.PredicateSLSAProvenanceV02, gate.PredicateSLSAv1: sign.PredicateSLSAProvenanceV1,
		gate.PredicateSPDX: sign.PredicateSPDX, gate.PredicateCycloneDX: sign.PredicateCycloneDX,
		gate.PredicateVuln: sign.PredicateVuln, gate.PredicateOpenVEX: sign.PredicateOpenVEX,
	} {
		if g != s || sign.NormalizePredicateType(g) != g {
			t.Errorf("gate %q, sign %q (normalised %q)", g, s, sign.NormalizePredicateType(g))
		}
	}
}
