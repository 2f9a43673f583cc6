package records

import (
	"context"
	"time"

	"github.com/gatehouse/gatehouse/storage"
)

// pullCount is the pulls of one manifest not yet written to the database.
type pullCount struct {
	n    int64
	last time.Time
}

// NotePull counts a GET of a judged manifest in memory: the hot path
// never writes to the database; FlushPulls does, in one transaction.
func (s *Store) NotePull(dgst string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pulls[dgst]
	if p == nil {
		if len(s.pulls) >= maxMemo {
			// A flush is overdue; counting more would grow without bound.
			return
		}
		p = &pullCount{}
		s.pulls[dgst] = p
	}
	p.n++
	p.last = now
}

// FlushPulls adds the pulls counted since the last flush to the image
// records. serve calls it periodically and Close calls it once more.
func (s *Store) FlushPulls(ctx context.Context) error {
	s.mu.Lock()
	pending := s.pulls
	s.pulls = map[string]*pullCount{}
	s.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	return s.meta.Update(ctx, func(tx storage.Tx) error {
		for dgst, p := range pending {
			var rec ImageRecord
			if found, err := get(tx, tableImages, dgst, &rec); !found || err != nil {
				continue // not recorded (never judged): nothing to count on
			}
			addPulls(&rec, p)
			if err := put(tx, tableImages, dgst, &rec); err != nil {
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
func (s *Store) unflushed() map[string]pullCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]pullCount, len(s.pulls))
	for k, p := range s.pulls {
		out[k] = *p
	}
	return out
}
