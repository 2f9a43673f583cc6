package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/metrics"
)

// Source opens the upstream body of a blob and says how long it is (-1 when
// upstream did not say). It is called once per fetch, with a context that
// outlives the request that started the fetch.
type Source func(ctx context.Context) (body io.ReadCloser, size int64, err error)

// ErrDigestMismatch and ErrSizeMismatch are the verification failures of a
// fetch, ErrStalled the end of one whose upstream went silent; the blob is
// never kept.
var (
	ErrDigestMismatch = errors.New("upstream sent content that does not match the digest")
	ErrSizeMismatch   = errors.New("upstream sent a different number of bytes than it announced")
	ErrStalled        = errors.New("upstream sent no data for too long")
	errClosing        = errors.New("gatehouse is shutting down")
)

// DefaultStallTimeout aborts a fetch whose upstream sends nothing for this
// long.
const DefaultStallTimeout = 2 * time.Minute

// FetchStats counts what fetches did, for metrics and tests.
type FetchStats struct {
	Started int64 // fetches that went to upstream
	Joined  int64 // requests that joined a fetch already under way
	Failed  int64
	Bytes   int64 // bytes read from upstream
}

// fetch is one upstream download of a blob. The bytes go to a partial file
// while they are hashed; every reader of the blob (the first included)
// streams from that growing file.
type fetch struct {
	dgst     v1.Hash
	path     string
	upstream string

	ready chan struct{} // closed once size is known or the fetch failed
	size  int64         // set before ready is closed; -1 unknown

	mu      sync.Mutex
	written int64
	done    bool // verified or failed
	err     error
	wake    chan struct{} // closed (and replaced) on every change
}

func (f *fetch) progress(n int64, done bool, err error) {
	f.mu.Lock()
	f.written += n
	if done || err != nil {
		f.done, f.err = true, err
	}
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

// Stream is a reader's handle on a blob: either a committed file or a
// fetch in progress. Close it when done.
type Stream struct {
	file  *os.File
	blob  *Blob  // committed
	fetch *fetch // in progress
}

// Size returns the blob's size, or -1 when upstream did not announce it.
// For a fetch it is only valid after Wait returned nil.
func (st *Stream) Size() int64 {
	if st.blob != nil {
		return st.blob.Size
	}
	return st.fetch.size
}

// File returns the open file of a committed blob (for sendfile and
// ranges), or nil while the blob is being fetched.
func (st *Stream) File() *os.File {
	if st.blob != nil {
		return st.file
	}
	return nil
}

// Wait blocks until upstream answered (the size is known), the fetch
// failed (its error is returned, e.g. an *upstream.Error for a 404), or
// ctx ends.
func (st *Stream) Wait(ctx context.Context) error {
	if st.blob != nil {
		return nil
	}
	select {
	case <-st.fetch.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	st.fetch.mu.Lock()
	defer st.fetch.mu.Unlock()
	if st.fetch.written == 0 && st.fetch.err != nil {
		return st.fetch.err
	}
	return nil
}

// Close releases the stream.
func (st *Stream) Close() error {
	if st.blob != nil {
		return st.blob.Close()
	}
	return st.file.Close()
}

// Reader returns a reader of the blob from offset off. Reading a fetch in
// progress blocks until bytes arrive; flush (may be nil) is called before
// blocking, so that bytes already read reach the client. The last byte of
// a blob is released only after its digest and size were verified, so a
// failed fetch can never look like a complete one; a failure returns the
// fetch's error.
func (st *Stream) Reader(ctx context.Context, off int64, flush func()) io.Reader {
	if st.blob != nil {
		return io.NewSectionReader(st.file, off, st.blob.Size-off)
	}
	return &fetchReader{ctx: ctx, f: st.fetch, file: st.file, pos: off, flush: flush}
}

type fetchReader struct {
	ctx   context.Context
	f     *fetch
	file  *os.File
	pos   int64
	flush func()
}

func (r *fetchReader) Read(p []byte) (int, error) {
	avail, err := r.f.await(r.ctx, r.pos, r.flush)
	if err != nil {
		return 0, err
	}
	n := min(int64(len(p)), avail-r.pos)
	m, err := r.file.ReadAt(p[:n], r.pos)
	r.pos += int64(m)
	if err == io.EOF && m > 0 {
		err = nil
	}
	return m, err
}

// await blocks until bytes beyond pos may be read, and returns how many
// bytes of the blob may be read in all. It returns io.EOF at the end of a
// verified blob and the fetch's error when it failed. The last byte is held
// back until the digest and size were verified.
func (f *fetch) await(ctx context.Context, pos int64, flush func()) (int64, error) {
	for {
		f.mu.Lock()
		avail, done, err, wake := f.written, f.done, f.err, f.wake
		f.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if !done && f.size > 0 && avail >= f.size {
			avail = f.size - 1
		}
		if pos < avail {
			return avail, nil
		}
		if done {
			return 0, io.EOF
		}
		if flush != nil {
			flush()
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Send writes the blob's bytes [off, end) to w as they arrive, straight
// from the file (w's ReadFrom uses sendfile for a file, so a connection
// gets the bytes without copying them through gatehouse). It returns the
// bytes written, and the fetch's error when the fetch failed.
func (st *Stream) Send(ctx context.Context, w io.Writer, off, end int64, flush func()) (int64, error) {
	if st.blob != nil {
		if _, err := st.file.Seek(off, io.SeekStart); err != nil {
			return 0, err
		}
		return io.Copy(w, &io.LimitedReader{R: st.file, N: end - off})
	}
	var sent int64
	for pos := off; pos < end; {
		avail, err := st.fetch.await(ctx, pos, flush)
		if err == io.EOF {
			return sent, io.ErrUnexpectedEOF // shorter than promised
		}
		if err != nil {
			return sent, err
		}
		if _, err := st.file.Seek(pos, io.SeekStart); err != nil {
			return sent, err
		}
		n, err := io.Copy(w, &io.LimitedReader{R: st.file, N: min(avail, end) - pos})
		pos += n
		sent += n
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// Fetch returns a stream of the blob: the committed file when cached, else
// a reader of the one upstream download of it, starting that download if
// nobody else has. The download belongs to the store, not to ctx: a client
// that hangs up does not cancel a fetch that others (or the cache) need.
func (s *Store) Fetch(ctx context.Context, dgst v1.Hash, upstream string, src Source) (*Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, err := s.openLocked(dgst); err == nil {
		return &Stream{file: b.File, blob: b}, nil
	}
	if f, ok := s.fetches[dgst]; ok {
		file, err := os.Open(f.path)
		if err != nil {
			return nil, fmt.Errorf("cache: joining fetch: %w", err)
		}
		s.stats.Joined++
		metrics.FetchesJoined.Inc()
		return &Stream{file: file, fetch: f}, nil
	}
	if s.closed {
		return nil, errClosing
	}
	tmp, err := os.CreateTemp(s.tmpDir(), dgst.Hex+".*")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	file, err := os.Open(tmp.Name())
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("cache: %w", err)
	}
	f := &fetch{dgst: dgst, path: tmp.Name(), upstream: upstream, ready: make(chan struct{}), size: -1, wake: make(chan struct{})}
	s.fetches[dgst] = f
	s.stats.Started++
	metrics.FetchesStarted.Inc()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(context.WithoutCancel(ctx), f, tmp, src)
	}()
	return &Stream{file: file, fetch: f}, nil
}

// Stats returns a snapshot of the fetch counters.
func (s *Store) Stats() FetchStats {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	st.Bytes = s.fetchedBytes.Load()
	return st
}

func (s *Store) run(parent context.Context, f *fetch, tmp *os.File, src Source) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	go func() {
		select {
		case <-s.closing:
			cancel(errClosing)
		case <-ctx.Done():
		}
	}()
	stall := time.AfterFunc(s.stallTimeout, func() { cancel(ErrStalled) })
	defer stall.Stop()

	err := s.download(ctx, f, tmp, src, stall)
	if err != nil && context.Cause(ctx) != nil && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrSizeMismatch) {
		err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	if err != nil {
		f.progress(0, true, err)
		select {
		case <-f.ready:
		default:
			close(f.ready)
		}
		tmp.Close()
		s.mu.Lock()
		delete(s.fetches, f.dgst)
		s.stats.Failed++
		s.mu.Unlock()
		metrics.FetchesFailed.Inc()
		os.Remove(f.path)
		s.log.Warn("blob fetch failed; nothing cached", "digest", f.dgst, "upstream", f.upstream, "err", err)
		return
	}
	// Readers have everything and it is verified; now make it durable.
	f.progress(0, true, nil)
	err = tmp.Sync()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	s.mu.Lock()
	if err == nil {
		err = s.commitLocked(f.dgst, f.path, f.written)
	}
	delete(s.fetches, f.dgst)
	s.mu.Unlock()
	if err == nil {
		err = s.putRecord(f.dgst, f.written, f.upstream)
	}
	if err != nil {
		os.Remove(f.path)
		s.log.Error("caching blob failed; it was served but not kept", "digest", f.dgst, "err", err)
		return
	}
	s.Evict(0)
}

func (s *Store) download(ctx context.Context, f *fetch, tmp *os.File, src Source, stall *time.Timer) error {
	body, size, err := src(ctx)
	if err != nil {
		return err
	}
	defer body.Close()
	f.size = size
	close(f.ready)

	fetched := metrics.UpstreamBytes.WithLabelValues(f.upstream)
	h := sha256.New()
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	buf := *bufp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(s.stallTimeout)
			if size >= 0 && f.written+int64(n) > size {
				return ErrSizeMismatch
			}
			if _, err := tmp.Write(buf[:n]); err != nil {
				return fmt.Errorf("cache: writing: %w", err)
			}
			h.Write(buf[:n])
			s.fetchedBytes.Add(int64(n))
			fetched.Add(float64(n))
			f.progress(int64(n), false, nil)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if size >= 0 && f.written != size {
		return ErrSizeMismatch
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.dgst.Hex {
		return fmt.Errorf("%w: got sha256:%s", ErrDigestMismatch, got)
	}
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
