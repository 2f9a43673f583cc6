package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// Stream is a reader's handle on a blob: a committed blob, a fetch in
// progress, or — when the cache cannot be written — a transfer straight
// from upstream that is verified but not kept. Close it when done.
type Stream struct {
	// file reads the committed blob, or the bytes a fetch wrote so far.
	// Of a local store it is an *os.File, which net/http sends with
	// sendfile: it is handed on as it is, never wrapped.
	file  storage.BlobReader
	blob  *Blob  // committed
	fetch *fetch // in progress

	// For a transfer that bypasses the cache: from the start, or after
	// the fetch this stream was reading could not write the cache.
	dgst  v1.Hash
	src   Source
	stall time.Duration // how long such a transfer may receive nothing
	pass  *passReader
}

// Size returns the blob's size, or -1 when upstream did not announce it.
// For a fetch it is only valid after Wait returned nil.
func (st *Stream) Size() int64 {
	switch {
	case st.blob != nil:
		return st.blob.Size
	case st.fetch != nil:
		return st.fetch.size
	case st.pass != nil:
		return st.pass.size
	}
	return -1
}

// File returns the reader of a committed blob (for http.ServeContent:
// ranges, and sendfile when it is the *os.File of a local store), or nil
// while the blob is being fetched.
func (st *Stream) File() storage.BlobReader {
	if st.blob != nil {
		return st.file
	}
	return nil
}

// Cached reports whether the stream's bytes go to the cache (false for a
// transfer that bypasses an unwritable cache).
func (st *Stream) Cached() bool { return st.blob != nil || st.fetch != nil }

// Wait blocks until upstream answered (the size is known), the fetch
// failed (its error is returned, e.g. an *upstream.Error for a 404), or
// ctx ends.
func (st *Stream) Wait(ctx context.Context) error {
	switch {
	case st.blob != nil:
		return nil
	case st.fetch == nil:
		if st.pass != nil {
			return nil
		}
		p, err := openPass(ctx, st.dgst, st.src, 0, st.stall)
		if err != nil {
			return err
		}
		st.pass = p
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
	if st.pass != nil {
		st.pass.close()
	}
	if st.blob != nil {
		return st.blob.Close()
	}
	if st.file != nil {
		return st.file.Close()
	}
	return nil
}

// Reader returns a reader of the blob from offset off. Reading a fetch in
// progress blocks until bytes arrive; flush (may be nil) is called before
// blocking, so that bytes already read reach the client. The last byte of
// a blob is released only after its digest and size were verified, so a
// failed fetch can never look like a complete one; a failure returns the
// fetch's error.
func (st *Stream) Reader(ctx context.Context, off int64, flush func()) io.Reader {
	switch {
	case st.blob != nil:
		return io.NewSectionReader(st.file, off, st.blob.Size-off)
	case st.fetch == nil:
		return &skipReader{r: st.pass, skip: off}
	}
	return &fetchReader{ctx: ctx, st: st, pos: off, flush: flush}
}

type fetchReader struct {
	ctx   context.Context
	st    *Stream
	pos   int64
	flush func()
	pass  io.Reader // set once the fetch could not write the cache
}

func (r *fetchReader) Read(p []byte) (int, error) {
	if r.pass != nil {
		return r.pass.Read(p)
	}
	avail, err := r.st.fetch.await(r.ctx, r.pos, r.flush)
	if werr := (*WriteError)(nil); errors.As(err, &werr) {
		if r.pass, err = r.st.bypass(r.ctx, r.pos); err != nil {
			return 0, err
		}
		return r.pass.Read(p)
	}
	if err != nil {
		return 0, err
	}
	n := min(int64(len(p)), avail-r.pos)
	m, inFile := r.st.fetch.fromMemory(p[:n], r.pos)
	if m > 0 {
		r.s().memoryBytes.Add(int64(m))
		r.pos += int64(m)
		return m, nil
	}
	if inFile <= r.pos {
		return 0, fmt.Errorf("cache: bytes from %d of a fetch neither in memory nor written (received %d)", r.pos, avail)
	}
	m, err = r.st.file.ReadAt(p[:min(n, inFile-r.pos)], r.pos)
	r.pos += int64(m)
	if err == io.EOF && m > 0 {
		err = nil
	}
	return m, err
}

func (r *fetchReader) s() *Store { return r.st.fetch.s }

// bypass goes on from offset pos with a transfer of its own from
// upstream, after the fetch this stream read could not write the cache.
// The new transfer starts at the beginning, so that the digest is still
// verified, and skips what the reader already has.
func (st *Stream) bypass(ctx context.Context, pos int64) (io.Reader, error) {
	p, err := openPass(ctx, st.dgst, st.src, pos, st.stall)
	if err != nil {
		return nil, err
	}
	st.pass = p
	return p, nil
}

// await blocks until bytes beyond pos may be read, and returns how many
// bytes of the blob may be read in all. It returns io.EOF at the end of a
// verified blob and the fetch's error when it failed. The last byte is held
// back until the digest and size were verified.
func (f *fetch) await(ctx context.Context, pos int64, flush func()) (int64, error) {
	for {
		f.mu.Lock()
		avail, done, err, wake := f.received, f.done, f.err, f.wake
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

// Send writes the blob's bytes [off, end) to w as they arrive. A committed
// blob is copied from its reader (w's ReadFrom may send a local store's
// *os.File with sendfile); a fetch's bytes come from its chunks in memory
// or from the file it writes (see fetchReader and recent.go), in writes of
// sendSize. It returns the bytes written, and the fetch's error when the
// fetch failed.
func (st *Stream) Send(ctx context.Context, w io.Writer, off, end int64, flush func()) (int64, error) {
	if st.blob != nil {
		if _, err := st.file.Seek(off, io.SeekStart); err != nil {
			return 0, err
		}
		return io.Copy(w, &io.LimitedReader{R: st.file, N: end - off})
	}
	return copyExactly(w, st.Reader(ctx, off, flush), end-off)
}

// copyExactly copies n bytes from r to w, in writes of up to sendSize;
// fewer is an error.
func copyExactly(w io.Writer, r io.Reader, n int64) (int64, error) {
	bufp := sendBufs.Get().(*[]byte)
	defer sendBufs.Put(bufp)
	m, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(r, n), *bufp)
	if err == nil && m < n {
		err = io.ErrUnexpectedEOF
	}
	return m, err
}

// sendSize is the size of a stream's writes to its client: large enough
// for few system calls, small enough to stay in a core's cache between the
// copy into it and the copy to the socket (256 KiB measured fastest for
// warm blobs with every client of `make bench`).
const sendSize = 256 << 10

var sendBufs = sync.Pool{New: func() any { b := make([]byte, sendSize); return &b }}

// writerOnly hides a writer's ReadFrom so that io.CopyBuffer uses the
// buffer it is given.
type writerOnly struct{ io.Writer }
