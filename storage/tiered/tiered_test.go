package tiered

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/internal/testsvc"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/localblob"
	"github.com/gatehouse/gatehouse/storage/s3blob"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

func newStores(t *testing.T, max int64) (*Store, *localblob.Store, *localblob.Store) {
	t.Helper()
	remote, err := localblob.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	local, err := localblob.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(remote, local, max, nil)
	t.Cleanup(func() { s.Close() })
	return s, remote, local
}

func TestBlobStore(t *testing.T) {
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		s, _, _ := newStores(t, 1<<30)
		return s
	})
}

// A tier too small for any blob is just the remote store.
func TestBlobStoreNoRoom(t *testing.T) {
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		s, _, _ := newStores(t, 10)
		return s
	})
}

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

// read opens d through s and checks what it reads, and whether the reader
// is a file of the tier.
func read(t *testing.T, s *Store, d v1.Hash, want []byte) (local bool) {
	t.Helper()
	r, n, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || n != int64(len(want)) || !bytes.Equal(got, want) {
		t.Fatalf("Open: size %d, read %d bytes (%v), want %d", n, len(got), err, len(want))
	}
	f, ok := r.(*os.File)
	return ok && strings.HasPrefix(f.Name(), s.local.(*localblob.Store).Dir()+string(filepath.Separator))
}

// waitFills waits for the background copies.
func waitFills(s *Store) { s.fills.Wait() }

func inTier(t *testing.T, local storage.BlobStore, d v1.Hash) bool {
	t.Helper()
	_, err := local.Stat(t.Context(), d)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// A blob written through the store is in both stores; one only in the
// remote store is served from there once, copied, and then served from
// the local file.
func TestWriteThroughAndReadThrough(t *testing.T) {
	s, remote, local := newStores(t, 1<<20)
	a, da := storagetest.Blob(1000, 1)
	commit(t, s, a, da)
	if !inTier(t, local, da) {
		t.Error("a blob written through the store is not in the tier")
	}
	if !read(t, s, da, a) {
		t.Error("a blob in the tier is not served from a local file")
	}

	b, db := storagetest.Blob(2000, 2)
	commit(t, remote, b, db)
	if read(t, s, db, b) {
		t.Error("a blob only in the remote store was served from a local file")
	}
	waitFills(s)
	if !inTier(t, local, db) {
		t.Fatal("a blob read from the remote store was not copied into the tier")
	}
	if !read(t, s, db, b) {
		t.Error("a copied blob is not served from a local file")
	}

	// Delete removes both; Stat and Walk are the remote's.
	if err := s.Delete(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	if inTier(t, local, db) || inTier(t, remote, db) {
		t.Error("Delete left a copy")
	}
	commit(t, local, b, db) // a copy the remote store does not have
	if _, err := s.Stat(t.Context(), db); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat of a blob only in the tier = %v, want ErrNotFound", err)
	}
	n := 0
	s.Walk(t.Context(), func(v1.Hash, int64) error { n++; return nil })
	if n != 1 {
		t.Errorf("Walk found %d blobs, want the remote store's 1", n)
	}
}

// A remote object whose bytes do not match its digest (or whose size is
// wrong) is served as the remote store has it, but never kept in the tier.
func TestCorruptRemoteNotKept(t *testing.T) {
	s, remote, local := newStores(t, 1<<20)
	good, d := storagetest.Blob(5000, 3)
	bad := bytes.Clone(good)
	bad[4321] ^= 1
	commit(t, remote, bad, d) // localblob trusts its writers: it does not hash
	read(t, s, d, bad)
	waitFills(s)
	if inTier(t, local, d) {
		t.Fatal("a corrupt remote blob was copied into the tier")
	}
	if s.used != 0 || len(s.entries) != 0 {
		t.Errorf("the failed copy is still counted: %d bytes, %d entries", s.used, len(s.entries))
	}

	short, d2 := storagetest.Blob(5000, 4)
	commit(t, remote, short[:4999], d2)
	read(t, s, d2, short[:4999])
	waitFills(s)
	if inTier(t, local, d2) {
		t.Fatal("a truncated remote blob was copied into the tier")
	}
}

// The tier keeps at most maxBytes, dropping the least recently opened
// copies first, and counts what it found at start.
func TestEviction(t *testing.T) {
	s, remote, local := newStores(t, 3500)
	var blobs [][]byte
	var ds []v1.Hash
	for i := range 5 {
		b, d := storagetest.Blob(1000, byte(10+i))
		blobs, ds = append(blobs, b), append(ds, d)
	}
	for i := range 3 {
		commit(t, s, blobs[i], ds[i])
	}
	read(t, s, ds[0], blobs[0])   // 0 is now the most recently used
	commit(t, s, blobs[3], ds[3]) // evicts 1
	if !inTier(t, local, ds[0]) || inTier(t, local, ds[1]) || !inTier(t, local, ds[2]) || !inTier(t, local, ds[3]) {
		t.Errorf("tier after 4 blobs of 1000 bytes in 3500: want 0, 2, 3")
	}
	commit(t, remote, blobs[4], ds[4])
	read(t, s, ds[4], blobs[4]) // copied in the background, evicts 2
	waitFills(s)
	if inTier(t, local, ds[2]) || !inTier(t, local, ds[4]) {
		t.Errorf("tier after reading a fifth: want 0, 3, 4")
	}
	var total int64
	local.Walk(t.Context(), func(_ v1.Hash, n int64) error { total += n; return nil })
	if total > 3500 || s.used != total {
		t.Errorf("tier holds %d bytes (counted %d), bound 3500", total, s.used)
	}
	// Every blob is still served, from wherever it is.
	for i := range blobs {
		read(t, s, ds[i], blobs[i])
	}

	// A new store over the same directories counts the copies and trims
	// them to its bound.
	waitFills(s)
	s.Close()
	s2 := New(remote, local, 1500, nil)
	defer s2.Close()
	total = 0
	local.Walk(context.Background(), func(_ v1.Hash, n int64) error { total += n; return nil })
	if total > 1500 || s2.used != total {
		t.Errorf("after restart with a bound of 1500: %d bytes in the tier, %d counted", total, s2.used)
	}
}

// A blob larger than the tier is written and read through, never kept.
func TestTooLarge(t *testing.T) {
	s, _, local := newStores(t, 1000)
	data, d := storagetest.Blob(1001, 5)
	commit(t, s, data, d)
	read(t, s, d, data)
	waitFills(s)
	if inTier(t, local, d) {
		t.Error("a blob larger than the tier was kept")
	}
}

// The tier in front of S3, as replicas run it.
func TestBlobStoreOverS3(t *testing.T) {
	srv := testsvc.S3(t)
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		remote, err := s3blob.Open(t.Context(), s3blob.Options{
			Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t), Region: srv.Region, PathStyle: true,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, SpoolDir: t.TempDir(),
		})
		if err != nil {
			t.Fatal(err)
		}
		local, err := localblob.Open(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		s := New(remote, local, 1<<30, nil)
		t.Cleanup(func() { s.Close() })
		return s
	})
}
