package sign

import (
	"encoding/json/v2"
	"errors"
	"fmt"
	"regexp"
	"time"

	provenance02 "github.com/in-toto/attestation/go/predicates/provenance/v02"
	provenance1 "github.com/in-toto/attestation/go/predicates/provenance/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// In-toto predicate types that rules can require. NormalizePredicateType
// maps cosign's short names and versioned variants onto them.
const (
	// PredicateSLSAProvenanceV02 is SLSA provenance v0.2 (cosign's
	// slsaprovenance and slsaprovenance02).
	PredicateSLSAProvenanceV02 = "https://slsa.dev/provenance/v0.2"
	// PredicateSLSAProvenanceV1 is SLSA provenance v1 (cosign's
	// slsaprovenance1).
	PredicateSLSAProvenanceV1 = "https://slsa.dev/provenance/v1"
	// PredicateSPDX is an SPDX SBOM (cosign's spdx and spdxjson).
	PredicateSPDX = "https://spdx.dev/Document"
	// PredicateCycloneDX is a CycloneDX SBOM (cosign's cyclonedx).
	PredicateCycloneDX = "https://cyclonedx.org/bom"
	// PredicateVuln is cosign's vulnerability scan report (cosign's vuln);
	// ScanTime reads when the scan ran.
	PredicateVuln = "https://cosign.sigstore.dev/attestation/vuln/v1"
	// PredicateOpenVEX is an OpenVEX document (cosign's openvex), with
	// or without a version suffix (https://openvex.dev/ns/v0.2.0).
	PredicateOpenVEX = "https://openvex.dev/ns"
)

// cosignPredicateNames are cosign's --type short names (cosign's
// options.PredicateTypeMap) for the predicate types above.
var cosignPredicateNames = map[string]string{
	"slsaprovenance":   PredicateSLSAProvenanceV02,
	"slsaprovenance02": PredicateSLSAProvenanceV02,
	"slsaprovenance1":  PredicateSLSAProvenanceV1,
	"spdx":             PredicateSPDX,
	"spdxjson":         PredicateSPDX,
	"cyclonedx":        PredicateCycloneDX,
	"vuln":             PredicateVuln,
	"openvex":          PredicateOpenVEX,
}

// versionSuffix is the version that the in-toto predicate registry lets
// SPDX, CycloneDX and OpenVEX types carry (https://spdx.dev/Document/v2.3,
// https://cyclonedx.org/bom/v1.5, https://openvex.dev/ns/v0.2.0).
var versionSuffix = regexp.MustCompile(`/v[0-9][0-9A-Za-z.+-]*$`)

// NormalizePredicateType returns the predicate type t stands for: one of
// the Predicate* constants for cosign's short names (spdxjson, vuln, ...)
// and for versioned SPDX, CycloneDX and OpenVEX types; any other t as it
// is. Two SLSA provenance versions are different formats and stay apart.
func NormalizePredicateType(t string) string {
	if full, ok := cosignPredicateNames[t]; ok {
		return full
	}
	if loc := versionSuffix.FindStringIndex(t); loc != nil {
		switch base := t[:loc[0]]; base {
		case PredicateSPDX, PredicateCycloneDX, PredicateOpenVEX:
			return base
		}
	}
	return t
}

// provenanceJSON parses predicates leniently about fields the schema does
// not know (builders add their own) and strictly about everything else:
// protojson refuses duplicate fields, which could otherwise make two
// readers of the same signed bytes see different builders.
var provenanceJSON = protojson.UnmarshalOptions{DiscardUnknown: true}

// ParseProvenance reads a SLSA provenance predicate (v0.2 or v1, by
// predicateType) for a rule to match: the id of the builder that signed
// off the build, and the URIs the build was made from, deduplicated, in
// this order:
//   - v0.2: invocation.configSource.uri, then materials[].uri;
//   - v1: buildDefinition.externalParameters.workflow.repository (GitHub
//     Actions) and externalParameters.source (a URI string or an object
//     with a uri), then buildDefinition.resolvedDependencies[].uri.
//
// URIs are returned as written (git+https://github.com/o/r@refs/tags/v1,
// https://github.com/o/r): matching them is the caller's. A predicate of
// another type, one that does not parse, or one without a builder id is
// an error.
func ParseProvenance(predicateType string, predicate []byte) (builderID string, sourceRepos []string, err error) {
	var uris []string
	switch NormalizePredicateType(predicateType) {
	case PredicateSLSAProvenanceV02:
		var p provenance02.Provenance
		if err := provenanceJSON.Unmarshal(predicate, &p); err != nil {
			return "", nil, fmt.Errorf("SLSA provenance v0.2: %w", err)
		}
		builderID = p.GetBuilder().GetId()
		// The source is what the build was configured from; materials are
		// every dependency, which a build of anything can list: only the
		// first stands for the source, and only without a configSource.
		uris = append(uris, p.GetInvocation().GetConfigSource().GetUri())
		if ms := p.GetMaterials(); uris[0] == "" && len(ms) > 0 {
			uris = append(uris, ms[0].GetUri())
		}
	case PredicateSLSAProvenanceV1:
		var p provenance1.Provenance
		if err := provenanceJSON.Unmarshal(predicate, &p); err != nil {
			return "", nil, fmt.Errorf("SLSA provenance v1: %w", err)
		}
		builderID = p.GetRunDetails().GetBuilder().GetId()
		ext := p.GetBuildDefinition().GetExternalParameters().GetFields()
		uris = append(uris, ext["workflow"].GetStructValue().GetFields()["repository"].GetStringValue())
		uris = append(uris, uriOf(ext["source"]))
		// Resolved dependencies are everything the build fetched: the first
		// stands for the source only when the parameters name none.
		if ds := p.GetBuildDefinition().GetResolvedDependencies(); uris[0] == "" && uris[1] == "" && len(ds) > 0 {
			uris = append(uris, ds[0].GetUri())
		}
	default:
		return "", nil, fmt.Errorf("predicate type %q is not SLSA provenance v0.2 or v1", predicateType)
	}
	if builderID == "" {
		return "", nil, errors.New("SLSA provenance names no builder id")
	}
	seen := map[string]bool{"": true}
	for _, u := range uris {
		if !seen[u] {
			seen[u] = true
			sourceRepos = append(sourceRepos, u)
		}
	}
	return builderID, sourceRepos, nil
}

// uriOf reads a source given as a URI string or as a resource descriptor
// ({"uri": ...}); anything else is "".
func uriOf(v *structpb.Value) string {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return s.StringValue
	}
	return v.GetStructValue().GetFields()["uri"].GetStringValue()
}

// vulnPredicate is the part of cosign's vulnerability scan predicate
// (attestation.CosignVulnPredicate) that dates the scan.
type vulnPredicate struct {
	Metadata struct {
		ScanStartedOn  string `json:"scanStartedOn"`
		ScanFinishedOn string `json:"scanFinishedOn"`
	} `json:"metadata"`
}

// ScanTime returns when the scan reported by a cosign vulnerability
// predicate (PredicateVuln) ran: metadata.scanFinishedOn, else
// metadata.scanStartedOn (RFC 3339). cosign writes an unset time as
// 0001-01-01T00:00:00Z, which counts as absent; a predicate with neither
// time is an error. The time is the signer's claim: a caller comparing it
// with its clock should refuse one far in the future.
func ScanTime(predicate []byte) (time.Time, error) {
	var p vulnPredicate
	if err := json.Unmarshal(predicate, &p); err != nil {
		return time.Time{}, fmt.Errorf("vulnerability scan predicate: %w", err)
	}
	for _, field := range []struct{ name, value string }{
		{"scanFinishedOn", p.Metadata.ScanFinishedOn},
		{"scanStartedOn", p.Metadata.ScanStartedOn},
	} {
		if field.value == "" {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, field.value)
		if err != nil {
			return time.Time{}, fmt.Errorf("vulnerability scan predicate: metadata.%s: %w", field.name, err)
		}
		if !ts.IsZero() {
			return ts, nil
		}
	}
	return time.Time{}, errors.New("vulnerability scan predicate: no metadata.scanFinishedOn or scanStartedOn")
}

// wantsType reports whether the predicate type t is among the normalized
// types of a filter (nil or empty: every type).
func wantsType(filter map[string]bool, t string) bool {
	return len(filter) == 0 || filter[NormalizePredicateType(t)]
}

// typeFilter normalizes the predicate types asked for.
func typeFilter(types []string) map[string]bool {
	if len(types) == 0 {
		return nil
	}
	m := make(map[string]bool, len(types))
	for _, t := range types {
		m[NormalizePredicateType(t)] = true
	}
	return m
}
