package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func digest(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func TestReadCloser(t *testing.T) {
	data := bytes.Repeat([]byte("gatehouse "), 1000)
	good := digest(data)
	other := digest([]byte("other"))
	for _, tc := range []struct {
		name string
		body []byte
		size int64
		dgst v1.Hash
		want error
	}{
		{"match", data, int64(len(data)), good, nil},
		{"size unknown", data, -1, good, nil},
		{"empty", nil, 0, digest(nil), nil},
		{"wrong digest", data, int64(len(data)), other, ErrDigestMismatch},
		{"short", data[:10], int64(len(data)), good, ErrSizeMismatch},
		{"long", data, 10, good, ErrSizeMismatch},
		{"digest wrong, size unknown", data, -1, other, ErrDigestMismatch},
	} {
		for _, hold := range []bool{false, true} {
			var opts []Option
			if hold {
				opts = append(opts, HoldLast())
			}
			t.Run(tc.name, func(t *testing.T) {
				r := ReadCloser(io.NopCloser(iotest.HalfReader(bytes.NewReader(tc.body))), tc.size, tc.dgst, opts...)
				got, err := io.ReadAll(r)
				if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
					t.Fatalf("hold=%v: err = %v, want %v", hold, err, tc.want)
				}
				if tc.want == nil && !bytes.Equal(got, tc.body) {
					t.Fatalf("hold=%v: read %d bytes, want %d", hold, len(got), len(tc.body))
				}
				if hold && tc.want != nil && len(got) >= len(tc.body) && len(tc.body) > 0 && tc.size != 10 {
					t.Fatalf("hold=%v: a failing stream handed on all %d bytes", hold, len(got))
				}
			})
		}
	}
}

// TestHoldLastOneByteReads: a reader that returns one byte at a time still
// ends on the check, and the last byte is handed on only with io.EOF.
func TestHoldLastOneByteReads(t *testing.T) {
	data := []byte("abc")
	r := ReadCloser(io.NopCloser(iotest.OneByteReader(bytes.NewReader(data))), 3, digest([]byte("abd")), HoldLast())
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrDigestMismatch) || len(got) != 2 {
		t.Fatalf("got %q, %v; want 2 bytes and a digest mismatch", got, err)
	}
}

// A consumer reading one byte at a time (io.LimitedReader at the end of a
// limited copy does) gets every byte and the check, never (0, nil) forever.
func TestHoldLastOneByteBuffer(t *testing.T) {
	data := []byte("gatehouse")
	r := ReadCloser(io.NopCloser(bytes.NewReader(data)), int64(len(data)), digest(data), HoldLast())
	var got []byte
	var b [1]byte
	for i := 0; i < 100; i++ {
		n, err := r.Read(b[:])
		got = append(got, b[:n]...)
		if err == io.EOF {
			if !bytes.Equal(got, data) {
				t.Fatalf("got %q", got)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatalf("no end after 100 one-byte reads; got %q", got)
}
