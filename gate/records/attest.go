package records

// AttestationCheck is the outcome of one attestation a rule requires
// (provenance, sbom, vulnerabilityScan), as the verdict stores it and the
// API shows it.
type AttestationCheck struct {
	// Requirement is "provenance", "sbom" or "vulnerabilityScan".
	Requirement string `json:"requirement"`
	Passed      bool   `json:"passed"`
	// Found describes the attestation that passed, or the closest one
	// that did not: its predicate type, builder, source, age, signer.
	Found string `json:"found,omitempty"`
	// Reason says why it failed.
	Reason string `json:"reason,omitempty"`
}

// Suppression is a vulnerability a VEX statement removed from the
// verdict, and the statement's source.
type Suppression struct {
	ID            string `json:"id"`
	PkgName       string `json:"pkgName"`
	PURL          string `json:"purl,omitempty"`
	Status        string `json:"status"` // not_affected or fixed
	Justification string `json:"justification,omitempty"`
	// Source is where the statement came from: a file, or an attestation
	// and its signer.
	Source string `json:"source"`
}
