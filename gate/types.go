// Package gate decides whether an image may be served: it scans each newly
// seen image manifest (through a Scanner, Trivy in production), applies the
// policy rule of its repository, and stores the verdict keyed by manifest
// digest, policy hash and vulnerability DB version. It does not import
// Trivy itself, so that the proxy can depend on it without doing so.
package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// Vuln is one vulnerability of one installed package.
type Vuln struct {
	ID string `json:"id"`
	// Severity is CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN.
	Severity string `json:"severity"`
	// SeveritySource is the data source the severity was taken from, e.g.
	// "nvd", "debian", "ghsa"; empty when there was none.
	SeveritySource string `json:"severitySource,omitempty"`
	PkgName        string `json:"pkgName"`
	// PkgType is the package ecosystem: an OS family ("alpine", "debian",
	// ...) or a language type ("npm", "gobinary", "pip", ...).
	PkgType string `json:"pkgType"`
	// PkgPath is the file a language package was found in, when it has its
	// own (a Go binary, a jar, a node_modules package.json).
	PkgPath   string `json:"pkgPath,omitempty"`
	Installed string `json:"installed"`
	// Fixed lists the versions that fix it, comma-separated; empty when no
	// fix exists.
	Fixed string `json:"fixed,omitempty"`
	// Status is fixed, affected, will_not_fix, fix_deferred, end_of_life,
	// under_investigation, not_affected or unknown.
	Status      string   `json:"status"`
	Title       string   `json:"title,omitempty"`
	Description string   `json:"description,omitempty"`
	PrimaryURL  string   `json:"primaryURL,omitempty"`
	References  []string `json:"references,omitempty"`
	// Target is where the package was found: "<image> (alpine 3.22.1)" for
	// OS packages, the lock file path, or a language name.
	Target string `json:"target"`
}

// Report is a scan's result.
type Report struct {
	// Inventory is the scanner's package inventory, opaque to the gate and
	// kept so that a new DB can be applied without the layers.
	Inventory json.RawMessage `json:"inventory"`
	// Vulns are sorted by severity, worst first.
	Vulns     []Vuln `json:"vulns"`
	DBVersion string `json:"dbVersion"`
	// Warnings say where detection was necessarily partial (an OS without
	// advisories, or past its end of support).
	Warnings []string `json:"warnings,omitempty"`
	// Layers and LayersAnalysed count the image's layers and those this
	// scan analysed (the others came from the layer cache).
	Layers         int `json:"layers,omitempty"`
	LayersAnalysed int `json:"layersAnalysed,omitempty"`
}

// Scanner finds vulnerabilities.
type Scanner interface {
	// Scan analyses an image's layers and detects vulnerabilities with
	// the current DB. An error must never be an empty report.
	Scan(ctx context.Context, img v1.Image, name string) (*Report, error)
	// Rescan detects again from a stored inventory with the current DB.
	Rescan(ctx context.Context, inventory json.RawMessage) (*Report, error)
	// DBVersion identifies the current DB release; "" when none is loaded.
	DBVersion() string
}

// SignatureResult is the outcome of a signature check.
type SignatureResult struct {
	Verified bool `json:"verified"`
	// Format is "legacy-tag" (sha256-<hex>.sig) or "bundle" (an OCI 1.1
	// referrer carrying a sigstore bundle) when verified.
	Format string `json:"format,omitempty"`
	// Identity names the signer: a key fingerprint or issuer and subject.
	Identity string `json:"identity,omitempty"`
	// Digest is the manifest the accepted signature covers (the image's
	// own, or its index's).
	Digest string `json:"digest,omitempty"`
	// Reason says why not verified: no signature found, signed by an
	// untrusted identity, signature does not match the image digest, ...
	Reason     string    `json:"reason,omitempty"`
	Detail     string    `json:"detail,omitempty"`
	VerifiedAt time.Time `json:"verifiedAt"`
}

// SignatureVerifier checks cosign signatures (gate/sign in production).
type SignatureVerifier interface {
	// Verify checks the signatures of upstream/repo@dgst against the
	// signature policy of the named rule; index is the digest of an image
	// index listing the manifest, when one was served. A failure to fetch
	// or verify is a result that is not verified, or an error; never a
	// verified result.
	Verify(ctx context.Context, upstream, repo string, dgst v1.Hash, rule string, index *v1.Hash) (*SignatureResult, error)
}

// ErrNoDB is returned (fail closed) when no vulnerability DB is loaded.
var ErrNoDB = errors.New("no vulnerability database loaded: run `gatehouse db update` or `gatehouse db import`")

// Subject is a manifest about to be served.
type Subject struct {
	Upstream  string
	Repo      string
	Tag       string // when requested by tag
	Digest    v1.Hash
	MediaType string
	Manifest  []byte
	Client    string // remote address, for the denial log
	// Pull marks a GET (the manifest body is served): counted as a pull
	// of the image. A HEAD resolves a tag and is not counted.
	Pull bool
}

// Verdict is the gate's judgement of one manifest.
type Verdict struct {
	Digest     string           `json:"digest"`
	Upstream   string           `json:"upstream"`
	Repo       string           `json:"repository"`
	Admitted   bool             `json:"admitted"`
	Kind       string           `json:"kind"` // image, index, artifact
	Rule       string           `json:"rule,omitempty"`
	Reason     string           `json:"reason"`
	Message    string           `json:"message"`
	Decision   *policy.Decision `json:"decision,omitempty"`
	Signature  *SignatureResult `json:"signature,omitempty"`
	PolicyHash string           `json:"policyHash,omitempty"`
	DBVersion  string           `json:"dbVersion,omitempty"`
	ScannedAt  time.Time        `json:"scannedAt,omitzero"`
	JudgedAt   time.Time        `json:"judgedAt"`
}

// Reasons of a verdict, used as a low-cardinality label too.
const (
	ReasonClean      = "clean"
	ReasonVulnerable = "vulnerable"
	ReasonAudit      = "audit"
	ReasonOff        = "off"
	ReasonArtifact   = "artifact"
	ReasonIndex      = "index"
	ReasonScanError  = "scan_error"
	ReasonScanLimit  = "scan_limit"
	ReasonUnsigned   = "signature"
)

// Pending is returned when a verdict was not ready within gate.maxWait:
// the scan goes on and the client should retry after RetryAfter.
type Pending struct {
	RetryAfter time.Duration
}

func (p *Pending) Error() string {
	return "gatehouse is scanning this image; retry in " + p.RetryAfter.String()
}

// ScanError is a failed scan under a rule in enforce mode: no image.
type ScanError struct {
	Rule string
	Err  error
	// RetryAfter, when set, is when the scan will be tried again (the
	// image's last scans failed; see BackoffError).
	RetryAfter time.Duration
}

func (e *ScanError) Error() string {
	return "image not served (fail closed under rule \"" + e.Rule + "\"): " + e.Err.Error()
}

func (e *ScanError) Unwrap() error { return e.Err }

// LayerError is a scan stopped by a layer whose content is not what the
// image config declares: its uncompressed digest (Actual) is not the
// diffID (Layer). No runtime unpacks such an image.
type LayerError struct {
	Layer  string // the declared diffID
	Actual string // the digest of the uncompressed content
}

func (e *LayerError) Error() string {
	return fmt.Sprintf("layer %s: its content is %s, not the diffID its image config declares", e.Layer, e.Actual)
}

// Limits named by a LimitError: the fields of gate.scanLimits. They are the
// label values of gatehouse_scan_limits_exceeded_total.
const (
	LimitLayerSize  = "maxLayerSize"
	LimitLayerFiles = "maxLayerFiles"
	LimitImageSize  = "maxImageSize"
)

// LimitError is a scan stopped because a layer broke one of gate.scanLimits
// while it was read: a decompression bomb, or a layer too large to analyse.
// The image is denied (fail closed) unless its rule is in audit mode.
type LimitError struct {
	// Limit is LimitLayerSize, LimitLayerFiles or LimitImageSize.
	Limit string
	// Layer is the diffID of the layer being read when the limit broke.
	Layer string
	// Max is the limit's value: bytes or tar entries.
	Max int64
}

func (e *LimitError) Error() string {
	if e.Limit == LimitImageSize {
		return fmt.Sprintf("image exceeds gate.scanLimits.%s (%d) at layer %s", e.Limit, e.Max, e.Layer)
	}
	return fmt.Sprintf("layer %s exceeds gate.scanLimits.%s (%d)", e.Layer, e.Limit, e.Max)
}
