package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// reader reads a committed object. Read streams one GetObject from the
// current offset (a new one after a Seek elsewhere); ReadAt sends a ranged
// GetObject per call and may be called concurrently.
//
// The reader keeps the context it was opened with, like an HTTP response
// body keeps its request's: every GET it sends belongs to the caller's
// read of the blob, and Close cancels whatever is still in flight.
type reader struct {
	s      *Store
	dgst   v1.Hash
	key    string
	size   int64
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex // guards what follows, for Read, Seek and Close
	pos     int64
	body    io.ReadCloser // a GET of the object from bodyPos on, or nil
	bodyPos int64
	closed  bool
}

func newReader(ctx context.Context, s *Store, dgst v1.Hash, key string, size int64, body io.ReadCloser) *reader {
	ctx, cancel := context.WithCancel(ctx)
	return &reader{s: s, dgst: dgst, key: key, size: size, ctx: ctx, cancel: cancel, body: body}
}

var errClosed = errors.New("s3blob: read of a closed reader")

// get sends a GetObject of the object's bytes from off to end (excluded).
func (r *reader) get(off, end int64) (io.ReadCloser, error) {
	rng := fmt.Sprintf("bytes=%d-%d", off, end-1)
	out, err := r.s.client.GetObject(r.ctx, &s3.GetObjectInput{Bucket: &r.s.bucket, Key: &r.key, Range: &rng})
	if err != nil {
		return nil, blobErr("read", r.dgst, err)
	}
	return out.Body, nil
}

// Read reads from the current offset.
func (r *reader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errClosed
	}
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.body != nil && r.bodyPos != r.pos {
		r.body.Close()
		r.body = nil
	}
	if r.body == nil {
		body, err := r.get(r.pos, r.size)
		if err != nil {
			return 0, err
		}
		r.body, r.bodyPos = body, r.pos
	}
	n, err := r.body.Read(p)
	r.pos += int64(n)
	r.bodyPos += int64(n)
	switch {
	case err == io.EOF && r.pos < r.size:
		r.body.Close()
		r.body = nil
		return n, fmt.Errorf("s3blob: read %s: %w at byte %d of %d", r.dgst, io.ErrUnexpectedEOF, r.pos, r.size)
	case err == io.EOF:
		r.body.Close()
		r.body = nil
		if n > 0 {
			return n, nil
		}
		return 0, io.EOF
	case err != nil:
		// The next Read starts a new GET from where this one broke off.
		r.body.Close()
		r.body = nil
		return n, fmt.Errorf("s3blob: read %s: %w", r.dgst, err)
	}
	return n, nil
}

// Seek sets the offset of the next Read; the GET in flight is kept if
// the offset does not move.
func (r *reader) Seek(offset int64, whence int) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errClosed
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("s3blob: Seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("s3blob: Seek: negative position")
	}
	r.pos = offset
	return offset, nil
}

// ReadAt reads len(p) bytes from off with one ranged GET.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("s3blob: ReadAt: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), r.size)
	body, err := r.get(off, end)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := io.ReadFull(body, p[:end-off])
	if err != nil {
		return n, fmt.Errorf("s3blob: read %s: %w", r.dgst, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close ends the GET in flight and makes every later read fail.
func (r *reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.cancel()
	return nil
}
