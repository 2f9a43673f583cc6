package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/internal/verify"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// Source opens the upstream body of a blob from byte off on: 0 for a
// fetch's first request, the number of bytes already received when the
// fetch resumes a body that went silent or broke off. It returns the body,
// the byte of the blob the body starts at (off, or 0 when upstream ignored
// the range and sent the whole blob: the store skips what it has) and the
// whole blob's size (-1 when upstream did not say). Each call gets a
// context of its own, which outlives the client request that started the
// fetch and ends when the store gives up on that body.
type Source func(ctx context.Context, off int64) (body io.ReadCloser, start, size int64, err error)

// ErrDigestMismatch and ErrSizeMismatch are the verification failures of a
// fetch or a transfer (those of internal/verify, which passthrough
// transfers read through), ErrStalled the end of one whose upstream went
// silent and stayed silent however often it was resumed; the blob is never
// kept.
var (
	ErrDigestMismatch = verify.ErrDigestMismatch
	ErrSizeMismatch   = verify.ErrSizeMismatch
	ErrStalled        = errors.New("upstream sent no data for too long")
	// ErrClaimLost ends a fetch whose cluster-wide claim lapsed (the
	// coordinating database did not answer in time, or another replica
	// took the fetch over): nothing of it is committed.
	ErrClaimLost = fmt.Errorf("this replica's claim on the work lapsed (%w)", storage.ErrUnavailable)
	errClosing   = errors.New("gatehouse is shutting down")
)

// DefaultStallTimeout aborts a fetch that receives no byte from upstream
// for this long, resumes included.
const DefaultStallTimeout = 2 * time.Minute

// FetchStats counts what fetches did, for metrics and tests.
type FetchStats struct {
	Started int64 // fetches that went to upstream
	Joined  int64 // requests that joined a fetch already under way
	Failed  int64
	// Bypassed counts transfers that skipped an unwritable cache.
	Bypassed int64
	// Peered counts requests streamed from the replica fetching the blob.
	Peered int64
	Bytes  int64 // bytes read from upstream
	// Memory counts the bytes readers of fetches were sent from the
	// fetches' chunks in memory rather than from the cache file.
	Memory int64
}

// fetch is one upstream download of a blob. The bytes go to a BlobWriter
// while they are hashed; every reader of the blob (the first included) is
// sent them from the fetch's chunks in memory while it has them, and from
// the writer's Partial reader after that (recent.go).
type fetch struct {
	dgst     v1.Hash
	w        storage.BlobWriter
	upstream string
	claim    Claim // the cluster's lease on this fetch; nil on one replica

	ready chan struct{} // closed once size is known or the fetch failed
	size  int64         // set before ready is closed; -1 unknown

	// broken is set when the blob could not be written; the download
	// stops and readers go on from upstream directly.
	broken atomic.Bool

	s *Store

	mu       sync.Mutex
	received int64 // bytes read from upstream, in order
	written  int64 // of them, bytes the blob writer has
	done     bool  // verified or failed
	err      error
	wake     chan struct{} // closed (and replaced) to wake readers
	// Bytes received since readers were last woken, and the timer that
	// wakes them for those at the latest after wakeDelay.
	unwoken   int64
	wakeTimer *time.Timer
	// The chunks readers may copy from (see recent.go): those of the bytes
	// from recentOff to received, each holding a reference.
	recent    []*chunk
	recentOff int64
}

func (f *fetch) failed() bool { return f.broken.Load() }

// Readers are woken for every wakeBytes received, and at the latest
// wakeDelay after a chunk arrived: often enough that bytes reach clients
// as they arrive, seldom enough that eight clients of a fast upstream do
// not cost eight wake-ups per network read.
const (
	wakeBytes = chunkSize
	wakeDelay = time.Millisecond
)

// progress records n more bytes written to the blob writer, or the end of
// the fetch: done once verified, or err.
func (f *fetch) progress(n int64, done bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written += n
	if done || err != nil {
		f.done, f.err = true, err
		f.trimLocked(-1)
		f.wakeLocked()
		return
	}
	f.trimLocked(f.retain())
}

// arrive hands readers a chunk just read from upstream; its bytes follow
// those received before.
func (f *fetch) arrive(c *chunk) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.recent) == 0 {
		f.recentOff = f.received
	}
	f.recent = append(f.recent, c)
	f.received += int64(c.n)
	f.unwoken += int64(c.n)
	switch {
	case f.unwoken >= wakeBytes:
		f.wakeLocked()
	case f.wakeTimer == nil:
		f.wakeTimer = time.AfterFunc(wakeDelay, func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.wakeTimer = nil
			if f.unwoken > 0 && !f.done {
				f.wakeLocked()
			}
		})
	}
}

// wakeLocked wakes every reader waiting for progress.
func (f *fetch) wakeLocked() {
	close(f.wake)
	f.wake = make(chan struct{})
	f.unwoken = 0
	if f.wakeTimer != nil {
		f.wakeTimer.Stop()
		f.wakeTimer = nil
	}
}

// Fetch returns a stream of the blob: the committed blob when cached, else
// a reader of the one upstream download of it, starting that download if
// nobody else has. The download belongs to the store, not to ctx: a client
// that hangs up does not cancel a fetch that others (or the cache) need.
// With a Coordinator, "nobody else" means no replica of the cluster: the
// blob another replica is fetching is streamed from that replica.
func (s *Store) Fetch(ctx context.Context, dgst v1.Hash, upstream string, src Source) (*Stream, error) {
	for tries := 0; ; tries++ {
		b, err := s.OpenBlob(dgst)
		if err == nil {
			return &Stream{file: b.BlobReader, blob: b}, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		st, err := s.startOrJoin(ctx, dgst, upstream, src)
		if err != errRetry || tries >= maxFetchTries {
			return st, err
		}
	}
}

// errRetry: the state changed while Fetch looked (the blob was committed,
// another request of this replica is starting its fetch): look again.
var errRetry = errors.New("cache: retry")

// maxFetchTries bounds Fetch's rounds; each one that finds a fetch of this
// replica being started waits retryDelay for it.
const (
	maxFetchTries = 200
	retryDelay    = 10 * time.Millisecond
)

// startOrJoin joins this replica's fetch of dgst or starts one.
func (s *Store) startOrJoin(ctx context.Context, dgst v1.Hash, upstream string, src Source) (*Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[dgst]; ok {
		return nil, errRetry // committed since OpenBlob looked
	}
	if f, ok := s.fetches[dgst]; ok {
		return s.joinLocked(f, upstream, src)
	}
	if s.closed {
		return nil, errClosing
	}
	if s.bypassingLocked() {
		return s.passStream(dgst, upstream, src), nil
	}
	reqCtx := ctx // a stream from a peer is the request's
	ctx = context.WithoutCancel(ctx)
	var claim Claim
	var w storage.BlobWriter
	var err error
	if s.coord != nil {
		// Claiming and creating are network calls: made without s.mu,
		// with dgst marked so that this replica's other requests for it
		// wait for the fetch instead of claiming it again.
		if s.claiming[dgst] {
			s.mu.Unlock()
			time.Sleep(retryDelay)
			s.mu.Lock()
			return nil, errRetry
		}
		s.claiming[dgst] = true
		s.mu.Unlock()
		var st *Stream
		st, claim, w, err = s.claimAndCreate(reqCtx, ctx, dgst, upstream, src)
		s.mu.Lock()
		delete(s.claiming, dgst)
		if st != nil || err != nil {
			return st, err
		}
	} else if w, err = s.blobStore.Create(ctx, dgst); err != nil {
		s.mu.Unlock()
		s.noteWriteError(&WriteError{Err: err})
		s.mu.Lock()
		return s.passStream(dgst, upstream, src), nil
	}
	r, err := w.Partial()
	if err != nil {
		w.Abort()
		if claim != nil {
			go claim.Release()
		}
		return nil, fmt.Errorf("cache: %w", err)
	}
	f := &fetch{s: s, dgst: dgst, w: w, upstream: upstream, claim: claim, ready: make(chan struct{}), size: -1, wake: make(chan struct{})}
	s.fetches[dgst] = f
	s.stats.Started++
	metrics.FetchesStarted.Inc()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(ctx, f, src)
	}()
	return &Stream{file: r, fetch: f, dgst: dgst, src: src, stall: s.stallFor(upstream)}, nil
}

// joinLocked returns a reader of the fetch f in progress. A fetch stays in
// s.fetches until its blob is committed and indexed; Partial reads the
// committed blob once the writer committed it.
func (s *Store) joinLocked(f *fetch, upstream string, src Source) (*Stream, error) {
	r, err := f.w.Partial()
	if err != nil {
		return nil, fmt.Errorf("cache: joining fetch: %w", err)
	}
	s.stats.Joined++
	metrics.FetchesJoined.Inc()
	return &Stream{file: r, fetch: f, dgst: f.dgst, src: src, stall: s.stallFor(upstream)}, nil
}

// Stats returns a snapshot of the fetch counters.
func (s *Store) Stats() FetchStats {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	st.Bytes = s.fetchedBytes.Load()
	st.Memory = s.memoryBytes.Load()
	return st
}

// run downloads the blob of f and, once verified, commits it.
func (s *Store) run(parent context.Context, f *fetch, src Source) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	var lost <-chan struct{} // nil (never ready) without a claim
	if f.claim != nil {
		lost = f.claim.Lost()
		defer f.claim.Release()
	}
	go func() {
		select {
		case <-s.closing:
			cancel(errClosing)
		case <-lost:
			// Another replica may take the fetch over: stop, commit nothing.
			cancel(ErrClaimLost)
		case <-ctx.Done():
		}
	}()
	stallAfter := s.stallFor(f.upstream)
	stall := time.AfterFunc(stallAfter, func() { cancel(ErrStalled) })
	defer stall.Stop()

	err := s.download(ctx, f, src, stall, stallAfter)
	if err != nil && context.Cause(ctx) != nil && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrSizeMismatch) {
		err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	if err != nil {
		s.fail(f, err)
		return
	}
	if f.claim != nil {
		// Fencing: commit only under a claim that is still this replica's.
		if err := f.claim.Confirm(parent); err != nil {
			s.fail(f, err)
			return
		}
	}
	// Readers have everything and it is verified; now make it durable.
	f.progress(0, true, nil)
	err = f.w.Commit(parent)
	s.mu.Lock()
	if err == nil {
		s.addLocked(f.dgst, f.written)
	}
	delete(s.fetches, f.dgst)
	s.mu.Unlock()
	if err != nil {
		f.w.Abort()
		s.noteWriteError(err)
		s.log.Error("caching blob failed; it was served but not kept", "digest", f.dgst, "err", err)
		return
	}
	if err := s.putRecord(f.dgst, f.written, f.upstream); err != nil {
		// The blob is committed; its record is not (the record store did
		// not answer): the next start of a local store repairs it, and a
		// replica of a shared one fetches the blob again. Not a reason to
		// stop writing blobs.
		s.log.Error("recording a cached blob failed", "digest", f.dgst, "err", err)
		return
	}
	s.Evict(0)
}

// fail ends a fetch that did not get its blob: readers get err, and what
// was written is discarded once no new reader can join.
func (s *Store) fail(f *fetch, err error) {
	f.progress(0, true, err)
	select {
	case <-f.ready:
	default:
		close(f.ready)
	}
	s.mu.Lock()
	delete(s.fetches, f.dgst)
	s.stats.Failed++
	s.mu.Unlock()
	metrics.FetchesFailed.Inc()
	if f.claim != nil {
		f.claim.Release() // before the abort, which may wait on the object store
	}
	if aerr := f.w.Abort(); aerr != nil {
		s.log.Warn("discarding a failed blob fetch", "digest", f.dgst, "err", aerr)
	}
	if werr := (*WriteError)(nil); errors.As(err, &werr) {
		s.noteWriteError(err)
		return
	}
	s.log.Warn("blob fetch failed; nothing cached", "digest", f.dgst, "upstream", f.upstream, "err", err)
}

// stallFor is how long a download from upstream may receive no byte,
// resumes included.
func (s *Store) stallFor(upstream string) time.Duration {
	if d := s.stallTimeouts[upstream]; d > 0 {
		return d
	}
	return s.stallTimeout
}

// resumeFor is how long a download from upstream may receive nothing
// before it is resumed: less than its stall timeout, or it never would be.
func (s *Store) resumeFor(upstream string) time.Duration {
	d := s.resumeAfter
	if u := s.resumeAfters[upstream]; u > 0 {
		d = u
	}
	if stall := s.stallFor(upstream); d >= stall {
		d = stall / 2
	}
	return d
}

// pipelineDepth bounds the chunks between the upstream reader and the blob
// writer or the hasher: a fetch holds at most pipelineDepth+3 chunks in
// its pipeline (the queue, and one each in the reader, the writer and the
// hasher), and retainChunks more it keeps for its readers (recent.go).
const pipelineDepth = 4

// download copies upstream's body to the blob writer and hashes it. The
// three jobs run side by side, each on its own goroutine, so that a cold
// blob moves as fast as the slowest of them rather than their sum; readers
// see each chunk once it is read, before it is written. A body that goes silent or breaks
// off is resumed from the bytes received (see transfer); the hash runs over
// every byte in order, so the digest is verified end to end all the same.
func (s *Store) download(ctx context.Context, f *fetch, src Source, stall *time.Timer, stallAfter time.Duration) error {
	t := &transfer{s: s, f: f, src: src, stall: stall, stallAfter: stallAfter, resumeAfter: s.resumeFor(f.upstream)}
	size, err := t.open(ctx, 0, true)
	if err != nil {
		return err
	}
	t.size = size
	f.size = size
	close(f.ready)

	toHash := make(chan *chunk, pipelineDepth)
	toFile := make(chan *chunk, pipelineDepth)
	sum := make(chan string, 1)
	go func() {
		h := sha256.New()
		for c := range toHash {
			h.Write(c.bytes())
			c.release()
		}
		sum <- hex.EncodeToString(h.Sum(nil))
	}()
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for c := range toFile {
			if werr == nil {
				if _, err := f.w.Write(c.bytes()); err != nil {
					werr = &WriteError{Err: err}
					f.broken.Store(true)
				} else {
					f.progress(int64(c.n), false, nil)
				}
			}
			c.release()
		}
	}()

	rerr := t.read(ctx, toHash, toFile)
	close(toHash)
	close(toFile)
	wg.Wait()
	got := <-sum
	switch {
	case werr != nil:
		return werr
	case rerr != nil:
		return rerr
	case size >= 0 && f.written != size:
		return ErrSizeMismatch
	case got != f.dgst.Hex:
		return fmt.Errorf("%w: got sha256:%s", ErrDigestMismatch, got)
	}
	return nil
}
