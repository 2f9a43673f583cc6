package gate

import (
	"cmp"
	"encoding/json"
	"errors"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ImageRecord describes a judged manifest.
type ImageRecord struct {
	Digest    string   `json:"digest"`
	Upstream  string   `json:"upstream"`
	Repo      string   `json:"repository"`
	Tags      []string `json:"tags"`
	MediaType string   `json:"mediaType"`
	Kind      string   `json:"kind"`
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
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType"`
	// DiffID is the digest of the uncompressed layer the config declares.
	DiffID string `json:"diffID,omitempty"`
}

func (g *Gate) report(dgst, dbv string) (*storedReport, error) {
	var rep *storedReport
	err := g.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketReports).Get([]byte(dgst))
		if b == nil {
			return ErrNotFound
		}
		rep = &storedReport{}
		return json.Unmarshal(b, rep)
	})
	if err != nil {
		return nil, err
	}
	if rep.DBVersion != dbv {
		return nil, ErrNotFound
	}
	return rep, nil
}

// ErrNotFound is returned for a digest the gate has not judged.
var ErrNotFound = errors.New("not found")

func (g *Gate) putReport(dgst string, rep *storedReport) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return g.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketReports).Put([]byte(dgst), b) })
}

// store records the verdict, the image and which blobs it admits.
func (g *Gate) store(key string, s *Subject, info *manifestInfo, v *Verdict) error {
	g.remember(key, v)
	vb, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return g.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketVerdicts).Put([]byte(key), vb); err != nil {
			return err
		}
		if err := g.putImage(tx, s, info, v); err != nil {
			return err
		}
		return setBlobRefs(tx, s, info, v, v.PolicyHash, v.DBVersion)
	})
}

// record records the image and a verdict that is not stored under its
// verdict key (audit without scan, a scan limit): the blobs of an admitted
// one may be served.
func (g *Gate) record(s *Subject, info *manifestInfo, v *Verdict) {
	err := g.db.Update(func(tx *bolt.Tx) error {
		if err := g.putImage(tx, s, info, v); err != nil {
			return err
		}
		return setBlobRefs(tx, s, info, v, v.PolicyHash, v.DBVersion)
	})
	if err != nil {
		g.log.Error("recording judged manifest", "err", err)
	}
}

// recordImage records the image with a verdict that is neither stored
// under its key nor changes the blob index (a denial that may not last).
func (g *Gate) recordImage(s *Subject, info *manifestInfo, v *Verdict) {
	if err := g.db.Update(func(tx *bolt.Tx) error { return g.putImage(tx, s, info, v) }); err != nil {
		g.log.Error("recording judged manifest", "err", err)
	}
}

func (g *Gate) putImage(tx *bolt.Tx, s *Subject, info *manifestInfo, v *Verdict) error {
	b := tx.Bucket(bucketImages)
	var rec ImageRecord
	if old := b.Get([]byte(s.Digest.String())); old != nil {
		_ = json.Unmarshal(old, &rec)
	}
	if rec.Digest == "" {
		// The verdict's kind says "artifact" for what passed by media type.
		kind := cmp.Or(v.Kind, info.kind)
		rec = ImageRecord{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, MediaType: s.MediaType, Kind: kind,
			Config: info.config.Digest.String(), FirstSeen: g.now(), Tags: []string{}}
		for _, l := range info.layers {
			rec.Layers = append(rec.Layers, LayerRef{Digest: l.Digest.String(), Size: l.Size, MediaType: string(l.MediaType)})
		}
	}
	for i := range rec.Layers {
		if rec.Layers[i].DiffID == "" && i < len(info.diffIDs) && len(info.diffIDs) == len(rec.Layers) {
			rec.Layers[i].DiffID = info.diffIDs[i].String()
		}
	}
	if s.Tag != "" && !slices.Contains(rec.Tags, s.Tag) {
		rec.Tags = append(rec.Tags, s.Tag)
	}
	// Records written before these fields existed get them on the next
	// judgement.
	if rec.ArtifactType == "" {
		rec.ArtifactType = info.artifactType
	}
	if rec.Platform == "" {
		rec.Platform = info.platform
	}
	rec.Latest = v
	rb, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	return b.Put([]byte(s.Digest.String()), rb)
}

// noteTag adds a newly seen tag to a judged image's record.
func (g *Gate) noteTag(s *Subject) {
	if s.Tag == "" {
		return
	}
	seen := s.Digest.String() + "\x00" + s.Tag
	g.mu.Lock()
	_, done := g.tags[seen]
	if !done {
		if len(g.tags) >= maxMemo {
			clear(g.tags)
		}
		g.tags[seen] = struct{}{}
	}
	g.mu.Unlock()
	if done {
		return
	}
	var known bool
	_ = g.db.View(func(tx *bolt.Tx) error {
		var rec ImageRecord
		if b := tx.Bucket(bucketImages).Get([]byte(s.Digest.String())); b != nil && json.Unmarshal(b, &rec) == nil {
			known = slices.Contains(rec.Tags, s.Tag)
		}
		return nil
	})
	if known {
		return
	}
	_ = g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		var rec ImageRecord
		if v := b.Get([]byte(s.Digest.String())); v == nil || json.Unmarshal(v, &rec) != nil {
			return nil
		}
		rec.Tags = append(rec.Tags, s.Tag)
		rb, _ := json.Marshal(&rec)
		return b.Put([]byte(s.Digest.String()), rb)
	})
}
