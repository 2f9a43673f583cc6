package records

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// ErrNotFound is returned for a digest the gate has not judged.
var ErrNotFound = errors.New("not found")

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
	PkgPath string `json:"pkgPath,omitempty"`
	// PURL is the package URL Trivy gave the installed package, e.g.
	// "pkg:apk/alpine/busybox@1.37.0-r18?arch=x86_64&distro=3.22.1"; VEX
	// statements name packages by it. Empty in reports stored before it was
	// recorded, and for the few package types Trivy has no PURL for.
	PURL      string `json:"purl,omitempty"`
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

// StoredReport is a scan report with the time it was made. (Reports of
// earlier versions also held one signature result per digest, bound to
// nothing; it is ignored.)
type StoredReport struct {
	Report
	ScannedAt time.Time `json:"scannedAt"`
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

// Verdict is the gate's judgement of one manifest.
type Verdict struct {
	Digest    string           `json:"digest"`
	Upstream  string           `json:"upstream"`
	Repo      string           `json:"repository"`
	Admitted  bool             `json:"admitted"`
	Kind      string           `json:"kind"` // image, index, artifact
	Rule      string           `json:"rule,omitempty"`
	Reason    string           `json:"reason"`
	Message   string           `json:"message"`
	Decision  *policy.Decision `json:"decision,omitempty"`
	Signature *SignatureResult `json:"signature,omitempty"`
	// Attestations are the rule's required attestations, checked.
	Attestations []AttestationCheck `json:"attestations,omitempty"`
	// Suppressed are the vulnerabilities VEX statements removed.
	Suppressed []Suppression `json:"suppressed,omitempty"`
	// Warnings are what the verdict admitted despite, e.g. a vulnerability
	// DB older than gate.db.maxAge under a rule whose staleDB is warn.
	Warnings   []string  `json:"warnings,omitempty"`
	PolicyHash string    `json:"policyHash,omitempty"`
	DBVersion  string    `json:"dbVersion,omitempty"`
	ScannedAt  time.Time `json:"scannedAt,omitzero"`
	JudgedAt   time.Time `json:"judgedAt"`
}

// ImageRecord describes a judged manifest.
type ImageRecord struct {
	Digest    string          `json:"digest"`
	Upstream  string          `json:"upstream"`
	Repo      string          `json:"repository"`
	Tags      []string        `json:"tags"`
	MediaType types.MediaType `json:"mediaType"`
	Kind      string          `json:"kind"`
	// ArtifactType is the manifest's artifactType, else its config media
	// type: what kind of artifact it is (image, Helm chart, signature, ...).
	ArtifactType string `json:"artifactType,omitempty"`
	// Platform is os/architecture[/variant] of an image, from the index
	// that listed it or its config; empty when unknown.
	Platform  string     `json:"platform,omitempty"`
	Config    string     `json:"config,omitempty"`
	Layers    []LayerRef `json:"layers,omitempty"`
	FirstSeen time.Time  `json:"firstSeen"`
	// LastPulled is the time of the latest GET of the manifest and Pulls
	// counts them (HEADs are not pulls); both are written in batches, see
	// FlushPulls.
	LastPulled time.Time `json:"lastPulled,omitzero"`
	Pulls      int64     `json:"pulls"`
	Latest     *Verdict  `json:"verdict,omitempty"`
}

// LayerRef is a layer of an image.
type LayerRef struct {
	Digest    string          `json:"digest"`
	Size      int64           `json:"size"`
	MediaType types.MediaType `json:"mediaType"`
	// DiffID is the digest of the uncompressed layer the config declares.
	DiffID string `json:"diffID,omitempty"`
}

// Denial is one refused pull.
type Denial struct {
	Time     time.Time `json:"time"`
	Client   string    `json:"client,omitempty"`
	Upstream string    `json:"upstream"`
	Repo     string    `json:"repository"`
	Tag      string    `json:"tag,omitempty"`
	Digest   string    `json:"digest"`
	Rule     string    `json:"rule"`
	Message  string    `json:"message"`
}

// Manifest is a judged manifest as it is recorded: where it was served
// from, what it is, and the blobs it lists.
type Manifest struct {
	Upstream  string
	Repo      string
	Tag       string // when requested by tag
	Digest    v1.Hash
	MediaType types.MediaType
	Kind      string // image, artifact (a verdict's kind wins)
	// ArtifactType is the artifactType, else the config media type.
	ArtifactType string
	// Platform is os/architecture[/variant], when known.
	Platform string
	Config   v1.Descriptor
	Layers   []v1.Descriptor
	// DiffIDs are the config's rootfs.diff_ids, one per layer; nil when
	// not read.
	DiffIDs []v1.Hash
}

// Manifest rebuilds what a record says of its manifest (no tag): for a
// judgement made again from the record, without the manifest.
func (rec *ImageRecord) Manifest() (*Manifest, error) {
	dgst, err := v1.NewHash(rec.Digest)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Upstream: rec.Upstream, Repo: rec.Repo, Digest: dgst, MediaType: rec.MediaType, Kind: rec.Kind,
		ArtifactType: rec.ArtifactType, Platform: rec.Platform}
	if rec.Config != "" {
		m.Config.Digest, _ = v1.NewHash(rec.Config)
	}
	for _, l := range rec.Layers {
		h, err := v1.NewHash(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("stored layer digest: %w", err)
		}
		m.Layers = append(m.Layers, v1.Descriptor{Digest: h, Size: l.Size})
		if d, err := v1.NewHash(l.DiffID); err == nil {
			m.DiffIDs = append(m.DiffIDs, d)
		}
	}
	if len(m.DiffIDs) != len(m.Layers) {
		m.DiffIDs = nil // a record of an earlier version
	}
	return m, nil
}
