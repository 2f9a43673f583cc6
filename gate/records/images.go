package records

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/gatehouse/gatehouse/storage"
)

// ImageSummary is one row of the list of judged manifests (GET
// /api/v1/images, the console's images page).
type ImageSummary struct {
	Digest   string   `json:"digest"`
	Upstream string   `json:"upstream"`
	Repo     string   `json:"repository"`
	Tags     []string `json:"tags"`
	Kind     string   `json:"kind"`
	// ArtifactType is the artifactType or config media type.
	ArtifactType string `json:"artifactType,omitempty"`
	// Platform is os/architecture[/variant], when known.
	Platform  string         `json:"platform,omitempty"`
	Verdict   string         `json:"verdict"` // admitted, denied
	Reason    string         `json:"reason"`
	Rule      string         `json:"rule,omitempty"`
	Counts    map[string]int `json:"counts"`
	ScannedAt time.Time      `json:"scannedAt,omitzero"`
	DBVersion string         `json:"dbVersion,omitempty"`
	FirstSeen time.Time      `json:"firstSeen"`
	// LastPulled and Pulls count GETs of the manifest.
	LastPulled time.Time `json:"lastPulled,omitzero"`
	Pulls      int64     `json:"pulls"`
	// Signature is the latest signature check; absent when the rule
	// verifies none.
	Signature *SignatureResult `json:"signature,omitempty"`
}

// ImageDetail is one judged manifest with every vulnerability found (GET
// /api/v1/images/<digest>, the console's image page).
type ImageDetail struct {
	ImageRecord
	Vulns []Vuln `json:"vulnerabilities"`
}

func summary(rec *ImageRecord) ImageSummary {
	s := ImageSummary{Digest: rec.Digest, Upstream: rec.Upstream, Repo: rec.Repo, Tags: rec.Tags, Kind: rec.Kind,
		ArtifactType: rec.ArtifactType, Platform: rec.Platform, FirstSeen: rec.FirstSeen, LastPulled: rec.LastPulled,
		Pulls: rec.Pulls, Counts: map[string]int{}}
	if v := rec.Latest; v != nil {
		s.Verdict, s.Reason, s.ScannedAt, s.DBVersion, s.Rule = "denied", v.Reason, v.ScannedAt, v.DBVersion, v.Rule
		s.Signature = v.Signature
		if v.Admitted {
			s.Verdict = "admitted"
		}
		if v.Decision != nil {
			s.Rule, s.Counts = v.Decision.Rule, v.Decision.Counts
		}
	}
	return s
}

// Images lists judged manifests, newest first, with the pulls counted but
// not yet flushed.
func (s *Store) Images(ctx context.Context) ([]ImageSummary, error) {
	var out []ImageSummary
	pending := s.unflushed()
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableImages, nil, false, func(_, v []byte) (bool, error) {
			var rec ImageRecord
			if json.Unmarshal(v, &rec) == nil {
				if p, ok := pending[rec.Digest]; ok {
					addPulls(&rec, &p)
				}
				out = append(out, summary(&rec))
			}
			return true, nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].FirstSeen.After(out[j].FirstSeen) })
	return out, err
}

// Image returns one judged manifest with every vulnerability found, or
// ErrNotFound.
func (s *Store) Image(ctx context.Context, dgst string) (*ImageDetail, error) {
	var d *ImageDetail
	pending := s.unflushed()
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		d = &ImageDetail{Vulns: []Vuln{}}
		if found, err := get(tx, tableImages, dgst, &d.ImageRecord); err != nil {
			return err
		} else if !found {
			return ErrNotFound
		}
		if p, ok := pending[dgst]; ok {
			addPulls(&d.ImageRecord, &p)
		}
		var rep StoredReport
		if found, err := get(tx, tableReports, dgst, &rep); err != nil {
			return err
		} else if found && rep.Vulns != nil {
			d.Vulns = rep.Vulns
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Scanned returns the records of every image that has a scan report: those
// a new DB can judge again from their inventory.
func (s *Store) Scanned(ctx context.Context) ([]ImageRecord, error) {
	var recs []ImageRecord
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableImages, nil, false, func(k, v []byte) (bool, error) {
			if rep, err := tx.Get(tableReports, k); err != nil || rep == nil {
				return err == nil, err
			}
			var rec ImageRecord
			if json.Unmarshal(v, &rec) == nil {
				recs = append(recs, rec)
			}
			return true, nil
		})
	})
	return recs, err
}
