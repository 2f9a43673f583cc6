package storagetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// BlobStore runs the BlobStore contract against stores made by open.
func BlobStore(t *testing.T, open func(t *testing.T) storage.BlobStore) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, storage.BlobStore)
	}{
		{"Missing", blobMissing},
		{"WriteCommitRead", blobWriteCommit},
		{"PartialFollowsWrites", blobPartial},
		{"PartialAfterCommit", blobPartialAfterCommit},
		{"Empty", blobEmpty},
		{"Abort", blobAbort},
		{"Delete", blobDelete},
		{"CommitAgain", blobCommitAgain},
		{"ConcurrentWriters", blobConcurrent},
		{"ReadAtSeek", blobReadAtSeek},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// Blob returns content of n bytes made from seed, and its digest.
func Blob(n int, seed byte) ([]byte, v1.Hash) {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>8)
	}
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// commit writes and commits a blob.
func commit(t *testing.T, s storage.BlobStore, data []byte, d v1.Hash) {
	t.Helper()
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// read opens a committed blob and checks its size and content.
func read(t *testing.T, s storage.BlobStore, want []byte, d v1.Hash) {
	t.Helper()
	r, size, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || size != int64(len(want)) || !bytes.Equal(got, want) {
		t.Fatalf("Open: size %d, read %d bytes (%v); want %d bytes", size, len(got), err, len(want))
	}
	if n, err := s.Stat(t.Context(), d); err != nil || n != int64(len(want)) {
		t.Fatalf("Stat = %d, %v; want %d", n, err, len(want))
	}
}

func missing(t *testing.T, s storage.BlobStore, d v1.Hash, when string) {
	t.Helper()
	if r, _, err := s.Open(t.Context(), d); !errors.Is(err, storage.ErrNotFound) {
		if r != nil {
			r.Close()
		}
		t.Errorf("%s: Open = %v, want ErrNotFound", when, err)
	}
	if _, err := s.Stat(t.Context(), d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("%s: Stat = %v, want ErrNotFound", when, err)
	}
}

// walk returns what Walk reports.
func walk(t *testing.T, s storage.BlobStore) map[v1.Hash]int64 {
	t.Helper()
	var mu sync.Mutex
	out := map[v1.Hash]int64{}
	if err := s.Walk(t.Context(), func(d v1.Hash, size int64) error {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := out[d]; dup {
			return fmt.Errorf("Walk reported %s twice", d)
		}
		out[d] = size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func blobMissing(t *testing.T, s storage.BlobStore) {
	_, d := Blob(10, 1)
	missing(t, s, d, "never written")
	if err := s.Delete(t.Context(), d); err != nil {
		t.Errorf("Delete of a missing blob: %v", err)
	}
	if got := walk(t, s); len(got) != 0 {
		t.Errorf("Walk of an empty store: %v", got)
	}
}

func blobWriteCommit(t *testing.T, s storage.BlobStore) {
	data, d := Blob(300<<10, 2)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	for p := data; len(p) > 0; {
		n := min(len(p), 64<<10)
		if m, err := w.Write(p[:n]); err != nil || m != n {
			t.Fatalf("Write = %d, %v", m, err)
		}
		p = p[n:]
	}
	missing(t, s, d, "before Commit")
	if got := walk(t, s); len(got) != 0 {
		t.Errorf("Walk before Commit: %v", got)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	read(t, s, data, d)
	if got := walk(t, s); len(got) != 1 || got[d] != int64(len(data)) {
		t.Errorf("Walk after Commit = %v, want %s of %d bytes", got, d, len(data))
	}
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	read(t, s, data, d)
}

func blobPartial(t *testing.T, s storage.BlobStore) {
	data, d := Blob(1000, 3)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	r, err := w.Partial()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Partial of nothing written: %d, %v; want io.EOF", n, err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for _, part := range [][]byte{data[:100], data[100:101], data[101:]} {
		if _, err := w.Write(part); err != nil {
			t.Fatal(err)
		}
		// Everything written is there; then io.EOF until more is.
		want := len(got) + len(part)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if len(got) != want {
			t.Fatalf("Partial read %d bytes of %d written", len(got), want)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("Partial read other bytes than written")
	}
	// A second Partial reads from the start, at any offset.
	r2, err := w.Partial()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	p := make([]byte, 10)
	if n, err := r2.ReadAt(p, 500); n != 10 || (err != nil && err != io.EOF) || !bytes.Equal(p, data[500:510]) {
		t.Errorf("Partial ReadAt(500) = %d, %v", n, err)
	}
}

// The cache lets a client join a fetch until it is recorded as done, which
// is after Commit returned: a Partial opened then reads the whole blob.
func blobPartialAfterCommit(t *testing.T, s storage.BlobStore) {
	data, d := Blob(5000, 4)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	before, err := w.Partial()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	after, err := w.Partial()
	if err != nil {
		t.Fatalf("Partial after Commit: %v", err)
	}
	defer after.Close()
	for name, r := range map[string]storage.BlobReader{"opened before Commit": before, "opened after Commit": after} {
		if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, data) {
			t.Errorf("Partial %s: read %d bytes, %v", name, len(got), err)
		}
	}
}

func blobEmpty(t *testing.T, s storage.BlobStore) {
	data, d := Blob(0, 0)
	commit(t, s, data, d)
	read(t, s, data, d)
	if got := walk(t, s); len(got) != 1 || got[d] != 0 {
		t.Errorf("Walk = %v, want one empty blob", got)
	}
}

func blobAbort(t *testing.T, s storage.BlobStore) {
	data, d := Blob(2000, 5)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	missing(t, s, d, "after Abort")
	if got := walk(t, s); len(got) != 0 {
		t.Errorf("Walk after Abort: %v", got)
	}
	if err := w.Commit(t.Context()); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	missing(t, s, d, "after Abort and Commit")
	// The digest can be written again.
	commit(t, s, data, d)
	read(t, s, data, d)
}

func blobDelete(t *testing.T, s storage.BlobStore) {
	a, da := Blob(100, 6)
	b, db := Blob(200, 7)
	commit(t, s, a, da)
	commit(t, s, b, db)
	if err := s.Delete(t.Context(), da); err != nil {
		t.Fatal(err)
	}
	missing(t, s, da, "after Delete")
	read(t, s, b, db)
	if got := walk(t, s); len(got) != 1 || got[db] != 200 {
		t.Errorf("Walk after Delete = %v", got)
	}
	if err := s.Delete(t.Context(), da); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func blobCommitAgain(t *testing.T, s storage.BlobStore) {
	data, d := Blob(100, 8)
	commit(t, s, data, d)
	commit(t, s, data, d)
	read(t, s, data, d)
	if got := walk(t, s); len(got) != 1 {
		t.Errorf("Walk after committing a blob twice = %v", got)
	}
}

func blobConcurrent(t *testing.T, s storage.BlobStore) {
	const n = 8
	type blob struct {
		data []byte
		d    v1.Hash
	}
	blobs := make([]blob, n)
	for i := range blobs {
		blobs[i].data, blobs[i].d = Blob(100<<10+i, byte(10+i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, b := range blobs {
		wg.Go(func() {
			w, err := s.Create(t.Context(), b.d)
			if err != nil {
				errs <- err
				return
			}
			for p := b.data; len(p) > 0; p = p[min(len(p), 4096):] {
				if _, err := w.Write(p[:min(len(p), 4096)]); err != nil {
					w.Abort()
					errs <- err
					return
				}
			}
			errs <- w.Commit(t.Context())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := walk(t, s)
	for _, b := range blobs {
		read(t, s, b.data, b.d)
		if got[b.d] != int64(len(b.data)) {
			t.Errorf("Walk: %s has %d bytes, want %d", b.d, got[b.d], len(b.data))
		}
	}
	if len(got) != n {
		t.Errorf("Walk found %d blobs, want %d", len(got), n)
	}
}

func blobReadAtSeek(t *testing.T, s storage.BlobStore) {
	data, d := Blob(10000, 9)
	commit(t, s, data, d)
	r, _, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := make([]byte, 100)
	for _, off := range []int64{0, 1, 4321, 9900} {
		if n, err := r.ReadAt(p, off); n != 100 || (err != nil && err != io.EOF) || !bytes.Equal(p, data[off:off+100]) {
			t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	if n, err := r.ReadAt(p, 9950); n != 50 || err != io.EOF || !bytes.Equal(p[:50], data[9950:]) {
		t.Errorf("ReadAt past the end = %d, %v; want 50, io.EOF", n, err)
	}
	for _, tc := range []struct {
		off    int64
		whence int
		pos    int64
	}{{1234, io.SeekStart, 1234}, {100, io.SeekCurrent, 1434}, {-10, io.SeekEnd, 9990}} {
		pos, err := r.Seek(tc.off, tc.whence)
		if err != nil || pos != tc.pos {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d", tc.off, tc.whence, pos, err, tc.pos)
		}
		got, err := io.ReadAll(io.LimitReader(r, 100))
		if err != nil || !bytes.Equal(got, data[pos:min(pos+100, 10000)]) {
			t.Errorf("read after Seek to %d: %d bytes, %v", pos, len(got), err)
		}
	}
}
