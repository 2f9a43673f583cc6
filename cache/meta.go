package cache

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// Manifest is a verified manifest as upstream served it.
type Manifest struct {
	Digest    v1.Hash   `json:"-"`
	Data      []byte    `json:"-"` // the exact bytes upstream sent
	MediaType string    `json:"mediaType"`
	Upstream  string    `json:"upstream"`
	Repo      string    `json:"repo"`
	Created   time.Time `json:"created"`
}

// Tag is a cached tag → digest mapping.
type Tag struct {
	Digest    v1.Hash   `json:"digest"`
	MediaType string    `json:"mediaType"`
	Size      int64     `json:"size"`
	Fetched   time.Time `json:"fetched"` // when upstream last confirmed it
}

// Manifest returns the cached manifest with digest dgst, or ErrNotFound.
func (s *Store) Manifest(dgst v1.Hash) (*Manifest, error) {
	if m := s.memo.get(dgst); m != nil {
		return m, nil
	}
	var m *Manifest
	err := s.meta.View(bg, func(tx storage.Tx) error {
		v, err := tx.Get(tableManifests, []byte(dgst.String()))
		if err != nil {
			return err
		}
		if v == nil {
			return ErrNotFound
		}
		m, err = decodeManifest(v)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.Digest = dgst
	s.memo.put(m)
	return m, nil
}

// PutManifest stores a manifest the caller has verified against its digest.
// The record is the length of its JSON metadata (4 bytes, big-endian), the
// metadata and the manifest's bytes.
func (s *Store) PutManifest(m *Manifest) error {
	meta, err := json.Marshal(m)
	if err != nil {
		return err
	}
	v := make([]byte, 4, 4+len(meta)+len(m.Data))
	binary.BigEndian.PutUint32(v, uint32(len(meta)))
	v = append(append(v, meta...), m.Data...)
	err = s.meta.Update(bg, func(tx storage.Tx) error {
		return tx.Put(tableManifests, []byte(m.Digest.String()), v)
	})
	if err == nil {
		s.memo.put(m)
	}
	return err
}

func decodeManifest(v []byte) (*Manifest, error) {
	if len(v) < 4 {
		return nil, errors.New("cache: corrupt manifest record")
	}
	n := binary.BigEndian.Uint32(v)
	if uint64(n) > uint64(len(v)-4) {
		return nil, errors.New("cache: corrupt manifest record")
	}
	var m Manifest
	if err := json.Unmarshal(v[4:4+n], &m); err != nil {
		return nil, fmt.Errorf("cache: corrupt manifest record: %w", err)
	}
	m.Data = append([]byte(nil), v[4+n:]...) // v is only valid inside the transaction
	return &m, nil
}

func tagKey(upstream, repo, tag string) []byte {
	return []byte(upstream + "/" + repo + ":" + tag)
}

// Tag returns the cached mapping of upstream/repo:tag, or ErrNotFound.
func (s *Store) Tag(upstream, repo, tag string) (*Tag, error) {
	var t Tag
	err := s.meta.View(bg, func(tx storage.Tx) error {
		v, err := tx.Get(tableTags, tagKey(upstream, repo, tag))
		if err != nil {
			return err
		}
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &t)
	})
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// PutTag records upstream/repo:tag → t.
func (s *Store) PutTag(upstream, repo, tag string, t *Tag) error {
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return s.meta.Update(bg, func(tx storage.Tx) error {
		return tx.Put(tableTags, tagKey(upstream, repo, tag), v)
	})
}

// TagInfo is one cached tag mapping, for listings.
type TagInfo struct {
	Name string // upstream/repo:tag
	Tag
}

// Tags lists the cached tag mappings.
func (s *Store) Tags() ([]TagInfo, error) {
	var out []TagInfo
	err := s.meta.View(bg, func(tx storage.Tx) error {
		return tx.Scan(tableTags, nil, false, func(k, v []byte) (bool, error) {
			var t Tag
			if json.Unmarshal(v, &t) == nil {
				out = append(out, TagInfo{Name: string(k), Tag: t})
			}
			return true, nil
		})
	})
	return out, err
}

// SweepManifests removes the cached manifests keep refuses, once per
// version: a cache written by an earlier gatehouse holds manifests checked
// by older rules, and a newer rule applies to them before anything is
// served. It returns how many it removed; when the records already passed
// version (or a later one), it reads nothing.
func (s *Store) SweepManifests(version uint32, keep func(*Manifest) bool) (int, error) {
	key := []byte("manifests-checked")
	var done bool
	if err := s.meta.View(bg, func(tx storage.Tx) error {
		v, err := tx.Get(tableSchema, key)
		done = len(v) == 4 && binary.BigEndian.Uint32(v) >= version
		return err
	}); err != nil || done {
		return 0, err
	}
	removed := 0
	err := s.meta.Update(bg, func(tx storage.Tx) error {
		var bad [][]byte
		err := tx.Scan(tableManifests, nil, false, func(k, v []byte) (bool, error) {
			m, err := decodeManifest(v)
			if err == nil {
				m.Digest, err = v1.NewHash(string(k))
			}
			if err != nil || !keep(m) {
				bad = append(bad, append([]byte(nil), k...))
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, k := range bad {
			if err := tx.Delete(tableManifests, k); err != nil {
				return err
			}
		}
		removed = len(bad)
		return tx.Put(tableSchema, key, binary.BigEndian.AppendUint32(nil, version))
	})
	s.memo.clear()
	return removed, err
}
