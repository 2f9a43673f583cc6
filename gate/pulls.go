package gate

import (
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// pullCount is the pulls of one manifest not yet written to the database.
type pullCount struct {
	n    int64
	last time.Time
}

// notePull counts a GET of a judged manifest in memory: the hot path
// never writes to the database; FlushPulls does, in one transaction.
func (g *Gate) notePull(s *Subject) {
	if !s.Pull {
		return
	}
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.pulls[s.Digest.String()]
	if p == nil {
		if len(g.pulls) >= maxMemo {
			// A flush is overdue; counting more would grow without bound.
			return
		}
		p = &pullCount{}
		g.pulls[s.Digest.String()] = p
	}
	p.n++
	p.last = now
}

// FlushPulls adds the pulls counted since the last flush to the image
// records. serve calls it periodically and Close calls it once more.
func (g *Gate) FlushPulls() error {
	g.mu.Lock()
	pending := g.pulls
	g.pulls = map[string]*pullCount{}
	g.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	return g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		for dgst, p := range pending {
			var rec ImageRecord
			if v := b.Get([]byte(dgst)); v == nil || json.Unmarshal(v, &rec) != nil {
				continue // not recorded (never judged): nothing to count on
			}
			addPulls(&rec, p)
			rb, err := json.Marshal(&rec)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(dgst), rb); err != nil {
				return err
			}
		}
		return nil
	})
}

func addPulls(rec *ImageRecord, p *pullCount) {
	rec.Pulls += p.n
	if p.last.After(rec.LastPulled) {
		rec.LastPulled = p.last
	}
}

// unflushed returns a copy of the counts not yet written, so that readers
// see every pull without waiting for a flush.
func (g *Gate) unflushed() map[string]pullCount {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]pullCount, len(g.pulls))
	for k, p := range g.pulls {
		out[k] = *p
	}
	return out
}
