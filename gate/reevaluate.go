package gate

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/config"
)

// Reevaluation summarises a Reevaluate run.
type Reevaluation struct {
	Images  int `json:"images"`
	Flipped int `json:"flipped"` // verdicts that changed from admitted to denied or back
	Failed  int `json:"failed"`
}

// Reevaluate applies the current DB to every scanned image from its stored
// package inventory (no layer is downloaded again) and stores new verdicts:
// an image admitted yesterday is denied today if a new CVE hits it.
func (g *Gate) Reevaluate(ctx context.Context) (Reevaluation, error) {
	var res Reevaluation
	dbv := g.scanner.DBVersion()
	if dbv == "" {
		return res, ErrNoDB
	}
	var recs []ImageRecord
	err := g.db.View(func(tx *bolt.Tx) error {
		reports := tx.Bucket(bucketReports)
		return tx.Bucket(bucketImages).ForEach(func(k, v []byte) error {
			if reports.Get(k) == nil {
				return nil
			}
			var rec ImageRecord
			if json.Unmarshal(v, &rec) == nil {
				recs = append(recs, rec)
			}
			return nil
		})
	})
	if err != nil {
		return res, err
	}
	for _, rec := range recs {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		res.Images++
		flipped, err := g.reevaluate(ctx, &rec, dbv)
		if err != nil {
			res.Failed++
			g.log.Error("re-evaluating image", "digest", rec.Digest, "err", err)
			continue
		}
		if flipped {
			res.Flipped++
		}
	}
	g.log.Info("re-evaluated cached verdicts with the new vulnerability DB", "db", dbv, "images", res.Images, "flipped", res.Flipped, "failed", res.Failed)
	return res, nil
}

func (g *Gate) reevaluate(ctx context.Context, rec *ImageRecord, dbv string) (bool, error) {
	var old storedReport
	err := g.db.View(func(tx *bolt.Tx) error {
		return json.Unmarshal(tx.Bucket(bucketReports).Get([]byte(rec.Digest)), &old)
	})
	if err != nil {
		return false, err
	}
	rep := &old
	if old.DBVersion != dbv {
		r, err := g.scanner.Rescan(ctx, old.Inventory)
		if err != nil {
			return false, err
		}
		// The layers were scanned then; only detection ran again.
		rep = &storedReport{Report: *r, ScannedAt: old.ScannedAt}
		if err := g.putReport(rec.Digest, rep); err != nil {
			return false, err
		}
	}
	dgst, err := v1.NewHash(rec.Digest)
	if err != nil {
		return false, err
	}
	s := &Subject{Upstream: rec.Upstream, Repo: rec.Repo, Digest: dgst, MediaType: rec.MediaType}
	info := &manifestInfo{kind: rec.Kind}
	if rec.Config != "" {
		info.config.Digest, _ = v1.NewHash(rec.Config)
	}
	for _, l := range rec.Layers {
		h, err := v1.NewHash(l.Digest)
		if err != nil {
			return false, fmt.Errorf("stored layer digest: %w", err)
		}
		info.layers = append(info.layers, v1.Descriptor{Digest: h, Size: l.Size})
		if d, err := v1.NewHash(l.DiffID); err == nil {
			info.diffIDs = append(info.diffIDs, d)
		}
	}
	if len(info.diffIDs) != len(info.layers) {
		info.diffIDs = nil // a record of an earlier version
	}
	rule := g.policy.Match(rec.Upstream, rec.Repo)
	var sig *SignatureResult
	if rule.Signatures != nil {
		// Only a result verified in this repository against this rule's
		// identities (its hash) counts; another rule's, or one verified
		// before a key was rotated, is verified again.
		if sig = g.signature(s, rule); sig == nil {
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
			if err := g.putSignature(s, rule, sig); err != nil {
				return false, err
			}
		}
	}
	v := g.decide(s, info, rule, rep, sig)
	wasAdmitted := rec.Latest == nil || rec.Latest.Admitted
	if err := g.store(verdictKey(s, rule.Hash, rep.DBVersion), s, info, v); err != nil {
		return false, err
	}
	if wasAdmitted != v.Admitted {
		g.log.Warn("verdict changed with the new vulnerability DB", "upstream", rec.Upstream, "repo", rec.Repo, "digest", rec.Digest,
			"admitted", v.Admitted, "message", v.Message)
		return true, nil
	}
	return false, nil
}
