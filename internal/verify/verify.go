// Package verify is gatehouse's one reader that checks content while it is
// read, like go-containerregistry's verify.ReadCloser: it hashes every
// byte, fails a read that goes past the expected size, and turns the end
// of the stream into an error when the size or the digest is wrong. Every
// path that hashes while it reads (blobs passed through, manifests, the
// vulnerability DB, layers fed to the scanner) uses it.
package verify

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrDigestMismatch and ErrSizeMismatch are the two ways content can fail
// its check; the errors a Reader returns wrap one of them.
var (
	ErrDigestMismatch = errors.New("content does not match the digest")
	ErrSizeMismatch   = errors.New("content size differs from the size announced")
)

// Reader verifies what it reads. See ReadCloser.
type Reader struct {
	r    io.Reader
	c    io.Closer
	want v1.Hash
	size int64 // -1: unknown
	hold bool

	h       hash.Hash
	n       int64
	pending [1]byte // the held-back last byte read, with hold
	held    bool
	err     error // sticky
}

// Option changes a Reader.
type Option func(*Reader)

// HoldLast keeps the last byte read back until the next read shows more
// follows or the end was verified: a consumer that forwards bytes as it
// reads them (a client's response) can never receive all of a blob that
// failed its check.
func HoldLast() Option { return func(r *Reader) { r.hold = true } }

// ReadCloser returns a reader of rc that checks the content against dgst
// (sha256) and size (-1 when unknown). A read past size fails with
// ErrSizeMismatch; io.EOF is returned only when both match, else an error
// wrapping ErrSizeMismatch or ErrDigestMismatch. Close closes rc.
func ReadCloser(rc io.ReadCloser, size int64, dgst v1.Hash, opts ...Option) *Reader {
	r := &Reader{r: rc, c: rc, want: dgst, size: size, h: sha256.New()}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Read reads and checks.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil || len(p) == 0 {
		return 0, r.err
	}
	if !r.hold {
		n, err := r.read(p)
		if err != nil {
			r.err = err
		}
		return n, err
	}
	return r.readHeld(p)
}

// read reads from the source, hashing and counting, and checks at EOF.
func (r *Reader) read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if r.size >= 0 && r.n > r.size {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrSizeMismatch, r.size)
	}
	if err == io.EOF {
		err = r.check()
	}
	return n, err
}

// readHeld reads like read, handing on every byte but the last one read
// until the check at the end passed.
func (r *Reader) readHeld(p []byte) (int, error) {
	if len(p) == 1 && r.held {
		// No room for the held byte and a new one: read through two.
		var two [2]byte
		n, err := r.readHeld(two[:])
		p[0] = two[0]
		return n, err
	}
	off := 0
	if r.held {
		p[0] = r.pending[0]
		off = 1
	}
	n, err := r.read(p[off:])
	n += off
	r.held = false
	if err == nil && n > 0 {
		r.pending[0] = p[n-1]
		r.held = true
		n--
	}
	if err != nil {
		r.err = err
		if err != io.EOF {
			return 0, err
		}
	}
	return n, err
}

// check returns io.EOF when size and digest match, else the mismatch.
func (r *Reader) check() error {
	if r.size >= 0 && r.n != r.size {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrSizeMismatch, r.n, r.size)
	}
	if got := hex.EncodeToString(r.h.Sum(nil)); got != r.want.Hex {
		return fmt.Errorf("%w: got sha256:%s, want %s", ErrDigestMismatch, got, r.want)
	}
	return io.EOF
}

// Digest returns the sha256 digest of what was read so far: at the end,
// the content's actual digest (what a mismatch found instead).
func (r *Reader) Digest() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(r.h.Sum(nil))}
}

// N returns how many bytes were read from the source.
func (r *Reader) N() int64 { return r.n }

// Close closes the source.
func (r *Reader) Close() error { return r.c.Close() }
