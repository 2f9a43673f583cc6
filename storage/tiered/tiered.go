// Package tiered puts a replica's local disk in front of a shared
// BlobStore (S3), so that warm pulls are served from a local file (with
// sendfile) instead of crossing the network to the object store.
//
// The local tier is a cache of the remote store, never its truth: Stat
// and Walk are the remote's, and a blob is in the tier only as a copy
// whose bytes were verified against its digest, so a copy is always safe
// to serve. Copies get there two ways:
//
//   - write-through: Create tees the bytes into a local writer, committed
//     after the remote Commit succeeded (the caller commits only what it
//     verified);
//   - read-through: Open of a blob the tier lacks returns the remote
//     reader and copies the blob in the background from a second remote
//     read, hashing it, and commits the copy only if digest and size match.
//
// A copy may outlive its remote blob (deleted by another replica): it
// still holds the digest's bytes, but Stat answers "not found" for it.
//
// The tier holds at most maxBytes: the least recently opened copies are
// deleted first. Sizes and the order of use are kept in memory; at start
// the local store is walked (in no particular order of use).
package tiered

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// maxFills bounds the background copies into the tier running at once;
// a blob opened while all are busy is copied the next time it is opened.
const maxFills = 4

// Store is a BlobStore of a remote store with a local tier in front. It
// is safe for concurrent use.
type Store struct {
	remote, local storage.BlobStore
	max           int64
	log           *slog.Logger

	// fillCtx is the lifetime of the background copies: Close cancels it.
	fillCtx context.Context
	stop    context.CancelFunc
	fills   sync.WaitGroup
	slots   chan struct{} // one token per running copy

	mu      sync.Mutex // guards what follows
	lru     *list.List // of *entry, most recently used first
	entries map[v1.Hash]*list.Element
	used    int64 // bytes of the entries and of the reservations
	filling map[v1.Hash]*fill
	closed  bool
}

// entry is a copy in the local tier.
type entry struct {
	dgst v1.Hash
	size int64
}

// fill is a background copy (or a write-through) under way; Delete sets
// dropped so that it is not committed after the blob was deleted.
type fill struct {
	dropped bool
}

var _ storage.BlobStore = (*Store)(nil)

// New returns remote with local as its tier of at most maxBytes (local is
// usually a localblob.Store of the replica's own directory, which nothing
// else writes). The copies already in local are counted (and the tier
// trimmed to maxBytes); if they cannot be listed the error is logged and
// they are not counted. log may be nil.
func New(remote, local storage.BlobStore, maxBytes int64, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Store{
		remote: remote, local: local, max: maxBytes, log: log,
		fillCtx: ctx, stop: stop, slots: make(chan struct{}, maxFills),
		lru: list.New(), entries: map[v1.Hash]*list.Element{}, filling: map[v1.Hash]*fill{},
	}
	err := local.Walk(ctx, func(d v1.Hash, size int64) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.addLocked(d, size)
		return nil
	})
	if err != nil {
		log.Error("tiered: listing the local tier failed; copies in it are not counted", "err", err)
	}
	s.mu.Lock()
	victims := s.evictLocked(0)
	s.mu.Unlock()
	s.remove(victims)
	return s
}

// Close stops the background copies and waits for them. The store must
// not be used afterwards; the stores it wraps stay open.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.stop()
	s.fills.Wait()
	return nil
}

// addLocked records a copy as the most recently used.
func (s *Store) addLocked(d v1.Hash, size int64) {
	if el, ok := s.entries[d]; ok {
		s.lru.MoveToFront(el)
		return
	}
	s.entries[d] = s.lru.PushFront(&entry{dgst: d, size: size})
	s.used += size
}

// evictLocked drops the least recently used copies until need more
// bytes fit, and returns them for remove (called without the lock).
func (s *Store) evictLocked(need int64) []v1.Hash {
	var victims []v1.Hash
	for s.used+need > s.max {
		el := s.lru.Back()
		if el == nil {
			break
		}
		e := s.lru.Remove(el).(*entry)
		delete(s.entries, e.dgst)
		s.used -= e.size
		victims = append(victims, e.dgst)
	}
	return victims
}

// remove deletes evicted copies from the local store. A reader that has
// one open keeps reading it.
func (s *Store) remove(victims []v1.Hash) {
	for _, d := range victims {
		if err := s.local.Delete(context.Background(), d); err != nil {
			s.log.Warn("tiered: evicting a local copy failed", "digest", d, "err", err)
		}
	}
}

// reserve makes room for a copy of size bytes about to be written, and
// registers it as under way. It fails if the copy cannot be kept (too
// large, already there or under way, the store closed).
func (s *Store) reserve(d v1.Hash, size int64) (*fill, bool) {
	s.mu.Lock()
	if _, ok := s.entries[d]; ok || s.closed || size > s.max || s.filling[d] != nil {
		s.mu.Unlock()
		return nil, false
	}
	victims := s.evictLocked(size)
	s.used += size
	f := &fill{}
	s.filling[d] = f
	s.mu.Unlock()
	s.remove(victims)
	return f, true
}

// settle ends a reservation: the copy is recorded as there when kept, its
// room is given back otherwise. It reports false when the copy must not
// be committed (or, once committed, must be deleted again) because the
// blob was deleted meanwhile.
func (s *Store) settle(d v1.Hash, f *fill, size int64, kept bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filling[d] == f {
		delete(s.filling, d)
	}
	s.used -= size
	if !kept || f.dropped {
		return false
	}
	s.addLocked(d, size)
	return true
}

// Open returns the local copy (an *os.File from localblob) when there is
// one; else the remote reader, while a background copy fills the tier.
func (s *Store) Open(ctx context.Context, dgst v1.Hash) (storage.BlobReader, int64, error) {
	r, size, err := s.local.Open(ctx, dgst)
	if err == nil {
		s.mu.Lock()
		s.addLocked(dgst, size)
		s.mu.Unlock()
		return r, size, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		s.log.Warn("tiered: opening a local copy failed; reading the remote store", "digest", dgst, "err", err)
	}
	r, size, err = s.remote.Open(ctx, dgst)
	if err != nil {
		return nil, 0, err
	}
	s.startFill(dgst, size)
	return r, size, nil
}

// startFill starts a background copy of a remote blob into the tier,
// unless it cannot be kept or every copy slot is busy.
func (s *Store) startFill(d v1.Hash, size int64) {
	select {
	case s.slots <- struct{}{}:
	default:
		return
	}
	f, ok := s.reserve(d, size)
	if !ok {
		<-s.slots
		return
	}
	s.fills.Add(1)
	go func() {
		defer s.fills.Done()
		defer func() { <-s.slots }()
		err := s.fill(s.fillCtx, d, f, size)
		if err != nil && s.fillCtx.Err() == nil {
			s.log.Warn("tiered: copying a blob into the local tier failed", "digest", d, "err", err)
		}
	}()
}

// errDropped ends a copy of a blob deleted while it was made.
var errDropped = errors.New("the blob was deleted meanwhile")

// fill copies a remote blob into the local tier, verifying it against its
// digest and size before it is committed there.
func (s *Store) fill(ctx context.Context, d v1.Hash, f *fill, size int64) (err error) {
	kept := false
	defer func() {
		if !s.settle(d, f, size, kept) && kept {
			s.local.Delete(context.Background(), d)
			err = errDropped
		}
	}()
	if d.Algorithm != "sha256" {
		return fmt.Errorf("cannot verify a %s digest", d.Algorithm)
	}
	r, n, err := s.remote.Open(ctx, d)
	if err != nil {
		return err
	}
	defer r.Close()
	if n != size {
		return fmt.Errorf("the remote blob changed size (%d, then %d bytes)", size, n)
	}
	w, err := s.local.Create(ctx, d)
	if err != nil {
		return err
	}
	h := sha256.New()
	copied, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(r, size+1))
	if err == nil {
		switch got := hex.EncodeToString(h.Sum(nil)); {
		case copied != size:
			err = fmt.Errorf("the remote blob has %d bytes, not %d", copied, size)
		case got != d.Hex:
			err = fmt.Errorf("the remote blob's bytes hash to sha256:%s", got)
		}
	}
	if err == nil {
		s.mu.Lock()
		dropped := f.dropped
		s.mu.Unlock()
		if dropped {
			err = errDropped
		}
	}
	if err != nil {
		w.Abort()
		return err
	}
	if err := w.Commit(ctx); err != nil {
		w.Abort()
		return err
	}
	kept = true
	return nil
}

// Stat returns the remote store's answer: the tier is a cache.
func (s *Store) Stat(ctx context.Context, dgst v1.Hash) (int64, error) {
	return s.remote.Stat(ctx, dgst)
}

// Walk walks the remote store.
func (s *Store) Walk(ctx context.Context, fn func(dgst v1.Hash, size int64) error) error {
	return s.remote.Walk(ctx, fn)
}

// Delete removes the blob from both stores; a copy being made is not
// kept.
func (s *Store) Delete(ctx context.Context, dgst v1.Hash) error {
	s.mu.Lock()
	if f := s.filling[dgst]; f != nil {
		f.dropped = true
	}
	if el, ok := s.entries[dgst]; ok {
		s.lru.Remove(el)
		delete(s.entries, dgst)
		s.used -= el.Value.(*entry).size
	}
	s.mu.Unlock()
	lerr := s.local.Delete(ctx, dgst)
	if err := s.remote.Delete(ctx, dgst); err != nil {
		return err
	}
	return lerr
}

// Create returns the remote store's writer, with the bytes teed into a
// local writer while they fit in the tier. The local copy is committed
// only after the remote Commit succeeded; a failure of the local writer
// only loses the copy.
func (s *Store) Create(ctx context.Context, dgst v1.Hash) (storage.BlobWriter, error) {
	rw, err := s.remote.Create(ctx, dgst)
	if err != nil {
		return nil, err
	}
	w := &writer{s: s, dgst: dgst, remote: rw}
	s.mu.Lock()
	_, there := s.entries[dgst]
	s.mu.Unlock()
	if !there && s.max > 0 {
		lw, err := s.local.Create(ctx, dgst)
		if err != nil {
			s.log.Warn("tiered: no local copy of a blob being written", "digest", dgst, "err", err)
		} else {
			w.local = lw
		}
	}
	return w, nil
}

// writer writes to the remote writer and, while it can, the local one.
type writer struct {
	s       *Store
	dgst    v1.Hash
	remote  storage.BlobWriter
	local   storage.BlobWriter // nil once dropped
	written int64
}

// Write writes to the remote writer, then to the local one; an error of
// the local writer drops the local copy, not the write.
func (w *writer) Write(p []byte) (int, error) {
	n, err := w.remote.Write(p)
	w.written += int64(n)
	if w.local != nil {
		if w.written > w.s.max {
			w.dropLocal(nil)
		} else if _, lerr := w.local.Write(p[:n]); lerr != nil {
			w.dropLocal(lerr)
		}
	}
	return n, err
}

func (w *writer) dropLocal(err error) {
	if err != nil {
		w.s.log.Warn("tiered: dropping the local copy of a blob being written", "digest", w.dgst, "err", err)
	}
	w.local.Abort()
	w.local = nil
}

// Partial reads through the remote writer, which has every byte.
func (w *writer) Partial() (storage.BlobReader, error) { return w.remote.Partial() }

// Commit commits the remote blob and then, if it was kept whole and fits,
// the local copy.
func (w *writer) Commit(ctx context.Context) error {
	if err := w.remote.Commit(ctx); err != nil {
		return err
	}
	if w.local == nil {
		return nil
	}
	lw := w.local
	w.local = nil
	f, ok := w.s.reserve(w.dgst, w.written)
	if !ok {
		lw.Abort()
		return nil
	}
	kept := lw.Commit(ctx) == nil
	if !kept {
		lw.Abort()
	}
	if !w.s.settle(w.dgst, f, w.written, kept) && kept {
		w.s.local.Delete(context.Background(), w.dgst)
	}
	return nil
}

// Abort aborts both writers; after Commit it does nothing.
func (w *writer) Abort() error {
	if w.local != nil {
		w.local.Abort()
		w.local = nil
	}
	return w.remote.Abort()
}
