package gate

import (
	"context"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// The records of attestations and VEX, named here like the others.
type (
	// AttestationCheck is the outcome of one required attestation.
	AttestationCheck = records.AttestationCheck
	// Suppression is a vulnerability a VEX statement removed.
	Suppression = records.Suppression
)

// Predicate types the gate judges (normalised by the verifier: versions
// of SPDX, CycloneDX and OpenVEX without their suffix).
const (
	PredicateSLSAv02   = "https://slsa.dev/provenance/v0.2"
	PredicateSLSAv1    = "https://slsa.dev/provenance/v1"
	PredicateSPDX      = "https://spdx.dev/Document"
	PredicateCycloneDX = "https://cyclonedx.org/bom"
	PredicateVuln      = "https://cosign.sigstore.dev/attestation/vuln/v1"
	PredicateOpenVEX   = "https://openvex.dev/ns"
)

// Attestation is a verified attestation of an image: signed by an identity
// of the rule and made for the image's digest. The verifier reads what the
// gate judges out of its predicate.
type Attestation struct {
	PredicateType string
	Identity      string // the signer
	Format        string // legacy-tag or bundle
	// BuilderID and SourceRepos are a SLSA provenance's.
	BuilderID   string
	SourceRepos []string
	// ScanTime is a vulnerability-scan attestation's.
	ScanTime time.Time
	// Predicate is the predicate as signed (an OpenVEX document).
	Predicate []byte
}

// AttestationRejection sums up attestations of one predicate type that
// were found but not accepted (untrusted signer, another digest, unsigned).
type AttestationRejection struct {
	PredicateType string
	Count         int
	Reason        string
}

// AttestationVerifier finds the verified attestations of an image (gate/sign
// in production, through the same identities as the rule's signatures).
type AttestationVerifier interface {
	// Attestations returns the attestations of upstream/repo@dgst signed
	// by an identity of the named rule, and a summary of those rejected.
	// An error means they could not be fetched: nothing is known.
	Attestations(ctx context.Context, upstream, repo string, dgst v1.Hash, rule string) ([]Attestation, []AttestationRejection, error)
}

// VEXImage names the scanned image for VEX product matching.
type VEXImage struct {
	Upstream, Repo string
	Digest         v1.Hash
}

// VEXFilter applies VEX statements (gate/vex, Trivy's VEX code, in
// production).
type VEXFilter interface {
	// Apply returns the vulnerabilities no statement of the named rule's
	// VEX files or of the attached VEX attestations shows not to affect
	// img, and the suppressed ones with the statement's source.
	Apply(rule string, img VEXImage, vulns []Vuln, attached []Attestation) (kept []Vuln, suppressed []Suppression)
}

// attOutcome is what was found of an image's attestations.
type attOutcome struct {
	atts     []Attestation
	rejected []AttestationRejection
	err      error // could not be fetched: no lasting verdict
}

// needsAttestations reports whether rule reads attestations.
func needsAttestations(rule *policy.Rule) bool {
	return rule.Attestations != nil || (rule.VEX != nil && rule.VEX.Attestations && rule.Scans())
}

// fetchAttestations reads the image's attestations when the rule needs
// them (nil outcome when it does not).
func (g *Gate) fetchAttestations(ctx context.Context, s *Subject, rule *policy.Rule) *attOutcome {
	if !needsAttestations(rule) {
		return nil
	}
	if g.atts == nil {
		return &attOutcome{err: fmt.Errorf("rule %q reads attestations but no attestation verifier is configured", rule.Name)}
	}
	atts, rej, err := g.atts.Attestations(ctx, s.Upstream, s.Repo, s.Digest, rule.Name)
	if err != nil {
		g.log.Warn("attestations could not be fetched", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "err", err)
	}
	return &attOutcome{atts: atts, rejected: rej, err: err}
}

// applyVEX removes the vulnerabilities the rule's VEX statements cover.
func (g *Gate) applyVEX(s *Subject, rule *policy.Rule, vulns []Vuln, att *attOutcome) ([]Vuln, []Suppression) {
	if rule.VEX == nil || g.vex == nil || len(vulns) == 0 {
		return vulns, nil
	}
	var attached []Attestation
	if rule.VEX.Attestations && att != nil {
		for _, a := range att.atts {
			if a.PredicateType == PredicateOpenVEX {
				attached = append(attached, a)
			}
		}
	}
	return g.vex.Apply(rule.Name, VEXImage{Upstream: s.Upstream, Repo: s.Repo, Digest: s.Digest}, vulns, attached)
}

// checkAttestations judges the rule's required attestations. until is
// when a passing vulnerability scan grows older than maxAge (zero: no such
// bound): the verdict must be made again then.
func checkAttestations(req *config.Attestations, att *attOutcome, now time.Time) (checks []AttestationCheck, until time.Time) {
	if req == nil {
		return nil, time.Time{}
	}
	if att == nil || att.err != nil {
		why := "attestations could not be fetched"
		if att != nil {
			why += ": " + att.err.Error()
		}
		return []AttestationCheck{{Requirement: "attestations", Reason: why}}, time.Time{}
	}
	var out []AttestationCheck
	if p := req.Provenance; p != nil {
		out = append(out, checkProvenance(p, att))
	}
	if req.SBOM {
		out = append(out, checkPresent("sbom", att, PredicateSPDX, PredicateCycloneDX))
	}
	if vs := req.VulnerabilityScan; vs != nil {
		c, scanned := checkScanAge(vs.MaxAge.D(), att, now)
		out = append(out, c)
		if c.Passed {
			until = scanned.Add(vs.MaxAge.D())
		}
	}
	return out, until
}

func checkProvenance(p *config.Provenance, att *attOutcome) AttestationCheck {
	c := AttestationCheck{Requirement: "provenance"}
	for _, a := range att.atts {
		if a.PredicateType != PredicateSLSAv02 && a.PredicateType != PredicateSLSAv1 {
			continue
		}
		found := fmt.Sprintf("SLSA provenance by builder %q from %s, signed by %s", a.BuilderID, strings.Join(a.SourceRepos, ", "), a.Identity)
		switch {
		case !matchAny(p.BuilderIDs, a.BuilderID):
			c.Found, c.Reason = found, fmt.Sprintf("builder %q is not one of %s", a.BuilderID, strings.Join(p.BuilderIDs, ", "))
		case len(p.SourceRepositories) > 0 && !anyMatch(p.SourceRepositories, a.SourceRepos):
			c.Found, c.Reason = found, fmt.Sprintf("source %s is not one of %s", orNone(a.SourceRepos), strings.Join(p.SourceRepositories, ", "))
		default:
			return AttestationCheck{Requirement: "provenance", Passed: true, Found: found}
		}
	}
	if c.Reason == "" {
		c.Reason = missing("SLSA provenance", att, PredicateSLSAv02, PredicateSLSAv1)
	}
	return c
}

func checkPresent(req string, att *attOutcome, types ...string) AttestationCheck {
	for _, a := range att.atts {
		for _, t := range types {
			if a.PredicateType == t {
				return AttestationCheck{Requirement: req, Passed: true, Found: a.PredicateType + " signed by " + a.Identity}
			}
		}
	}
	return AttestationCheck{Requirement: req, Reason: missing("SBOM", att, types...)}
}

func checkScanAge(maxAge time.Duration, att *attOutcome, now time.Time) (AttestationCheck, time.Time) {
	c := AttestationCheck{Requirement: "vulnerabilityScan"}
	var best *Attestation
	for i, a := range att.atts {
		if a.PredicateType != PredicateVuln {
			continue
		}
		age := now.Sub(a.ScanTime)
		found := fmt.Sprintf("vulnerability scan of %s, signed by %s", a.ScanTime.UTC().Format(time.RFC3339), a.Identity)
		switch {
		case a.ScanTime.IsZero():
			c.Found, c.Reason = found, "the scan attestation has no scan time"
		case age > maxAge:
			c.Found, c.Reason = found, fmt.Sprintf("the newest scan is %s old, more than %s", config.Duration(age.Round(time.Minute)), config.Duration(maxAge))
		case age < -5*time.Minute:
			c.Found, c.Reason = found, "the scan is dated in the future"
		case best == nil || a.ScanTime.After(best.ScanTime):
			best = &att.atts[i] // the newest fresh scan: the verdict holds longest
		}
	}
	if best != nil {
		return AttestationCheck{Requirement: c.Requirement, Passed: true,
			Found: fmt.Sprintf("vulnerability scan of %s, signed by %s", best.ScanTime.UTC().Format(time.RFC3339), best.Identity)}, best.ScanTime
	}
	if c.Reason == "" {
		c.Reason = missing("vulnerability-scan", att, PredicateVuln)
	}
	return c, time.Time{}
}

// missing says why no attestation of types was accepted.
func missing(what string, att *attOutcome, types ...string) string {
	for _, r := range att.rejected {
		for _, t := range types {
			if r.PredicateType == t {
				return fmt.Sprintf("no trusted %s attestation (%d rejected: %s)", what, r.Count, r.Reason)
			}
		}
	}
	return fmt.Sprintf("no %s attestation found", what)
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "(none named)"
	}
	return strings.Join(s, ", ")
}

func anyMatch(patterns, values []string) bool {
	for _, v := range values {
		if matchAny(patterns, v) {
			return true
		}
	}
	return false
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// globMatch matches s against a pattern whose "*" matches any run of
// characters, "/" included; everything else is literal.
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}

// failedChecks returns the checks that did not pass.
func failedChecks(checks []AttestationCheck) []AttestationCheck {
	var out []AttestationCheck
	for _, c := range checks {
		if !c.Passed {
			out = append(out, c)
		}
	}
	return out
}
