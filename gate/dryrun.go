package gate

import (
	"context"
	"errors"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// DryRunOptions are what a dry run needs besides the proposed
// configuration.
type DryRunOptions struct {
	// VEX applies the VEX statements of the proposed rules (by their
	// names); required when a proposed rule has a vex section.
	VEX VEXFilter
	// Exceptions are the proposal's (its gate.exceptions); nil: none, as
	// for a proposal without them. Those in force never apply: a proposal
	// that drops them must show what they admit becoming denied.
	Exceptions Exceptions
}

// DryRunResult is what a proposed configuration would make of the images
// on record (POST /api/v1/policy/test, gatehouse policy test).
type DryRunResult struct {
	// DBVersion is the vulnerability DB the proposed verdicts were made
	// with; "" when none is loaded.
	DBVersion string        `json:"dbVersion"`
	Summary   DryRunSummary `json:"summary"`
	// Images lists every image on record once per repository it was
	// judged in, changes first.
	Images []DryRunImage `json:"images"`
}

// DryRunSummary counts the images by change, an image once per
// repository.
type DryRunSummary struct {
	Images int `json:"images"`
	// BecomeDenied are admitted now and would be denied.
	BecomeDenied int `json:"becomeDenied"`
	// BecomeAdmitted are denied now and would be admitted.
	BecomeAdmitted int `json:"becomeAdmitted"`
	// Undetermined could not be judged without fetching something (a
	// signature, attestations, a scan); UndeterminedAdmitted of them are
	// admitted now, and so might become denied.
	Undetermined         int `json:"undetermined"`
	UndeterminedAdmitted int `json:"undeterminedAdmitted"`
	Unchanged            int `json:"unchanged"`
}

// Fails reports whether the proposal would (or might) deny an image
// admitted now: one becomes denied, or one admitted now is undetermined
// (fail closed).
func (s DryRunSummary) Fails() bool { return s.BecomeDenied > 0 || s.UndeterminedAdmitted > 0 }

// Changes of a DryRunImage.
const (
	ChangeDenied       = "denied"       // admitted now, would be denied
	ChangeAdmitted     = "admitted"     // denied now, would be admitted
	ChangeUndetermined = "undetermined" // cannot be told without a fetch
	ChangeUnchanged    = "unchanged"
)

// Verdicts of a DryRunVerdict.
const (
	DryAdmitted     = "admitted"
	DryDenied       = "denied"
	DryUndetermined = "undetermined"
	DryNone         = "none" // no verdict on record
)

// DryRunImage is one image on record in one repository, judged now (its
// latest verdict there) and as proposed.
type DryRunImage struct {
	Upstream string   `json:"upstream"`
	Repo     string   `json:"repository"`
	Digest   string   `json:"digest"`
	Tags     []string `json:"tags"`
	Platform string   `json:"platform,omitempty"`
	// Change is denied, admitted, undetermined or unchanged.
	Change   string        `json:"change"`
	Current  DryRunVerdict `json:"current"`
	Proposed DryRunVerdict `json:"proposed"`
}

// DryRunVerdict is a verdict as the dry run shows it.
type DryRunVerdict struct {
	// Verdict is admitted, denied, undetermined (proposed only) or none
	// (current only: never judged).
	Verdict string `json:"verdict"`
	Rule    string `json:"rule"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Blocking are the vulnerabilities that break the rule.
	Blocking []policy.Finding `json:"blocking"`
}

// DryRun judges every image on record, in every repository it was judged
// in, under the proposed gate configuration, from what is stored: scan reports (detected again with
// the loaded DB when made with another, as Reevaluate does, without
// storing the result), and signature results verified under an identical
// rule. It downloads nothing, verifies nothing and stores nothing: an
// image whose proposed verdict needs a signature or attestations not on
// record, or a scan never made, is undetermined, never admitted.
func (g *Gate) DryRun(ctx context.Context, proposed *config.Gate, opts DryRunOptions) (*DryRunResult, error) {
	for i, r := range proposed.Policy.Rules {
		if r.VEX != nil && opts.VEX == nil {
			return nil, fmt.Errorf("gate: policy.rules[%d] (%q) applies VEX but no VEX filter is given", i, r.Name)
		}
	}
	view := g.under(proposed, opts)
	sums, err := g.records.Images(ctx)
	if err != nil {
		return nil, err
	}
	res := &DryRunResult{DBVersion: g.scanner.DBVersion(), Images: []DryRunImage{}}
	for _, sum := range sums {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := g.records.Image(ctx, sum.Digest)
		if errors.Is(err, records.ErrNotFound) {
			continue // gone since the list was read
		} else if err != nil {
			return nil, err
		}
		if d.Kind == "index" {
			continue
		}
		judged, err := g.judgedIn(ctx, &d.ImageRecord)
		if err != nil {
			return nil, err
		}
		for _, in := range judged {
			// Each repository under its own rule, against its own verdict.
			rec := d.ImageRecord
			rec.Upstream, rec.Repo, rec.Latest = in.Upstream, in.Repo, in.Latest
			im := g.dryRunImage(ctx, view, &rec)
			res.Images = append(res.Images, im)
			res.Summary.count(&im)
		}
	}
	sortDryRun(res.Images)
	return res, nil
}

// under is a gate that judges with the proposed configuration and the
// gate's scanner and DB. It has no records store, signature verifier,
// attestation verifier nor blob opener: it can decide, and nothing else
// (a slip that tried to store or fetch would fail, never write).
func (g *Gate) under(cfg *config.Gate, opts DryRunOptions) *Gate {
	v := &Gate{cfg: cfg, policy: policy.New(cfg.Policy.Rules, cfg.PassArtifactTypes...), scanner: g.scanner, vex: opts.VEX,
		dbv: g.dbv, dbBuilt: g.dbBuilt, events: g.events, excepts: opts.Exceptions, log: g.log, now: g.now, pass: map[string]bool{}}
	for _, t := range cfg.PassArtifactTypes {
		v.pass[t] = true
	}
	return v
}

func (s *DryRunSummary) count(im *DryRunImage) {
	s.Images++
	switch im.Change {
	case ChangeDenied:
		s.BecomeDenied++
	case ChangeAdmitted:
		s.BecomeAdmitted++
	case ChangeUndetermined:
		s.Undetermined++
		if im.Current.Verdict != DryDenied {
			s.UndeterminedAdmitted++
		}
	default:
		s.Unchanged++
	}
}

// dryRunImage judges one record under view.
func (g *Gate) dryRunImage(ctx context.Context, view *Gate, rec *records.ImageRecord) DryRunImage {
	im := DryRunImage{Upstream: rec.Upstream, Repo: rec.Repo, Digest: rec.Digest, Tags: append([]string{}, rec.Tags...),
		Platform: rec.Platform, Current: currentVerdict(rec.Latest), Proposed: g.proposedVerdict(ctx, view, rec)}
	admittedNow := im.Current.Verdict != DryDenied // never judged: as good as admitted
	switch {
	case im.Proposed.Verdict == DryUndetermined:
		im.Change = ChangeUndetermined
	case admittedNow && im.Proposed.Verdict == DryDenied:
		im.Change = ChangeDenied
	case !admittedNow && im.Proposed.Verdict == DryAdmitted:
		im.Change = ChangeAdmitted
	default:
		im.Change = ChangeUnchanged
	}
	return im
}

func currentVerdict(v *Verdict) DryRunVerdict {
	if v == nil {
		return DryRunVerdict{Verdict: DryNone, Blocking: []policy.Finding{}}
	}
	return dryVerdict(v)
}

func dryVerdict(v *Verdict) DryRunVerdict {
	out := DryRunVerdict{Verdict: DryDenied, Rule: ruleName(v), Reason: v.Reason, Message: v.Message, Blocking: []policy.Finding{}}
	if v.Admitted {
		out.Verdict = DryAdmitted
	}
	if v.Decision != nil && v.Decision.Blocking != nil {
		out.Blocking = v.Decision.Blocking
	}
	return out
}

func undetermined(rule *policy.Rule, why string, v *Verdict) DryRunVerdict {
	out := DryRunVerdict{Verdict: DryUndetermined, Rule: rule.Name, Reason: "undetermined", Message: why, Blocking: []policy.Finding{}}
	if v != nil && v.Decision != nil && v.Decision.Blocking != nil {
		out.Blocking = v.Decision.Blocking
	}
	return out
}

// proposedVerdict judges rec under view's policy with view.decide, the
// gate's own decision, from what is on record.
func (g *Gate) proposedVerdict(ctx context.Context, view *Gate, rec *records.ImageRecord) DryRunVerdict {
	m, err := rec.Manifest()
	if err != nil {
		return undetermined(view.policy.Match(rec.Upstream, rec.Repo), "record unreadable: "+err.Error(), nil)
	}
	s, info := fromRecord(m)
	rule := view.policy.Match(s.Upstream, s.Repo)
	switch {
	case view.isArtifact(recordedInfo(rec, info)):
		return DryRunVerdict{Verdict: DryAdmitted, Rule: rule.Name, Reason: ReasonArtifact, Blocking: []policy.Finding{},
			Message: "non-image artifact (" + rec.ArtifactType + ") passed by media type"}
	case rule.Mode == config.ModeOff:
		return DryRunVerdict{Verdict: DryAdmitted, Rule: rule.Name, Reason: ReasonOff, Message: fmt.Sprintf("rule %q is off", rule.Name), Blocking: []policy.Finding{}}
	}
	rep := &records.StoredReport{}
	if rule.Scans() {
		if rep, err = g.dryRunReport(ctx, rec.Digest); err != nil {
			return undetermined(rule, err.Error(), nil)
		}
	}
	var sig *SignatureResult
	if rule.Signatures != nil {
		// Only a result verified under this very rule (its hash: the
		// identities, key bytes and trusted root) counts, as at a pull.
		sig = g.signature(ctx, s, rule)
	}
	var att *attOutcome
	if needsAttestations(rule) {
		att = &attOutcome{} // none known: the pessimistic verdict
	}
	v := view.decide(s, info, rule, rep, sig, att)
	enforced := rule.Mode == config.ModeEnforce
	switch {
	case att != nil && enforced:
		// Attestations are fetched at a pull and never stored: what they
		// would say is unknown, and attached VEX may turn either way.
		return undetermined(rule, "attestations would be fetched and verified at the next pull", v)
	case sig == nil && rule.Signatures != nil && rule.Signatures.Required && enforced && v.Decision.Admitted:
		// Denied anyway when its vulnerabilities break the rule; else the
		// signature decides, and it is not on record.
		return undetermined(rule, "signature would be verified at the next pull", v)
	}
	return dryVerdict(v)
}

// dryRunReport is the image's stored report, detected again with the
// loaded DB when made with another (not stored).
func (g *Gate) dryRunReport(ctx context.Context, dgst string) (*records.StoredReport, error) {
	rep, err := g.records.Report(ctx, dgst)
	if errors.Is(err, records.ErrNotFound) {
		return nil, errors.New("not scanned yet: it would be scanned at the next pull")
	} else if err != nil {
		return nil, fmt.Errorf("scan report unreadable: %w", err)
	}
	dbv := g.scanner.DBVersion()
	switch {
	case dbv == "":
		return nil, errors.New("no vulnerability DB loaded")
	case rep.DBVersion == dbv:
		return rep, nil
	case len(rep.Inventory) == 0:
		return nil, errors.New("scan report without a package inventory: it would be scanned again at the next pull")
	}
	r, err := g.scanner.Rescan(ctx, rep.Inventory)
	if err != nil {
		return nil, fmt.Errorf("detecting again with DB %s: %w", dbv, err)
	}
	return &records.StoredReport{Report: *r, ScannedAt: rep.ScannedAt}, nil
}

// recordedInfo adds to info what isArtifact reads and the record keeps:
// the layers' media types and the artifact type.
func recordedInfo(rec *records.ImageRecord, info *manifestInfo) *manifestInfo {
	out := *info
	out.layers = make([]v1.Descriptor, len(rec.Layers))
	for i, l := range rec.Layers {
		out.layers[i] = v1.Descriptor{MediaType: l.MediaType, Size: l.Size}
	}
	out.config.MediaType = types.MediaType(rec.ArtifactType)
	out.declaredType = rec.ArtifactType
	return &out
}

// sortDryRun puts changes first (denied, undetermined, admitted), then
// keeps the records' order (newest first).
func sortDryRun(ims []DryRunImage) {
	rank := map[string]int{ChangeDenied: 0, ChangeUndetermined: 1, ChangeAdmitted: 2, ChangeUnchanged: 3}
	slices.SortStableFunc(ims, func(a, b DryRunImage) int { return rank[a.Change] - rank[b.Change] })
}
