package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Attestations are the in-toto attestations a rule requires of an image:
// each must be attached to the image (legacy .att tag or OCI 1.1 referrer
// with a sigstore bundle), signed by an identity of the rule's signatures
// and made for the image's digest. Verified offline, like signatures.
type Attestations struct {
	// Provenance requires a SLSA provenance attestation (v0.2 or v1) whose
	// builder and source match.
	Provenance *Provenance `yaml:"provenance,omitempty"`
	// SBOM requires an SBOM attestation (SPDX or CycloneDX).
	SBOM bool `yaml:"sbom,omitempty"`
	// VulnerabilityScan requires a vulnerability-scan attestation (cosign's
	// vuln predicate) no older than MaxAge.
	VulnerabilityScan *ScanAttestation `yaml:"vulnerabilityScan,omitempty"`
}

// Provenance is what a SLSA provenance must say. Patterns are globs whose
// "*" matches any run of characters, "/" included; an empty list matches
// anything.
type Provenance struct {
	// BuilderIDs are the trusted builders (builder.id), e.g.
	// "https://github.com/actions/runner/*" or a reusable workflow
	// "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v*".
	BuilderIDs []string `yaml:"builderIds"`
	// SourceRepositories are the repositories the image may be built
	// from, e.g. "git+https://github.com/our-org/*".
	SourceRepositories []string `yaml:"sourceRepositories,omitempty"`
}

// ScanAttestation bounds the age of a vulnerability-scan attestation.
type ScanAttestation struct {
	MaxAge Duration `yaml:"maxAge"`
}

// VEX are the VEX statements a rule accepts: a not_affected or fixed
// statement removes a vulnerability from the verdict for the products it
// names.
type VEX struct {
	// Files are OpenVEX or CSAF documents: files, or directories whose
	// *.json files are read. Read when the configuration is loaded.
	Files []string `yaml:"files,omitempty"`
	// Repositories are OCI artifacts whose layers are VEX documents
	// ("ghcr.io/vendor/vex:latest"), fetched through gatehouse's own
	// upstream of that registry at start and every RefreshInterval; the
	// operator trusts them by naming them, as files.
	Repositories []string `yaml:"repositories,omitempty"`
	// RefreshInterval is how often Repositories are fetched again
	// (default 1h); a change judges the rule's images again.
	RefreshInterval Duration `yaml:"refreshInterval,omitempty"`
	// Attestations accepts OpenVEX attestations attached to the image and
	// signed by an identity of the rule's signatures; unsigned ones, or
	// ones by anyone else, count for nothing.
	Attestations bool `yaml:"attestations,omitempty"`

	docs []VEXFile
}

// VEXFile is a VEX document as read when the configuration was loaded.
type VEXFile struct {
	Path string
	Data []byte
}

// maxVEXFile bounds one VEX document.
const maxVEXFile = 16 << 20

// Documents returns the VEX files as read when the configuration was
// loaded, in path order.
func (v *VEX) Documents() []VEXFile { return v.docs }

func (a *Attestations) finish(field string, r *Rule) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if r.Signatures == nil {
		bad("attestations", "needs signatures.identities: attestations are trusted when signed by one of them")
	}
	if p := a.Provenance; p != nil {
		if len(p.BuilderIDs) == 0 {
			bad("attestations.provenance.builderIds", "required: the builders you trust")
		}
		for i, b := range p.BuilderIDs {
			if err := checkPattern(b); err != nil {
				bad(fmt.Sprintf("attestations.provenance.builderIds[%d]", i), "%q %v", b, err)
			}
		}
		for i, b := range p.SourceRepositories {
			if err := checkPattern(b); err != nil {
				bad(fmt.Sprintf("attestations.provenance.sourceRepositories[%d]", i), "%q %v", b, err)
			}
		}
	}
	if s := a.VulnerabilityScan; s != nil && s.MaxAge <= 0 {
		bad("attestations.vulnerabilityScan.maxAge", "required and positive, e.g. 168h")
	}
	if a.Provenance == nil && !a.SBOM && a.VulnerabilityScan == nil {
		bad("attestations", "requires nothing: set provenance, sbom or vulnerabilityScan")
	}
	return errs
}

func (v *VEX) finish(field string, r *Rule) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if v.Attestations && r.Signatures == nil {
		bad("vex.attestations", "needs signatures.identities: a VEX attestation counts only when signed by one of them")
	}
	if len(v.Files) == 0 && len(v.Repositories) == 0 && !v.Attestations {
		bad("vex", "set files, repositories or attestations")
	}
	setDur(&v.RefreshInterval, time.Hour)
	if v.RefreshInterval < Duration(time.Minute) {
		bad("vex.refreshInterval", "must be 1m or more")
	}
	for i, ref := range v.Repositories {
		host, rest, ok := strings.Cut(ref, "/")
		if !ok || ValidHost(host) != nil || rest == "" || strings.Contains(ref, "@") && !strings.Contains(ref, "@sha256:") {
			bad(fmt.Sprintf("vex.repositories[%d]", i), "%q is not host/repository:tag or host/repository@sha256:...", ref)
		}
	}
	v.docs = nil
	for i, f := range v.Files {
		docs, err := readVEXFiles(f)
		if err != nil {
			bad(fmt.Sprintf("vex.files[%d]", i), "%v", err)
		}
		v.docs = append(v.docs, docs...)
	}
	return errs
}

// readVEXFiles reads a VEX file, or the *.json files of a directory.
func readVEXFiles(path string) ([]VEXFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	paths := []string{path}
	if fi.IsDir() {
		if paths, err = filepath.Glob(filepath.Join(path, "*.json")); err != nil {
			return nil, err
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("%s holds no *.json file", path)
		}
		sort.Strings(paths)
	}
	var out []VEXFile
	for _, p := range paths {
		b, err := readBounded(p, maxVEXFile, "MiB: not a VEX document")
		if err != nil {
			return nil, err
		}
		out = append(out, VEXFile{Path: p, Data: b})
	}
	return out, nil
}

// checkPattern refuses a builder or source pattern that could match what
// its author did not mean: its scheme and host must be literal, and a "*"
// must start a path element or a ref ("https://github.com/our-org*" would
// also match our-org-evil).
func checkPattern(p string) error {
	i := strings.IndexByte(p, '*')
	if strings.TrimSpace(p) == "" {
		return fmt.Errorf("is empty")
	}
	if i < 0 {
		return nil
	}
	prefix := p[:i]
	s := strings.Index(prefix, "://")
	if s < 0 || !strings.Contains(prefix[s+3:], "/") {
		return fmt.Errorf("must name the scheme and host literally before any *")
	}
	if !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, "@") {
		return fmt.Errorf("has a * that does not follow a / or @: it would match longer names too (our-org* matches our-org-evil)")
	}
	return nil
}
