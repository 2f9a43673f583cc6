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
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// Vuln is one vulnerability found in one package of an image.
type Vuln struct {
	ID          string   `json:"id"`
	Severity    string   `json:"severity"`
	PkgName     string   `json:"pkgName"`
	PkgType     string   `json:"pkgType,omitempty"`
	Installed   string   `json:"installed"`
	Fixed       string   `json:"fixed,omitempty"`
	Status      string   `json:"status,omitempty"`
	Title       string   `json:"title,omitempty"`
	Description string   `json:"description,omitempty"`
	References  []string `json:"references,omitempty"`
	Target      string   `json:"target,omitempty"`
}

// Report is a scan's result.
type Report struct {
	// Inventory is the scanner's package inventory, opaque to the gate and
	// kept so that a new DB can be applied without the layers.
	Inventory json.RawMessage `json:"inventory"`
	Vulns     []Vuln          `json:"vulns"`
	DBVersion string          `json:"dbVersion"`
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
}

// Verdict is the gate's judgement of one manifest.
type Verdict struct {
	Digest     string           `json:"digest"`
	Upstream   string           `json:"upstream"`
	Repo       string           `json:"repository"`
	Admitted   bool             `json:"admitted"`
	Kind       string           `json:"kind"` // image, index, artifact
	Reason     string           `json:"reason"`
	Message    string           `json:"message"`
	Decision   *policy.Decision `json:"decision,omitempty"`
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
}

func (e *ScanError) Error() string {
	return "image not served (fail closed under rule \"" + e.Rule + "\"): " + e.Err.Error()
}

func (e *ScanError) Unwrap() error { return e.Err }
