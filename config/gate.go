package config

import (
	"fmt"
	"path"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Gate configures the security gate in front of every manifest.
type Gate struct {
	// MaxWait bounds how long a request waits for a verdict. A scan that
	// takes longer goes on in the background and the request gets a
	// retryable 503 with Retry-After. Default 20s (under containerd 2.3's
	// 30 s response-header timeout).
	MaxWait Duration `yaml:"maxWait"`
	// Blobs says which blobs are served: "admitted" (default) serves a blob
	// only when an admitted manifest references it, so the layers of a
	// denied image cannot be fetched by digest; "any" serves every blob.
	Blobs string `yaml:"blobs"`
	// PassArtifactTypes are config media types / artifact types of
	// non-image artifacts (signatures, SBOMs, attestations, Helm charts)
	// that are served without a scan. They never exempt a manifest with an
	// image layer (OCI or Docker layer media type): that is an image,
	// whatever it is labelled. Part of every rule's hash. Default: see
	// DefaultPassArtifactTypes.
	PassArtifactTypes []string `yaml:"passArtifactTypes"`
	// ScanConcurrency bounds concurrent scans. Default 2.
	ScanConcurrency int `yaml:"scanConcurrency"`
	// ScanLimits bound what one layer may cost a scan. A layer past a limit
	// fails the scan as soon as it is read past it, and the image is denied
	// (fail closed) unless its rule is in audit mode.
	ScanLimits ScanLimits `yaml:"scanLimits"`
	// DB configures the vulnerability database.
	DB VulnDB `yaml:"db"`
	// Policy holds the rules.
	Policy Policy `yaml:"policy"`
	// Denials configures the record of refused pulls (the console's
	// Denials page and GET /api/v1/denials), kept in the verdict database
	// so that it survives a restart.
	Denials Denials `yaml:"denials"`
	// Exceptions are scoped vulnerability exceptions with an owner and an
	// expiry, in their own file or directory.
	Exceptions Exceptions `yaml:"exceptions"`
	// Watch lists repositories whose new tags are fetched and judged
	// before any client asks.
	Watch []Watch `yaml:"watch"`
}

// Denials bounds the record of refused pulls. Denials are queued in memory
// and written in batches, so a crash loses at most the last flushInterval
// of them; a graceful shutdown loses none.
type Denials struct {
	// Keep is how many of the latest denials are kept; older ones are
	// deleted as new ones are written. Unset or 0 means the default, 1000;
	// at most 100000 (the API returns them all at once).
	Keep int `yaml:"keep"`
	// MaxAge, when set, also deletes denials older than this, e.g. "720h".
	// Unset or 0 keeps them until Keep pushes them out.
	MaxAge Duration `yaml:"maxAge"`
	// FlushInterval is how often queued denials are written to the
	// database (at once when 100 are queued). Unset or 0 means the
	// default, 1s; at most 1m.
	FlushInterval Duration `yaml:"flushInterval"`
}

// Defaults and bounds of Denials.
const (
	DefaultDenialsKeep          = 1000
	MaxDenialsKeep              = 100_000
	DefaultDenialsFlushInterval = time.Second
)

// ScanLimits bound the layers a scan reads, against decompression bombs
// (a small compressed blob that unpacks to terabytes or to millions of
// files). The defaults are far above real images, the largest machine
// learning and CUDA images included; unset or 0 means the default.
type ScanLimits struct {
	// MaxLayerSize is the largest uncompressed layer a scan reads, e.g.
	// "16GiB". It bounds both the layer's tar stream and the sum of the
	// file sizes its tar headers declare, so a sparse file counts at its
	// full size. Default 16GiB.
	MaxLayerSize ByteSize `yaml:"maxLayerSize"`
	// MaxLayerFiles is the largest number of tar entries (files,
	// directories, links) of one layer. Default 1000000.
	MaxLayerFiles int64 `yaml:"maxLayerFiles"`
	// MaxImageSize is the most uncompressed bytes one scan reads over all
	// the layers of an image, e.g. "128GiB" (layers analysed before, by
	// this or another image, are not read again and do not count). It
	// bounds an image of many bombs each under maxLayerSize. Default
	// 128GiB.
	MaxImageSize ByteSize `yaml:"maxImageSize"`
}

// Defaults of ScanLimits.
const (
	DefaultMaxLayerSize  = 16 << 30
	DefaultMaxLayerFiles = 1_000_000
	DefaultMaxImageSize  = 128 << 30
)

// VulnDB configures where the Trivy vulnerability DB comes from.
type VulnDB struct {
	// Repository is the OCI artifact holding the DB, fetched through the
	// matching upstream. Default "ghcr.io/aquasecurity/trivy-db:2".
	Repository string `yaml:"repository"`
	// UpdateInterval is how often `serve` checks for a new DB. "0s"
	// disables updates (air-gapped: use `gatehouse db import`). Default 6h.
	UpdateInterval *Duration `yaml:"updateInterval"`
	// MaxAge, when set, is how old (since it was built) the DB may be for
	// new verdicts: past it, each rule's staleDB decides (deny, the
	// default, or warn). 0: no limit.
	MaxAge Duration `yaml:"maxAge,omitempty"`
}

// Policy is the ordered list of rules; the most specific matching rule
// applies, and the rule with no match constraints is the default.
type Policy struct {
	Rules []Rule `yaml:"rules"`
	// BuiltIn is set by Finish when no rules were written and Rules is
	// the built-in DefaultRule alone.
	BuiltIn bool `yaml:"-" json:"-"`
}

// Rule is one policy rule.
type Rule struct {
	// Name identifies the rule in denials, logs and metrics. Required.
	Name string `yaml:"name"`
	// Upstreams the rule applies to (names as configured). Empty: all.
	Upstreams []string `yaml:"upstreams"`
	// Repositories are globs (path.Match, "*" does not cross "/"; a
	// trailing "/**" matches everything below) of repository names at the
	// upstream, e.g. "library/*" or "myorg/**". Empty: all.
	Repositories []string `yaml:"repositories"`
	// Mode is "enforce" (deny), "audit" (log and count, serve) or "off"
	// (no scan). Default "enforce".
	Mode string `yaml:"mode"`
	// Block lists the severities that deny: CRITICAL, HIGH, MEDIUM, LOW,
	// UNKNOWN. Default [CRITICAL].
	Block []string `yaml:"block"`
	// IgnoreUnfixed ignores vulnerabilities that have no fixed version.
	IgnoreUnfixed bool `yaml:"ignoreUnfixed"`
	// Allowlist entries are ignored until they expire.
	Allowlist []Allow `yaml:"allowlist"`
	// Signatures, when set, verifies cosign signatures of the images.
	Signatures *Signatures `yaml:"signatures,omitempty"`
	// Vulnerabilities is "on" (the default: images are scanned, and a
	// vulnerability DB is needed) or "off": the rule checks signatures
	// only, scans nothing and needs no DB. Off needs signatures.
	// (Empty in the JSON a rule's hash is made of when on, so that rules
	// written before this field keep their hash.)
	Vulnerabilities string `yaml:"vulnerabilities,omitempty" json:",omitempty"`
	// Attestations, when set, are required of every image (with the
	// signatures' identities). Empty in the JSON of a rule without them,
	// like VEX, so that the rule's hash does not change.
	Attestations *Attestations `yaml:"attestations,omitempty" json:",omitempty"`
	// VEX, when set, are the VEX statements the rule accepts.
	VEX *VEX `yaml:"vex,omitempty" json:",omitempty"`
	// StaleDB is what a new verdict does when the vulnerability DB is older
	// than gate.db.maxAge: "deny" (the default) or "warn" (admit, with the
	// warning in the verdict).
	StaleDB string `yaml:"staleDB,omitempty" json:",omitempty"`
}

// Values of Rule.StaleDB.
const (
	StaleDBDeny = "deny"
	StaleDBWarn = "warn"
)

// Scans reports whether the rule scans images for vulnerabilities (and so
// needs a vulnerability DB): not when it is off, nor when it checks
// signatures only.
func (r *Rule) Scans() bool { return r.Mode != ModeOff && r.Vulnerabilities != VulnerabilitiesOff }

// Values of Rule.Vulnerabilities.
const (
	VulnerabilitiesOn  = "on"
	VulnerabilitiesOff = "off"
)

// Allow exempts one vulnerability id from a rule until a date.
type Allow struct {
	ID      string `yaml:"id"`
	Reason  string `yaml:"reason"`
	Expires Date   `yaml:"expires"`
}

// Modes of a rule.
const (
	ModeEnforce = "enforce"
	ModeAudit   = "audit"
	ModeOff     = "off"
)

// Severities in order, worst first.
var Severities = []string{"CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"}

// DefaultPassArtifactTypes are the non-image artifacts served unscanned.
var DefaultPassArtifactTypes = []string{
	"application/vnd.dev.cosign.simplesigning.v1+json",     // cosign signatures
	"application/vnd.dev.sigstore.bundle.v0.3+json",        // sigstore bundles
	"application/vnd.dsse.envelope.v1+json",                // attestations
	"application/vnd.in-toto+json",                         // attestations
	"application/spdx+json",                                // SBOMs
	"application/vnd.cyclonedx+json",                       // SBOMs
	"application/vnd.cncf.helm.config.v1+json",             // Helm charts
	"application/vnd.oci.empty.v1+json",                    // artifacts with an empty config
	"application/vnd.cncf.notary.signature",                // notation signatures
	"application/vnd.aquasec.trivy.config.v1+json",         // the Trivy DB itself
	"application/vnd.unknown.config.v1+json",               // oras default
	"application/vnd.dev.cosign.artifact.sig.v1+json",      // cosign attached signatures
	"application/vnd.dev.sigstore.verificationmaterial.v1", // cosign v3
}

// DefaultRule is the policy when none is configured: deny images with a
// known CRITICAL vulnerability that has a fix.
func DefaultRule() Rule {
	return Rule{Name: "default", Mode: ModeEnforce, Block: []string{"CRITICAL"}, IgnoreUnfixed: true}
}

func (g *Gate) finish() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: gate.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	setDur(&g.MaxWait, 20*time.Second)
	if g.MaxWait < 0 {
		bad("maxWait", "must not be negative")
	}
	switch g.Blobs {
	case "":
		g.Blobs = "admitted"
	case "admitted", "any":
	default:
		bad("blobs", "%q is not admitted or any", g.Blobs)
	}
	if g.PassArtifactTypes == nil {
		g.PassArtifactTypes = DefaultPassArtifactTypes
	}
	if g.ScanConcurrency == 0 {
		g.ScanConcurrency = 2
	} else if g.ScanConcurrency < 0 || g.ScanConcurrency > 64 {
		bad("scanConcurrency", "must be between 1 and 64")
	}
	switch {
	case g.ScanLimits.MaxLayerSize == 0:
		g.ScanLimits.MaxLayerSize = DefaultMaxLayerSize
	case g.ScanLimits.MaxLayerSize < 0:
		bad("scanLimits.maxLayerSize", "must not be negative")
	}
	switch {
	case g.ScanLimits.MaxLayerFiles == 0:
		g.ScanLimits.MaxLayerFiles = DefaultMaxLayerFiles
	case g.ScanLimits.MaxLayerFiles < 0:
		bad("scanLimits.maxLayerFiles", "must not be negative")
	}
	switch {
	case g.ScanLimits.MaxImageSize == 0:
		g.ScanLimits.MaxImageSize = DefaultMaxImageSize
	case g.ScanLimits.MaxImageSize < 0:
		bad("scanLimits.maxImageSize", "must not be negative")
	}
	if g.DB.Repository == "" {
		g.DB.Repository = "ghcr.io/aquasecurity/trivy-db:2"
	}
	if host, rest, ok := strings.Cut(g.DB.Repository, "/"); !ok || ValidHost(host) != nil || rest == "" {
		bad("db.repository", "%q is not host/repository:tag", g.DB.Repository)
	}
	if g.DB.UpdateInterval == nil {
		d := Duration(6 * time.Hour)
		g.DB.UpdateInterval = &d
	} else if *g.DB.UpdateInterval < 0 {
		bad("db.updateInterval", "must not be negative")
	}
	if g.DB.MaxAge < 0 {
		bad("db.maxAge", "must not be negative (0: no limit)")
	} else if g.DB.MaxAge > 0 && *g.DB.UpdateInterval > 0 && g.DB.MaxAge < *g.DB.UpdateInterval {
		bad("db.maxAge", "%s is shorter than db.updateInterval %s: the DB would be stale between updates", g.DB.MaxAge, *g.DB.UpdateInterval)
	}
	switch {
	case g.Denials.Keep == 0:
		g.Denials.Keep = DefaultDenialsKeep
	case g.Denials.Keep < 0 || g.Denials.Keep > MaxDenialsKeep:
		bad("denials.keep", "must be between 1 and %d, not %d", MaxDenialsKeep, g.Denials.Keep)
	}
	if g.Denials.MaxAge < 0 {
		bad("denials.maxAge", "must not be negative (0 keeps denials until denials.keep pushes them out)")
	}
	setDur(&g.Denials.FlushInterval, DefaultDenialsFlushInterval)
	if g.Denials.FlushInterval < 0 || g.Denials.FlushInterval.D() > time.Minute {
		bad("denials.flushInterval", "must be between 0 (the default, 1s) and 1m")
	}
	if len(g.Policy.Rules) == 0 {
		g.Policy.Rules = []Rule{DefaultRule()}
		g.Policy.BuiltIn = true
	}
	names := map[string]int{}
	defaults := 0
	for i := range g.Policy.Rules {
		r := &g.Policy.Rules[i]
		field := fmt.Sprintf("policy.rules[%d]", i)
		if r.Name == "" {
			bad(field+".name", "required")
		} else if j, dup := names[r.Name]; dup {
			bad(field+".name", "%q is already the name of rules[%d]", r.Name, j)
		}
		names[r.Name] = i
		switch r.Mode {
		case "":
			r.Mode = ModeEnforce
		case ModeEnforce, ModeAudit, ModeOff:
		default:
			bad(field+".mode", "%q is not enforce, audit or off", r.Mode)
		}
		switch r.StaleDB {
		case "", StaleDBDeny, StaleDBWarn:
		default:
			bad(field+".staleDB", "%q is not deny or warn", r.StaleDB)
		}
		switch r.Vulnerabilities {
		case VulnerabilitiesOn:
			r.Vulnerabilities = "" // the default, spelled out
		case "":
		case VulnerabilitiesOff:
			if (r.Signatures == nil || !r.Signatures.Required) && r.Attestations == nil && r.Mode != ModeOff {
				bad(field+".vulnerabilities", "off checks nothing unless signatures.required is true or attestations are required: require them, or use mode: off")
			}
			if r.VEX != nil {
				bad(field+".vex", "applies to vulnerabilities, which this rule does not scan (vulnerabilities: off)")
			}
		default:
			bad(field+".vulnerabilities", "%q is not on or off", r.Vulnerabilities)
		}
		if r.Block == nil {
			r.Block = []string{"CRITICAL"}
		}
		for j, s := range r.Block {
			up := strings.ToUpper(s)
			if !validSeverity(up) {
				bad(fmt.Sprintf("%s.block[%d]", field, j), "%q is not one of %s", s, strings.Join(Severities, ", "))
			}
			r.Block[j] = up
		}
		for j, rp := range r.Repositories {
			if _, err := path.Match(strings.TrimSuffix(rp, "/**"), ""); err != nil || rp == "" {
				bad(fmt.Sprintf("%s.repositories[%d]", field, j), "%q is not a valid glob", rp)
			}
		}
		if len(r.Upstreams) == 0 && len(r.Repositories) == 0 {
			defaults++
			if i != len(g.Policy.Rules)-1 {
				bad(field, "a rule without upstreams or repositories is the default rule and must come last")
			}
		}
		if r.Signatures != nil {
			errs = append(errs, r.Signatures.finish(field+".signatures")...)
		}
		if r.Attestations != nil {
			errs = append(errs, r.Attestations.finish(field, r)...)
		}
		if r.VEX != nil {
			errs = append(errs, r.VEX.finish(field, r)...)
		}
		for j, a := range r.Allowlist {
			af := fmt.Sprintf("%s.allowlist[%d]", field, j)
			if a.ID == "" {
				bad(af+".id", "required")
			}
			if strings.TrimSpace(a.Reason) == "" {
				bad(af+".reason", "required: say why %s is accepted", a.ID)
			}
			if a.Expires.IsZero() {
				bad(af+".expires", "required (YYYY-MM-DD): an exception must end")
			}
		}
	}
	if defaults > 1 {
		bad("policy.rules", "only one rule may lack upstreams and repositories")
	}
	return errs
}

func (c *Config) finishGate() []error {
	errs := c.Gate.finish()
	errs = append(errs, c.Gate.Exceptions.finish()...)
	errs = append(errs, finishWatch(c.Gate.Watch, c)...)
	for i, r := range c.Gate.Policy.Rules {
		for j, u := range r.Upstreams {
			up := c.Upstream(u)
			if up == nil {
				errs = append(errs, fmt.Errorf("config: gate.policy.rules[%d].upstreams[%d]: %q is not a configured upstream", i, j, u))
				continue
			}
			// Requests carry the upstream's name, never an alias: a rule
			// written with an alias (or another case) must still match.
			r.Upstreams[j] = up.Name
		}
		if r.VEX != nil {
			for j, ref := range r.VEX.Repositories {
				if host, _, _ := strings.Cut(ref, "/"); c.Upstream(host) == nil {
					errs = append(errs, fmt.Errorf("config: gate.policy.rules[%d].vex.repositories[%d]: %q is not a configured upstream", i, j, host))
				}
			}
		}
	}
	return errs
}

func validSeverity(s string) bool {
	for _, v := range Severities {
		if s == v {
			return true
		}
	}
	return false
}

// Date is a calendar day written as YYYY-MM-DD; it ends at 24:00 UTC.
type Date struct{ time.Time }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Date) UnmarshalYAML(n *yaml.Node) error {
	t, err := time.Parse("2006-01-02", n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a date such as 2027-01-31", n.Line, n.Value)
	}
	d.Time = t
	return nil
}

// MarshalYAML writes the date as YYYY-MM-DD.
func (d Date) MarshalYAML() (any, error) { return d.Format("2006-01-02"), nil }

// End returns the first instant after the date.
func (d Date) End() time.Time { return d.Time.Add(24 * time.Hour) }
