// Package cache is gatehouse's content store: one upstream fetch per
// uncached blob however many clients wait for it, verified before it is
// kept, metadata (manifests, tag mappings, blob records with access times)
// and least-recently-used eviction under a size limit.
//
// It is built on the two stores of package storage and names no file or
// database of its own: blob contents go to a storage.BlobStore (written
// through a BlobWriter, committed once digest and size matched), records
// to a storage.MetaStore in the tables "blobs", "manifests" and "tags".
// storage/datadir opens both for a data directory (the embedded default);
// shared backends plug in there, not here.
package cache

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// ErrNotFound is returned for an object the store does not hold.
var ErrNotFound = errors.New("not in cache")

// The MetaStore tables of the cache. Their keys and values are those of
// the bbolt buckets of earlier versions, so existing meta.db files work.
const (
	tableBlobs     = "blobs"     // digest → blobRecord (JSON)
	tableManifests = "manifests" // digest → encoded Manifest (see PutManifest)
	tableTags      = "tags"      // upstream/repo:tag → Tag (JSON)
	tableSchema    = "schema"    // one-time checks done: name → version (uint32, big-endian)
)

// Options configure a Store.
type Options struct {
	// Blobs holds the blob contents and Meta the records; both are
	// required (storage/datadir opens them for a data directory).
	Blobs storage.BlobStore
	Meta  storage.MetaStore
	// Closer, when set, is closed by Close once the store is flushed: the
	// stores opened for this Store alone. Otherwise the caller closes
	// Blobs and Meta after Close.
	Closer io.Closer
	// MaxSize bounds the bytes of cached blobs; 0 means no limit.
	MaxSize int64
	// StallTimeout aborts a blob download whose upstream sends nothing for
	// this long. Default DefaultStallTimeout.
	StallTimeout time.Duration
	// StallTimeouts overrides StallTimeout per upstream name.
	StallTimeouts map[string]time.Duration
	// ResumeAfter is how long a blob download may receive nothing before
	// it is resumed from the bytes received, with a new request (a body
	// that breaks off is resumed at once). Default DefaultResumeAfter; a
	// value not below the stall timeout becomes half of it.
	ResumeAfter time.Duration
	// ResumeAfters overrides ResumeAfter per upstream name.
	ResumeAfters map[string]time.Duration
	// WriteRetryInterval is how long after a failed cache write (a full
	// disk, a read-only directory) downloads bypass the cache before
	// writing is tried again. Default DefaultWriteRetryInterval.
	WriteRetryInterval time.Duration
	// Shared says that Meta and Blobs are shared with other replicas:
	// the index is loaded from the records alone (another replica may be
	// committing while this one starts), a blob missing from it is looked
	// up in the records, and eviction runs on one replica at a time.
	Shared bool
	// Coordinator, when set, makes the one upstream fetch of a blob one
	// for the whole cluster (package cluster).
	Coordinator Coordinator
	// Log receives the store's own events.
	Log *slog.Logger

	maxChunks int // DefaultMaxFetchChunks unless a test sets it
}

// Store is the content store. It is safe for concurrent use.
type Store struct {
	blobStore storage.BlobStore
	meta      storage.MetaStore
	closer    io.Closer // Options.Closer
	shared    bool
	coord     Coordinator
	memo      *manifestMemo // manifests by digest; nil unless shared
	log       *slog.Logger
	maxSize   int64

	mu      sync.Mutex
	blobs   map[v1.Hash]*blobEntry // the committed blobs
	fetches map[v1.Hash]*fetch
	// claiming marks the digests this replica is claiming from the
	// cluster (Coordinator) right now.
	claiming map[v1.Hash]bool
	size     int64 // bytes of committed blobs
	dirty    map[v1.Hash]struct{}
	stats    FetchStats
	closed   bool

	fetchedBytes  atomic.Int64
	memoryBytes   atomic.Int64 // bytes readers copied from fetches' chunks
	squeezed      atomic.Int32 // downloads waiting for a chunk buffer
	stallTimeout  time.Duration
	stallTimeouts map[string]time.Duration
	resumeAfter   time.Duration
	resumeAfters  map[string]time.Duration
	chunks        chan struct{} // a token per chunk in use by any fetch
	writeRetry    time.Duration
	writeFailed   time.Time     // last failed cache write; guarded by mu
	closing       chan struct{} // closed by Close: running fetches stop
	wg            sync.WaitGroup
}

type blobEntry struct {
	size    int64
	atime   time.Time
	stored  time.Time // the access time the record holds (shared records)
	readers int       // open readers; an entry in use is never evicted
}

// blobRecord is the record of a blob in tableBlobs.
type blobRecord struct {
	Size     int64     `json:"size"`
	Upstream string    `json:"upstream,omitempty"`
	Created  time.Time `json:"created"`
	Accessed time.Time `json:"accessed"`
}

// The cache's API takes no context yet: its calls to the stores that are
// not part of a request use this one.
var bg = context.Background()

// Open opens the store on opts.Blobs and opts.Meta, reconciling the two:
// a committed blob without a record (committed just before a crash) gets
// one, a record whose blob is gone is dropped.
func Open(opts Options) (*Store, error) {
	if opts.Blobs == nil || opts.Meta == nil {
		return nil, errors.New("cache: Options.Blobs and Options.Meta are required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Store{
		blobStore: opts.Blobs,
		meta:      opts.Meta,
		closer:    opts.Closer,
		shared:    opts.Shared,
		coord:     opts.Coordinator,
		log:       opts.Log,
		maxSize:   opts.MaxSize,
		blobs:     map[v1.Hash]*blobEntry{},
		fetches:   map[v1.Hash]*fetch{},
		claiming:  map[v1.Hash]bool{},
		dirty:     map[v1.Hash]struct{}{},
		closing:   make(chan struct{}),

		stallTimeout:  opts.StallTimeout,
		stallTimeouts: opts.StallTimeouts,
		resumeAfter:   opts.ResumeAfter,
		resumeAfters:  opts.ResumeAfters,
		chunks:        make(chan struct{}, cmp.Or(opts.maxChunks, DefaultMaxFetchChunks)),
		writeRetry:    opts.WriteRetryInterval,
	}
	if s.writeRetry <= 0 {
		s.writeRetry = DefaultWriteRetryInterval
	}
	if s.stallTimeout <= 0 {
		s.stallTimeout = DefaultStallTimeout
	}
	if s.resumeAfter <= 0 {
		s.resumeAfter = DefaultResumeAfter
	}
	// The resume counts of every configured upstream exist (at 0) before
	// the first resume.
	for _, names := range []map[string]time.Duration{opts.StallTimeouts, opts.ResumeAfters} {
		for up := range names {
			for _, r := range []string{"ok", "failed"} {
				metrics.BlobFetchResumes.WithLabelValues(up, r)
			}
		}
	}
	if s.shared {
		s.memo = newManifestMemo(memoBytes)
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// Close stops running fetches (their readers fail), waits for them and
// flushes access times (and closes Options.Closer).
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	err := s.FlushAccess()
	if s.closer != nil {
		err = errors.Join(err, s.closer.Close())
	}
	return err
}

// load builds the in-memory blob index from the committed blobs and their
// records, dropping records whose blob is gone.
func (s *Store) load() error {
	if s.shared {
		return s.loadRecords()
	}
	files := map[v1.Hash]int64{}
	err := s.blobStore.Walk(bg, func(d v1.Hash, size int64) error {
		files[d] = size
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scanning blobs: %w", err)
	}
	now := time.Now()
	err = s.meta.Update(bg, func(tx storage.Tx) error {
		var gone [][]byte
		err := tx.Scan(tableBlobs, nil, false, func(k, v []byte) (bool, error) {
			h, err := v1.NewHash(string(k))
			size, ok := files[h]
			if err != nil || !ok {
				gone = append(gone, bytes.Clone(k))
				return true, nil
			}
			var rec blobRecord
			if json.Unmarshal(v, &rec) != nil || rec.Size != size {
				rec = blobRecord{Size: size, Created: now, Accessed: now}
			}
			s.blobs[h] = &blobEntry{size: size, atime: rec.Accessed}
			s.size += size
			delete(files, h)
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
			if err := tx.Delete(tableBlobs, k); err != nil {
				return err
			}
		}
		// Blobs without a record: committed just before a crash.
		for h, size := range files {
			rec, _ := json.Marshal(blobRecord{Size: size, Created: now, Accessed: now})
			if err := tx.Put(tableBlobs, []byte(h.String()), rec); err != nil {
				return err
			}
			s.blobs[h] = &blobEntry{size: size, atime: now}
			s.size += size
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// Blob is an open, committed blob. Close it to let eviction consider it.
type Blob struct {
	// BlobReader reads the blob: the *os.File of a local store.
	storage.BlobReader
	Size int64
	s    *Store
	dgst v1.Hash
	once sync.Once
}

// Close closes the reader and releases the blob.
func (b *Blob) Close() error {
	err := b.BlobReader.Close()
	b.once.Do(func() { b.s.release(b.dgst) })
	return err
}

// OpenBlob opens a committed blob and records the access. It returns
// ErrNotFound when the blob is not cached. The blob store is opened
// outside the store's lock (an object store's open is a network request),
// with the entry marked as read meanwhile, so eviction leaves it alone.
func (s *Store) OpenBlob(dgst v1.Hash) (*Blob, error) {
	size, err := s.reserve(dgst)
	if err != nil {
		return nil, err
	}
	r, _, err := s.blobStore.Open(bg, dgst)
	if err != nil {
		s.release(dgst)
		if errors.Is(err, storage.ErrNotFound) {
			// Removed behind our back (cache verify, an operator, another
			// replica's eviction): forget it.
			s.mu.Lock()
			s.forgetLocked(dgst)
			s.mu.Unlock()
			s.deleteRecords(dgst)
			return nil, ErrNotFound
		}
		return nil, unavailable(err)
	}
	return &Blob{BlobReader: r, Size: size, s: s, dgst: dgst}, nil
}

// reserve marks a committed blob as being read and returns its size. With
// shared records, a blob another replica committed is entered into the
// index from its record: readers trust the record, not the object store.
func (s *Store) reserve(dgst v1.Hash) (int64, error) {
	s.mu.Lock()
	e, ok := s.blobs[dgst]
	if !ok {
		s.mu.Unlock()
		if !s.shared {
			return 0, ErrNotFound
		}
		rec, err := s.record(dgst)
		if err != nil || rec == nil {
			return 0, cmp.Or(err, ErrNotFound)
		}
		s.mu.Lock()
		if e, ok = s.blobs[dgst]; !ok {
			s.addLocked(dgst, rec.Size)
			e = s.blobs[dgst]
			e.stored = rec.Accessed
		}
	}
	now := time.Now()
	e.readers++
	e.atime = now
	s.dirty[dgst] = struct{}{}
	touch := s.shared && now.Sub(e.stored) > touchAfter
	if touch {
		e.stored = now
	}
	s.mu.Unlock()
	if touch {
		// Another replica's eviction judges by the record's access time:
		// a blob read here must look read there before a byte is sent.
		if err := s.touch(dgst, now); err != nil {
			s.release(dgst)
			if errors.Is(err, ErrNotFound) {
				s.mu.Lock()
				s.forgetLocked(dgst)
				s.mu.Unlock()
			}
			return 0, err
		}
	}
	return e.size, nil
}

// touchAfter is how stale the access time of a shared blob's record may be
// when a read starts: well within the grace period shared eviction keeps
// recently accessed blobs for (2 × cache.accessFlushInterval + 1 min).
const touchAfter = 30 * time.Second

// touch writes t as the access time of dgst's record at once; ErrNotFound
// when the record is gone (evicted meanwhile).
func (s *Store) touch(dgst v1.Hash, t time.Time) error {
	err := s.meta.Update(bg, func(tx storage.Tx) error {
		k := []byte(dgst.String())
		v, err := tx.Get(tableBlobs, k)
		if err != nil {
			return err
		}
		var rec blobRecord
		if v == nil || json.Unmarshal(v, &rec) != nil {
			return ErrNotFound
		}
		rec.Accessed = t
		v, _ = json.Marshal(rec)
		return tx.Put(tableBlobs, k, v)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return unavailable(err)
	}
	return err
}

// record reads the record of a committed blob (nil when there is none).
func (s *Store) record(dgst v1.Hash) (*blobRecord, error) {
	var rec *blobRecord
	err := s.meta.View(bg, func(tx storage.Tx) error {
		v, err := tx.Get(tableBlobs, []byte(dgst.String()))
		if v != nil && err == nil {
			rec = &blobRecord{}
			if json.Unmarshal(v, rec) != nil {
				rec = nil
			}
		}
		return err
	})
	if err != nil {
		return nil, unavailable(err)
	}
	return rec, nil
}

// unavailable marks an error of a store as storage.ErrUnavailable (a
// database or object store that does not answer), for a 503.
func unavailable(err error) error {
	if errors.Is(err, storage.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("cache: %w: %w", storage.ErrUnavailable, err)
}

// StatBlob returns the size of a committed blob without opening it.
func (s *Store) StatBlob(dgst v1.Hash) (int64, bool) {
	s.mu.Lock()
	e, ok := s.blobs[dgst]
	s.mu.Unlock()
	if ok {
		return e.size, true
	}
	if s.shared {
		if rec, err := s.record(dgst); err == nil && rec != nil {
			return rec.Size, true
		}
	}
	return 0, false
}

func (s *Store) release(dgst v1.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.blobs[dgst]; ok && e.readers > 0 {
		e.readers--
	}
}

// forgetLocked drops a blob from the in-memory index; the caller deletes its
// record with deleteRecords once s.mu is released.
func (s *Store) forgetLocked(dgst v1.Hash) {
	if e, ok := s.blobs[dgst]; ok {
		s.size -= e.size
		delete(s.blobs, dgst)
		delete(s.dirty, dgst)
	}
}

func (s *Store) deleteRecords(dgsts ...v1.Hash) {
	if len(dgsts) == 0 {
		return
	}
	err := s.meta.Update(bg, func(tx storage.Tx) error {
		for _, d := range dgsts {
			if err := tx.Delete(tableBlobs, []byte(d.String())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("deleting blob records", "err", err)
	}
}

// addLocked enters a blob its writer committed into the index. Called
// with s.mu held, in the same critical section that ends the fetch, so that
// a reader either joins the fetch or finds the blob. The record is written
// by putRecord after s.mu is released (a crash in between is repaired by
// load).
func (s *Store) addLocked(dgst v1.Hash, size int64) {
	if old, ok := s.blobs[dgst]; ok {
		s.size -= old.size
	}
	now := time.Now()
	s.blobs[dgst] = &blobEntry{size: size, atime: now, stored: now}
	s.size += size
}

func (s *Store) putRecord(dgst v1.Hash, size int64, upstream string) error {
	now := time.Now()
	rec, _ := json.Marshal(blobRecord{Size: size, Upstream: upstream, Created: now, Accessed: now})
	return s.meta.Update(bg, func(tx storage.Tx) error { return tx.Put(tableBlobs, []byte(dgst.String()), rec) })
}
