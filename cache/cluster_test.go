package cache

import (
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/storage/localblob"
)

// sharedPair opens two stores on one blob store and one record store, as
// two replicas on S3 and PostgreSQL are.
func sharedPair(t *testing.T, max int64) (*Store, *Store) {
	t.Helper()
	dir := t.TempDir()
	meta, err := boltmeta.Open(filepath.Join(dir, "meta.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	blobs, err := localblob.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var out []*Store
	for range 2 {
		s, err := Open(Options{Blobs: blobs, Meta: meta, Shared: true, MaxSize: max, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	return out[0], out[1]
}

// A blob one replica committed is found by the other through the shared
// record, and one it evicted is gone for the other too.
func TestSharedRecords(t *testing.T) {
	a, b := sharedPair(t, 0)
	data, d := blob(3000, 1)
	fetchAll(t, a, d, source(data))
	waitRecords(t, b, 1)
	if size, ok := b.StatBlob(d); !ok || size != 3000 {
		t.Fatalf("the other replica's StatBlob: %d %v", size, ok)
	}
	blb, err := b.OpenBlob(d)
	if err != nil {
		t.Fatalf("the other replica cannot open a blob committed by the first: %v", err)
	}
	blb.Close()
	if b.Stats().Started != 0 {
		t.Fatal("the other replica fetched the blob again")
	}
	if err := a.RemoveBlob(d); err != nil {
		t.Fatal(err)
	}
	if _, err := b.OpenBlob(d); err != ErrNotFound {
		t.Fatalf("a removed blob: %v, want ErrNotFound", err)
	}
}

// EvictShared deletes the least recently accessed blobs down to the limit,
// sparing those accessed within the grace period and those being read;
// the per-replica Evict leaves a shared store alone.
func TestEvictShared(t *testing.T) {
	a, b := sharedPair(t, 2500)
	var ds []string
	for i := range 3 {
		data, d := blob(1000, byte(10+i))
		fetchAll(t, a, d, source(data))
		ds = append(ds, d.String())
		time.Sleep(5 * time.Millisecond) // distinct access times
	}
	waitRecords(t, b, 3)
	if n, _ := a.Evict(0); n != 0 {
		t.Fatalf("Evict removed %d blobs of a shared store", n)
	}
	if n, _, err := b.EvictShared(t.Context(), 0, time.Hour); err != nil || n != 0 {
		t.Fatalf("EvictShared removed %d blobs accessed within the grace period (%v)", n, err)
	}
	// The oldest blob is open on a: the next one goes instead.
	_, d0 := blob(1000, 10)
	open, err := a.OpenBlob(d0)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	n, freed, err := a.EvictShared(t.Context(), 0, 0)
	if err != nil || n != 1 || freed != 1000 {
		t.Fatalf("EvictShared: %d blobs, %d bytes, %v; want 1, 1000", n, freed, err)
	}
	list, _ := b.Blobs()
	if len(list) != 2 || list[0].Digest.String() == ds[1] && list[1].Digest.String() == ds[1] {
		t.Fatalf("left %v", list)
	}
	for _, bi := range list {
		if bi.Digest.String() == ds[1] {
			t.Fatalf("the blob evicted is still listed: %v", list)
		}
	}
	if _, err := b.OpenBlob(d0); err != nil {
		t.Fatalf("the blob being read was evicted: %v", err)
	}
}

// waitRecords waits until the shared records list n blobs (a record is
// written right after its blob's commit).
func waitRecords(t *testing.T, s *Store, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if l, _ := s.Blobs(); len(l) == n {
			return
		}
	}
	t.Fatalf("the records never listed %d blobs", n)
}

// With shared records, manifests read by digest are remembered in memory
// (bounded), and the memo never answers for a manifest the records lost
// to a sweep.
func TestManifestMemo(t *testing.T) {
	a, b := sharedPair(t, 0)
	_, d := blob(100, 7)
	if err := a.PutManifest(&Manifest{Digest: d, Data: []byte(`{"x":1}`), MediaType: "m"}); err != nil {
		t.Fatal(err)
	}
	m, err := b.Manifest(d)
	if err != nil || string(m.Data) != `{"x":1}` {
		t.Fatalf("the other replica's Manifest: %v %v", m, err)
	}
	if got := b.memo.get(d); got == nil || got.Digest != d {
		t.Fatal("a manifest read is not remembered")
	}
	m.MediaType = "changed by a caller"
	if got, _ := b.Manifest(d); got.MediaType != "m" {
		t.Fatal("the memo hands out its own copy")
	}
	if _, err := b.SweepManifests(1, func(*Manifest) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Manifest(d); err != ErrNotFound {
		t.Fatalf("a swept manifest: %v", err)
	}

	c := newManifestMemo(1600)
	for i := range 40 {
		_, d := blob(10, byte(i))
		c.put(&Manifest{Digest: d, Data: make([]byte, 100)})
	}
	if c.bytes > 1600 || len(c.m) != 16 {
		t.Fatalf("memo holds %d bytes in %d entries, bound 1600", c.bytes, len(c.m))
	}
}

// A read on one replica makes the blob look read to another replica's
// eviction at once, not only at the next flush of access times.
func TestSharedReadIsSeenByEviction(t *testing.T) {
	a, b := sharedPair(t, 1)
	data, d := blob(1000, 42)
	fetchAll(t, a, d, source(data))
	waitRecords(t, b, 1)
	// The record says the blob was last read an hour ago.
	old, _ := json.Marshal(blobRecord{Size: 1000, Created: time.Now().Add(-time.Hour), Accessed: time.Now().Add(-time.Hour)})
	if err := a.meta.Update(t.Context(), func(tx storage.Tx) error { return tx.Put(tableBlobs, []byte(d.String()), old) }); err != nil {
		t.Fatal(err)
	}
	rd, err := b.OpenBlob(d) // a read on replica b
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	n, _, err := a.EvictShared(t.Context(), 1, 10*time.Minute) // replica a evicts
	if err != nil || n != 0 {
		t.Fatalf("replica a evicted %d blobs (%v) while replica b was reading", n, err)
	}
}
