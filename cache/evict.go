package cache

import (
	"encoding/json"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// Usage returns the bytes and number of committed blobs.
func (s *Store) Usage() (bytes int64, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size, len(s.blobs)
}

// Evict removes least recently used blobs that no request is reading until
// the store is within its size limit (or within limit when limit > 0 is
// given). It returns the number of blobs and bytes removed.
func (s *Store) Evict(limit int64) (int, int64) {
	if limit <= 0 {
		limit = s.maxSize
	}
	if limit <= 0 || s.shared {
		return 0, 0 // a shared store is evicted by EvictShared, one replica at a time
	}
	s.mu.Lock()
	var removed []v1.Hash
	defer func() {
		s.mu.Unlock()
		s.deleteRecords(removed...)
	}()
	if s.size <= limit {
		return 0, 0
	}
	type cand struct {
		d v1.Hash
		e *blobEntry
	}
	var cands []cand
	for d, e := range s.blobs {
		if e.readers == 0 {
			cands = append(cands, cand{d, e})
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].e.atime.Before(cands[j].e.atime) })
	var n int
	var freed int64
	for _, c := range cands {
		if s.size <= limit {
			break
		}
		if err := s.blobStore.Delete(bg, c.d); err != nil {
			s.log.Error("evicting blob", "digest", c.d, "err", err)
			continue
		}
		freed += c.e.size
		n++
		s.forgetLocked(c.d)
		removed = append(removed, c.d)
	}
	if n > 0 {
		metrics.Evictions.Add(float64(n))
		metrics.EvictedBytes.Add(float64(freed))
		s.log.Info("evicted least recently used blobs", "count", n, "bytes", freed, "size", s.size, "limit", limit)
	}
	return n, freed
}

// FlushAccess writes the access times recorded in memory to the blob records.
// They are kept in memory between flushes so that serving a cached blob
// costs no write of the MetaStore.
func (s *Store) FlushAccess() error {
	s.mu.Lock()
	type upd struct {
		k string
		t time.Time
	}
	var ups []upd
	for d := range s.dirty {
		if e, ok := s.blobs[d]; ok {
			ups = append(ups, upd{d.String(), e.atime})
			e.stored = e.atime
		}
	}
	clear(s.dirty)
	s.mu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	return s.meta.Update(bg, func(tx storage.Tx) error {
		for _, u := range ups {
			var rec blobRecord
			v, err := tx.Get(tableBlobs, []byte(u.k))
			if err != nil {
				return err
			}
			if v == nil || json.Unmarshal(v, &rec) != nil {
				continue
			}
			rec.Accessed = u.t
			v, _ = json.Marshal(rec)
			if err := tx.Put(tableBlobs, []byte(u.k), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// BlobInfo describes a committed blob, for listings.
type BlobInfo struct {
	Digest   v1.Hash
	Size     int64
	Upstream string
	Created  time.Time
	Accessed time.Time
}

// Blobs lists the committed blobs.
func (s *Store) Blobs() ([]BlobInfo, error) {
	var out []BlobInfo
	err := s.meta.View(bg, func(tx storage.Tx) error {
		return tx.Scan(tableBlobs, nil, false, func(k, v []byte) (bool, error) {
			h, err := v1.NewHash(string(k))
			if err != nil {
				return true, nil
			}
			var rec blobRecord
			if json.Unmarshal(v, &rec) != nil {
				return true, nil
			}
			out = append(out, BlobInfo{Digest: h, Size: rec.Size, Upstream: rec.Upstream, Created: rec.Created, Accessed: rec.Accessed})
			return true, nil
		})
	})
	s.mu.Lock()
	for i := range out {
		if e, ok := s.blobs[out[i].Digest]; ok && e.atime.After(out[i].Accessed) {
			out[i].Accessed = e.atime
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return strings.Compare(out[i].Digest.Hex, out[j].Digest.Hex) < 0 })
	return out, err
}

// RemoveBlob deletes a committed blob (used by cache verify for a blob that
// no longer matches its digest). A blob being read is removed all the same:
// readers of a local store keep their open file.
func (s *Store) RemoveBlob(dgst v1.Hash) error {
	s.mu.Lock()
	err := s.blobStore.Delete(bg, dgst)
	if err == nil {
		s.forgetLocked(dgst)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.deleteRecords(dgst)
	return nil
}

// sortByAccess sorts blobs least recently accessed first.
func sortByAccess(b []BlobInfo) {
	sort.Slice(b, func(i, j int) bool { return b[i].Accessed.Before(b[j].Accessed) })
}
