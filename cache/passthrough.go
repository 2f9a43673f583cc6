package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/internal/verify"
	"github.com/gatehouse/gatehouse/metrics"
)

// WriteError is a failure to write the cache: a full disk, a read-only or
// vanished data directory. Pulls do not fail for it: the blob is streamed
// from upstream to the client, verified, and not kept.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "cache: writing: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// DefaultWriteRetryInterval is how long after a failed cache write new
// downloads bypass the cache before writing is tried again.
const DefaultWriteRetryInterval = 30 * time.Second

// noteWriteError records that the cache could not be written: downloads
// bypass it for a while, and a full disk makes room by evicting the least
// recently used tenth of the blobs nobody reads.
func (s *Store) noteWriteError(err error) {
	metrics.CacheWriteErrors.Inc()
	s.mu.Lock()
	first := s.writeFailed.IsZero() || time.Since(s.writeFailed) >= s.writeRetry
	s.writeFailed = time.Now()
	size := s.size
	s.mu.Unlock()
	if first {
		s.log.Error("cannot write the cache; blobs are streamed from upstream without being kept",
			"err", err, "retry_in", s.writeRetry)
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		if n, freed := s.Evict(size - size/10); n > 0 {
			s.log.Warn("disk full: evicted least recently used blobs", "blobs", n, "bytes", freed)
		}
	}
}

// bypassing reports whether new downloads should skip the cache because a
// write failed recently. Called with s.mu held.
func (s *Store) bypassingLocked() bool {
	return !s.writeFailed.IsZero() && time.Since(s.writeFailed) < s.writeRetry
}

// passStream returns a stream that reads the blob from upstream without
// caching it. Called with s.mu held.
func (s *Store) passStream(dgst v1.Hash, upstream string, src Source) *Stream {
	s.stats.Bypassed++
	metrics.BlobPassthroughs.Inc()
	return &Stream{dgst: dgst, src: src, stall: s.stallFor(upstream)}
}

// passReader reads a blob straight from upstream through a verify.Reader
// that holds the last byte back until size and digest were verified, so
// that a failed transfer never looks complete.
type passReader struct {
	vr   *verify.Reader
	size int64

	// The transfer ends with ErrStalled when upstream sends nothing for
	// stall: the watchdog cancels ctx, which the body's reads follow.
	ctx      context.Context
	cancel   context.CancelCauseFunc
	stall    time.Duration
	watchdog *time.Timer
}

// openPass starts a transfer of its own from upstream and skips its first
// skip bytes (hashing them). A transfer that receives nothing for stall
// fails with ErrStalled.
func openPass(ctx context.Context, dgst v1.Hash, src Source, skip int64, stall time.Duration) (*passReader, error) {
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	ctx, cancel := context.WithCancelCause(ctx)
	watchdog := time.AfterFunc(stall, func() { cancel(ErrStalled) })
	body, _, size, err := src(ctx, 0) // from byte 0, so it starts there
	if err != nil {
		watchdog.Stop()
		cancel(nil)
		return nil, stalledOr(ctx, err)
	}
	p := &passReader{size: size, ctx: ctx, cancel: cancel, stall: stall, watchdog: watchdog}
	p.vr = verify.ReadCloser(watchedBody{body, p}, size, dgst, verify.HoldLast())
	if skip > 0 {
		if err := discard(p, skip); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

// watchedBody resets its transfer's stall watchdog whenever upstream sent
// bytes.
type watchedBody struct {
	io.ReadCloser
	p *passReader
}

func (b watchedBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if n > 0 {
		b.p.watchdog.Reset(b.p.stall)
	}
	return n, err
}

// close ends the transfer.
func (p *passReader) close() {
	p.watchdog.Stop()
	p.cancel(nil)
	p.vr.Close()
}

// stalledOr returns ErrStalled (wrapping err) when ctx was ended by the
// stall watchdog, else err.
func stalledOr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), ErrStalled) {
		return fmt.Errorf("%w (%v)", ErrStalled, err)
	}
	return err
}

// Read reads verified bytes; a failed read of the body that the watchdog
// caused is ErrStalled.
func (p *passReader) Read(b []byte) (int, error) {
	n, err := p.vr.Read(b)
	if err != nil && err != io.EOF && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrSizeMismatch) {
		err = stalledOr(p.ctx, err)
	}
	return n, err
}

// discard reads and drops n bytes of r, with a pooled buffer.
func discard(r io.Reader, n int64) error {
	_, err := copyExactly(io.Discard, r, n)
	return err
}

// skipReader discards its first skip bytes.
type skipReader struct {
	r    io.Reader
	skip int64
}

func (s *skipReader) Read(b []byte) (int, error) {
	if s.skip > 0 {
		if err := discard(s.r, s.skip); err != nil {
			return 0, err
		}
		s.skip = 0
	}
	return s.r.Read(b)
}
