package gate

import (
	"context"
	"fmt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate/records"
)

// Reevaluation summarises a Reevaluate run.
type Reevaluation struct {
	// Images counts the judgements made again: an image once per
	// repository it was judged in.
	Images  int `json:"images"`
	Flipped int `json:"flipped"` // verdicts that changed from admitted to denied or back
	Failed  int `json:"failed"`
}

// Reevaluate applies the current DB to every scanned image from its stored
// package inventory (no layer is downloaded again) and stores new verdicts,
// in every repository the image was judged in, each under its own rule: an
// image admitted yesterday is denied today if a new CVE hits it.
func (g *Gate) Reevaluate(ctx context.Context) (Reevaluation, error) {
	var res Reevaluation
	dbv := g.scanner.DBVersion()
	if dbv == "" {
		return res, ErrNoDB
	}
	recs, err := g.records.Scanned(ctx)
	if err != nil {
		return res, err
	}
	for _, rec := range recs {
		judged, err := g.judgedIn(ctx, &rec)
		if err != nil {
			return res, err
		}
		for _, in := range judged {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			// Each repository under its own rule, against its own verdict.
			r := rec
			r.Upstream, r.Repo, r.Latest = in.Upstream, in.Repo, in.Latest
			res.Images++
			flipped, err := g.reevaluate(ctx, &r, dbv)
			if err != nil {
				res.Failed++
				g.log.Error("re-evaluating image", "upstream", r.Upstream, "repo", r.Repo, "digest", r.Digest, "err", err)
				continue
			}
			if flipped {
				res.Flipped++
			}
		}
	}
	g.log.Info("re-evaluated cached verdicts with the new vulnerability DB", "db", dbv, "images", res.Images, "flipped", res.Flipped, "failed", res.Failed)
	return res, nil
}

func (g *Gate) reevaluate(ctx context.Context, rec *records.ImageRecord, dbv string) (bool, error) {
	rep, err := g.records.Report(ctx, rec.Digest)
	if err != nil {
		return false, err
	}
	if rep.DBVersion != dbv {
		r, err := g.scanner.Rescan(ctx, rep.Inventory)
		if err != nil {
			return false, err
		}
		// The layers were scanned then; only detection ran again.
		rep = &records.StoredReport{Report: *r, ScannedAt: rep.ScannedAt}
		if err := g.records.PutReport(ctx, rec.Digest, rep); err != nil {
			return false, err
		}
	}
	m, err := rec.Manifest()
	if err != nil {
		return false, err
	}
	s, info := fromRecord(m)
	rule := g.policy.Match(rec.Upstream, rec.Repo)
	var sig *SignatureResult
	if rule.Signatures != nil {
		// Only a result verified in this repository against this rule's
		// identities (its hash) counts; another rule's, or one verified
		// before a key was rotated, is verified again.
		if sig = g.signature(ctx, s, rule); sig == nil {
			out := g.verifySignature(ctx, s, rule)
			if out.failed {
				// No verdict: the next pull judges it again.
				return false, fmt.Errorf("signature: %s %s", out.res.Reason, out.res.Detail)
			}
			if !out.lasting() && rule.Signatures.Required && rule.Mode != config.ModeAudit {
				// Not verified, but an index may still admit it: no
				// lasting denial; the next pull judges it again.
				return false, nil
			}
			sig = out.res
			if err := g.putSignature(ctx, s, rule, sig); err != nil {
				return false, err
			}
		}
	}
	att := g.fetchAttestations(ctx, s, rule)
	if att != nil && att.err != nil {
		// No verdict: the next pull judges it again.
		return false, fmt.Errorf("attestations: %w", att.err)
	}
	v := g.decide(s, info, rule, rep, sig, att)
	wasAdmitted := rec.Latest == nil || rec.Latest.Admitted
	if err := g.store(ctx, verdictKey(s, rule.Hash, rep.DBVersion), s, info, v); err != nil {
		return false, err
	}
	if wasAdmitted != v.Admitted {
		g.log.Warn("verdict changed with the new vulnerability DB", "upstream", rec.Upstream, "repo", rec.Repo, "digest", rec.Digest,
			"admitted", v.Admitted, "message", v.Message)
		g.events.Publish(events.Changed(g.now(), events.VerdictChangedData{Upstream: rec.Upstream, Repository: rec.Repo,
			Digest: rec.Digest, DBVersion: rep.DBVersion, Before: verdictState(rec.Latest), After: verdictState(v)}))
		return true, nil
	}
	return false, nil
}

// verdictState is v as a VerdictChanged event tells it; nil (never
// judged) counts as admitted, as reevaluate does.
func verdictState(v *Verdict) events.VerdictState {
	if v == nil {
		return events.VerdictState{Admitted: true}
	}
	return events.VerdictState{Admitted: v.Admitted, Rule: ruleName(v), Reason: v.Reason, Message: v.Message}
}

// judgedIn lists the repositories rec was judged in, each with its latest
// verdict there: those of the verdicts table, the record's first
// repository, and that of its latest verdict (one not stored under a
// verdict key: audit without a scan, a denial that may not last).
func (g *Gate) judgedIn(ctx context.Context, rec *records.ImageRecord) ([]records.RepoVerdict, error) {
	judged, err := g.records.Judged(ctx, rec.Digest)
	if err != nil {
		return nil, err
	}
	at := func(upstream, repo string) *records.RepoVerdict {
		for i := range judged {
			if judged[i].Upstream == upstream && judged[i].Repo == repo {
				return &judged[i]
			}
		}
		judged = append(judged, records.RepoVerdict{Upstream: upstream, Repo: repo})
		return &judged[len(judged)-1]
	}
	at(rec.Upstream, rec.Repo)
	if v := rec.Latest; v != nil {
		in := at(rec.Upstream, rec.Repo)
		if v.Upstream != "" && v.Repo != "" {
			in = at(v.Upstream, v.Repo)
		}
		if in.Latest == nil || !v.JudgedAt.Before(in.Latest.JudgedAt) {
			in.Latest = v
		}
	}
	return judged, nil
}
