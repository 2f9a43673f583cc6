// Package cache is gatehouse's content store: blobs as files named by their
// digest, metadata (manifests, tag mappings, blob sizes, access times) in a
// bbolt database, one upstream fetch per uncached blob however many clients
// wait for it, and least-recently-used eviction under a size limit.
package cache

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/metrics"
)

// ErrNotFound is returned for an object the store does not hold.
var ErrNotFound = errors.New("not in cache")

var (
	bucketBlobs     = []byte("blobs")
	bucketManifests = []byte("manifests")
	bucketTags      = []byte("tags")
)

// Options configure a Store.
type Options struct {
	// Dir is the data directory; blobs live in Dir/blobs, partial downloads
	// in Dir/tmp and metadata in Dir/meta.db.
	Dir string
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
	// Log receives the store's own events.
	Log *slog.Logger

	lockTimeout time.Duration // how long Open waits for the directory; tests shorten it
	maxChunks   int           // DefaultMaxFetchChunks unless a test sets it
}

// Store is the content store. It is safe for concurrent use.
type Store struct {
	dir     string
	db      *bolt.DB
	log     *slog.Logger
	maxSize int64

	mu      sync.Mutex
	blobs   map[v1.Hash]*blobEntry
	fetches map[v1.Hash]*fetch
	size    int64 // bytes of committed blobs
	dirty   map[v1.Hash]struct{}
	stats   FetchStats
	closed  bool

	fetchedBytes  atomic.Int64
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
	readers int // open readers; an entry in use is never evicted
}

// blobRecord is the bbolt value of a blob.
type blobRecord struct {
	Size     int64     `json:"size"`
	Upstream string    `json:"upstream,omitempty"`
	Created  time.Time `json:"created"`
	Accessed time.Time `json:"accessed"`
}

// Open opens (creating if needed) the store in opts.Dir. Partial downloads
// left by a crash are removed; blob files and database entries are
// reconciled (a file in blobs/ was verified before it was renamed there).
func Open(opts Options) (*Store, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Store{
		dir:     opts.Dir,
		log:     opts.Log,
		maxSize: opts.MaxSize,
		blobs:   map[v1.Hash]*blobEntry{},
		fetches: map[v1.Hash]*fetch{},
		dirty:   map[v1.Hash]struct{}{},
		closing: make(chan struct{}),

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
	for _, d := range []string{s.dir, s.tmpDir(), filepath.Join(s.dir, "blobs", "sha256")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	// The database's lock is the data directory's: only its holder may
	// clear partial downloads, which a running gatehouse (or one being
	// started by mistake on the same directory) may be writing.
	lockWait := opts.lockTimeout
	if lockWait <= 0 {
		lockWait = 5 * time.Second
	}
	db, err := bolt.Open(filepath.Join(s.dir, "meta.db"), 0o640, &bolt.Options{Timeout: lockWait})
	if err != nil {
		return nil, fmt.Errorf("cache: open %s: %w (is another gatehouse using this data directory?)", filepath.Join(s.dir, "meta.db"), err)
	}
	s.db = db
	if err := s.cleanTmp(); err != nil {
		db.Close()
		return nil, err
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBlobs, bucketManifests, bucketTags} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close stops running fetches (their readers fail), waits for them, flushes
// access times and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(s.FlushAccess(), s.db.Close())
}

func (s *Store) tmpDir() string { return filepath.Join(s.dir, "tmp") }

func (s *Store) blobPath(d v1.Hash) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm, d.Hex[:2], d.Hex)
}

func (s *Store) cleanTmp() error {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(s.tmpDir(), e.Name())); err != nil {
			return fmt.Errorf("cache: removing partial download: %w", err)
		}
	}
	if len(ents) > 0 {
		s.log.Info("removed partial downloads left by an earlier run", "count", len(ents))
	}
	return nil
}

// load builds the in-memory blob index from the files on disk and their
// records, dropping records whose file is gone.
func (s *Store) load() error {
	files := map[v1.Hash]int64{}
	root := filepath.Join(s.dir, "blobs", "sha256")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		h, herr := v1.NewHash("sha256:" + d.Name())
		if herr != nil || filepath.Base(filepath.Dir(p)) != h.Hex[:2] {
			s.log.Warn("removing stray file from the blob store", "path", p)
			return os.Remove(p)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files[h] = info.Size()
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scanning blobs: %w", err)
	}
	now := time.Now()
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		var gone [][]byte
		err := b.ForEach(func(k, v []byte) error {
			h, err := v1.NewHash(string(k))
			size, ok := files[h]
			if err != nil || !ok {
				gone = append(gone, k)
				return nil
			}
			var rec blobRecord
			if json.Unmarshal(v, &rec) != nil || rec.Size != size {
				rec = blobRecord{Size: size, Created: now, Accessed: now}
			}
			s.blobs[h] = &blobEntry{size: size, atime: rec.Accessed}
			s.size += size
			delete(files, h)
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		// Files without a record: committed just before a crash.
		for h, size := range files {
			rec, _ := json.Marshal(blobRecord{Size: size, Created: now, Accessed: now})
			if err := b.Put([]byte(h.String()), rec); err != nil {
				return err
			}
			s.blobs[h] = &blobEntry{size: size, atime: now}
			s.size += size
		}
		return nil
	})
}

// Blob is an open, committed blob. Close it to let eviction consider it.
type Blob struct {
	*os.File
	Size int64
	s    *Store
	dgst v1.Hash
	once sync.Once
}

// Close closes the file and releases the blob.
func (b *Blob) Close() error {
	err := b.File.Close()
	b.once.Do(func() { b.s.release(b.dgst) })
	return err
}

// OpenBlob opens a committed blob and records the access. It returns
// ErrNotFound when the blob is not cached.
func (s *Store) OpenBlob(dgst v1.Hash) (*Blob, error) {
	s.mu.Lock()
	b, err := s.openLocked(dgst)
	s.mu.Unlock()
	if errors.Is(err, errVanished) {
		s.deleteRecords(dgst)
		return nil, ErrNotFound
	}
	return b, err
}

// errVanished: the index knew the blob but its file is gone.
var errVanished = errors.New("blob file vanished")

func (s *Store) openLocked(dgst v1.Hash) (*Blob, error) {
	e, ok := s.blobs[dgst]
	if !ok {
		return nil, ErrNotFound
	}
	f, err := os.Open(s.blobPath(dgst))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// Removed behind our back (cache verify, an operator): forget it.
			s.forgetLocked(dgst)
			return nil, errVanished
		}
		return nil, fmt.Errorf("cache: %w", err)
	}
	e.readers++
	e.atime = time.Now()
	s.dirty[dgst] = struct{}{}
	return &Blob{File: f, Size: e.size, s: s, dgst: dgst}, nil
}

// StatBlob returns the size of a committed blob without opening it.
func (s *Store) StatBlob(dgst v1.Hash) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[dgst]
	if !ok {
		return 0, false
	}
	return e.size, true
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
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, d := range dgsts {
			if err := tx.Bucket(bucketBlobs).Delete([]byte(d.String())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("deleting blob records", "err", err)
	}
}

// commitLocked moves a verified, synced download into the store. Called
// with s.mu held, so that a reader joining the fetch either opens the
// partial file or finds the committed one. The record is written by
// putRecord after s.mu is released (a crash in between is repaired by load).
func (s *Store) commitLocked(dgst v1.Hash, tmp string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(s.blobPath(dgst)), 0o750); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.blobPath(dgst)); err != nil {
		return err
	}
	if old, ok := s.blobs[dgst]; ok {
		s.size -= old.size
	}
	s.blobs[dgst] = &blobEntry{size: size, atime: time.Now()}
	s.size += size
	return nil
}

func (s *Store) putRecord(dgst v1.Hash, size int64, upstream string) error {
	now := time.Now()
	rec, _ := json.Marshal(blobRecord{Size: size, Upstream: upstream, Created: now, Accessed: now})
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBlobs).Put([]byte(dgst.String()), rec) })
}
