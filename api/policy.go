package api

import (
	"cmp"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
)

// The rules as GET /api/v1/policy shows them: every field under its name
// in the YAML configuration (camelCase). These are the
// API's own types rather than JSON tags on the config types: a rule's hash,
// which keys every stored verdict, is computed from the config type's JSON
// encoding, and must not change with the API's field names.
// (TestAPIRuleMirrorsConfigKeys keeps the two in step.)

// ruleJSON is a rule of the policy in force.
type ruleJSON struct {
	Name          string          `json:"name"`
	Upstreams     []string        `json:"upstreams"`
	Repositories  []string        `json:"repositories"`
	Mode          string          `json:"mode"`
	Block         []string        `json:"block"`
	IgnoreUnfixed bool            `json:"ignoreUnfixed"`
	Allowlist     []allowJSON     `json:"allowlist"`
	Signatures    *signaturesJSON `json:"signatures,omitempty"` // absent: no signature check
	// Vulnerabilities is "on" (scanned) or "off" (signatures only).
	Vulnerabilities string            `json:"vulnerabilities"`
	Attestations    *attestationsJSON `json:"attestations,omitempty"` // absent: none required
	VEX             *vexJSON          `json:"vex,omitempty"`          // absent: no VEX
	// StaleDB is deny or warn: what a new verdict does with a DB older
	// than gate.db.maxAge.
	StaleDB string `json:"staleDB"`
	// Hash identifies the rule's content; it keys the rule's verdicts.
	Hash string `json:"hash"`
}

// attestationsJSON are the attestations a rule requires.
type attestationsJSON struct {
	Provenance        *provenanceJSON `json:"provenance,omitempty"`
	SBOM              bool            `json:"sbom"`
	VulnerabilityScan *scanAttJSON    `json:"vulnerabilityScan,omitempty"`
}

type provenanceJSON struct {
	BuilderIDs         []string `json:"builderIds"`
	SourceRepositories []string `json:"sourceRepositories"`
}

type scanAttJSON struct {
	MaxAge string `json:"maxAge"`
}

// vexJSON are the VEX sources a rule accepts.
type vexJSON struct {
	Files           []string `json:"files"`
	Repositories    []string `json:"repositories"`
	RefreshInterval string   `json:"refreshInterval"`
	Attestations    bool     `json:"attestations"`
}

// dateLayout is how the configuration writes an allowlist entry's expiry.
const dateLayout = "2006-01-02"

// allowJSON is an allowlist entry.
type allowJSON struct {
	ID      string `json:"id"`
	Reason  string `json:"reason"`
	Expires string `json:"expires"`
}

// signaturesJSON is a rule's signature check.
type signaturesJSON struct {
	Required            bool         `json:"required"`
	Identities          []signerJSON `json:"identities"`
	TrustedRoot         string       `json:"trustedRoot"`
	RequireTlog         bool         `json:"requireTlog"`
	RequireSCT          bool         `json:"requireSCT"`
	AllowIndexSignature bool         `json:"allowIndexSignature"`
}

// signerJSON is a trusted identity.
type signerJSON struct {
	PublicKey     string `json:"publicKey"`
	Issuer        string `json:"issuer"`
	Subject       string `json:"subject"`
	IssuerRegexp  string `json:"issuerRegexp"`
	SubjectRegexp string `json:"subjectRegexp"`
}

// rulesJSON converts the policy's rules for the API.
func rulesJSON(rules []*policy.Rule) []ruleJSON {
	out := make([]ruleJSON, 0, len(rules))
	for _, r := range rules {
		rj := ruleJSON{Name: r.Name, Upstreams: r.Upstreams, Repositories: r.Repositories, Mode: r.Mode,
			Block: r.Block, IgnoreUnfixed: r.IgnoreUnfixed, Hash: r.Hash, Vulnerabilities: config.VulnerabilitiesOn}
		rj.StaleDB = cmp.Or(r.StaleDB, config.StaleDBDeny)
		if r.Vulnerabilities == config.VulnerabilitiesOff {
			rj.Vulnerabilities = config.VulnerabilitiesOff
		}
		if a := r.Attestations; a != nil {
			rj.Attestations = &attestationsJSON{SBOM: a.SBOM}
			if p := a.Provenance; p != nil {
				rj.Attestations.Provenance = &provenanceJSON{BuilderIDs: p.BuilderIDs, SourceRepositories: p.SourceRepositories}
			}
			if v := a.VulnerabilityScan; v != nil {
				rj.Attestations.VulnerabilityScan = &scanAttJSON{MaxAge: v.MaxAge.String()}
			}
		}
		if v := r.VEX; v != nil {
			rj.VEX = &vexJSON{Files: v.Files, Repositories: v.Repositories, RefreshInterval: v.RefreshInterval.String(), Attestations: v.Attestations}
		}
		for _, a := range r.Allowlist {
			rj.Allowlist = append(rj.Allowlist, allowJSON{ID: a.ID, Reason: a.Reason, Expires: a.Expires.Format(dateLayout)})
		}
		if s := r.Signatures; s != nil {
			sj := &signaturesJSON{Required: s.Required, TrustedRoot: s.TrustedRoot,
				RequireTlog: s.RequireTlog, RequireSCT: s.RequireSCT, AllowIndexSignature: s.AllowIndexSignature == nil || *s.AllowIndexSignature}
			for _, id := range s.Identities {
				sj.Identities = append(sj.Identities, signerJSON{PublicKey: id.PublicKey, Issuer: id.Issuer, Subject: id.Subject,
					IssuerRegexp: id.IssuerRegexp, SubjectRegexp: id.SubjectRegexp})
			}
			rj.Signatures = sj
		}
		out = append(out, rj)
	}
	return out
}
