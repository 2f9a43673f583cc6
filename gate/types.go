// Package gate decides whether an image may be served: it scans each newly
// seen image manifest (through a Scanner, Trivy in production), verifies its
// signatures (through a SignatureVerifier), applies the policy rule of its
// repository and answers a verdict. It owns the decision and what lives in
// memory around it: single-flight scan jobs, the hot verdict memo, the
// back-off after failed scans, which index lists which platform manifest,
// and Reevaluate's run over stored inventories. What it writes down
// (verdicts keyed by manifest digest, repository, policy hash and DB
// version; reports; image records; the blob index; denials; pulls) lives
// in gate/records, on a storage.MetaStore the caller opens. It does not
// import Trivy itself, so that the proxy can depend on it without doing so.
package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate/records"
)

// The records the gate's contracts speak of, defined with the rest of what
// is persisted in gate/records and named here so that a Scanner or a
// SignatureVerifier needs only this package.
type (
	// Vuln is one vulnerability of one installed package.
	Vuln = records.Vuln
	// Report is a scan's result.
	Report = records.Report
	// SignatureResult is the outcome of a signature check.
	SignatureResult = records.SignatureResult
	// Verdict is the gate's judgement of one manifest.
	Verdict = records.Verdict
)

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

// Subject is a manifest about to be served, as the content layer (package
// pull) returned it: verified against its digest and validated (a known
// media type, no ambiguous index/image document, descriptors that point
// somewhere). The gate judges what it is given and does not validate again.
type Subject struct {
	Upstream  string
	Repo      string
	Tag       string // when requested by tag
	Digest    v1.Hash
	MediaType types.MediaType
	Manifest  []byte
	Client    string // remote address, for the denial log
	// Pull marks a GET (the manifest body is served): counted as a pull
	// of the image. A HEAD resolves a tag and is not counted.
	Pull bool
	// Ahead marks a judgement made before any client asked (gate.watch,
	// package warm): its denial is no refused pull, so it is neither
	// logged as a denial nor sent as a pull.denied event (the verdict is
	// recorded as always).
	Ahead bool
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
	// ReasonAttestation: a required attestation is missing or fails.
	ReasonAttestation = "attestation"
	// ReasonStaleDB: the vulnerability DB is older than gate.db.maxAge
	// under a rule whose staleDB is deny.
	ReasonStaleDB = "stale_db"
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
