package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, dir string, max int64) *Store {
	t.Helper()
	s, err := openDir(dir, Options{MaxSize: max, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func blob(n int, seed byte) ([]byte, v1.Hash) {
	b := bytes.Repeat([]byte{seed}, n)
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// source serves data from the byte asked for, as a registry answers a
// Range request.
func source(data []byte) Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		return io.NopCloser(bytes.NewReader(data[off:])), off, int64(len(data)), nil
	}
}

// fetchRead fetches a blob of upstream "up" through the store and reads
// it from the start; a failed Fetch or Wait fails the test.
func fetchRead(t *testing.T, ctx context.Context, s *Store, d v1.Hash, src Source) ([]byte, error) {
	t.Helper()
	st, err := s.Fetch(ctx, d, "up", src)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return io.ReadAll(st.Reader(ctx, 0, nil))
}

// fetchAll reads a blob through the store and waits for its commit.
func fetchAll(t *testing.T, s *Store, d v1.Hash, src Source) []byte {
	t.Helper()
	got, err := fetchRead(t, context.Background(), s, d, src)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, ok := s.StatBlob(d); ok {
			break
		}
	}
	return got
}

func TestBlobsAndMetadataSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	data, d := blob(1000, 'a')
	if got := fetchAll(t, s, d, source(data)); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	m := &Manifest{Digest: d, Data: []byte(`{"schemaVersion":2}`), MediaType: "x", Upstream: "up", Repo: "r", Created: time.Now()}
	if err := s.PutManifest(m); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag("up", "r", "v1", &Tag{Digest: d, Fetched: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, 0)
	defer s.Close()
	b, err := s.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(b)
	b.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("blob differs after restart")
	}
	if gm, err := s.Manifest(d); err != nil || !bytes.Equal(gm.Data, m.Data) || gm.MediaType != "x" {
		t.Fatalf("manifest after restart: %+v %v", gm, err)
	}
	if tg, err := s.Tag("up", "r", "v1"); err != nil || tg.Digest != d {
		t.Fatalf("tag after restart: %+v %v", tg, err)
	}
	if _, err := s.Tag("up", "r", "v2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown tag: %v", err)
	}
}

func TestOpenCleansPartialDownloadsAndReconciles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	data, d := blob(100, 'b')
	fetchAll(t, s, d, source(data))
	s.Close()

	// A crash leaves a partial download, and a committed file whose record
	// was not written yet; a record whose file is gone is dropped.
	os.WriteFile(filepath.Join(dir, "tmp", "partial"), []byte("half"), 0o600)
	data2, d2 := blob(50, 'c')
	os.MkdirAll(filepath.Dir(filepath.Join(dir, "blobs", "sha256", d2.Hex[:2], d2.Hex)), 0o750)
	os.WriteFile(filepath.Join(dir, "blobs", "sha256", d2.Hex[:2], d2.Hex), data2, 0o600)
	os.Remove(filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex))

	s = open(t, dir, 0)
	defer s.Close()
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Fatalf("partial downloads left: %v", ents)
	}
	if _, ok := s.StatBlob(d); ok {
		t.Fatal("record without file kept")
	}
	if size, ok := s.StatBlob(d2); !ok || size != 50 {
		t.Fatal("committed file without record not adopted")
	}
	if size, n := s.Usage(); size != 50 || n != 1 {
		t.Fatalf("usage %d/%d", size, n)
	}
}

func TestFailedFetchKeepsNothing(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	data, d := blob(1000, 'd')
	bad := append(bytes.Clone(data[:999]), 'x')
	for name, src := range map[string]Source{
		"digest": source(bad),
		"short": func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(bytes.NewReader(data[:10])), 0, 1000, nil
		},
		"upstream error": func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
			return nil, 0, 0, errors.New("boom")
		},
	} {
		st, err := s.Fetch(context.Background(), d, "up", src)
		if err != nil {
			t.Fatal(err)
		}
		var rerr error
		if rerr = st.Wait(context.Background()); rerr == nil {
			_, rerr = io.ReadAll(st.Reader(context.Background(), 0, nil))
		}
		st.Close()
		if rerr == nil {
			t.Errorf("%s: reader saw no error", name)
		}
		s.wg.Wait()
		if _, ok := s.StatBlob(d); ok {
			t.Errorf("%s: blob kept", name)
		}
		if ents, _ := os.ReadDir(s.tmpDir()); len(ents) != 0 {
			t.Errorf("%s: temp files left", name)
		}
	}
}

func TestStalledUpstreamFailsFetch(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{StallTimeout: 50 * time.Millisecond, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, d := blob(10, 'e')
	st, err := s.Fetch(context.Background(), d, "up", stallingSource(nil, 10))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Wait(context.Background())
	if _, err := io.ReadAll(st.Reader(context.Background(), 0, nil)); !errors.Is(err, ErrStalled) {
		t.Fatalf("want stall error, got %v", err)
	}
}

// stallingSource sends head and then nothing, until the fetch's context
// ends; it announces size bytes.
func stallingSource(head []byte, size int64) Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		pr, pw := io.Pipe()
		go func() {
			pw.Write(head)
			<-ctx.Done()
			pw.CloseWithError(ctx.Err())
		}()
		return pr, 0, size, nil
	}
}

// upstreams[].stallTimeout reaches the store: a download from an upstream
// with a short stall timeout fails with ErrStalled although the store's
// default would wait for an hour.
func TestStallTimeoutPerUpstream(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{StallTimeout: time.Hour,
		StallTimeouts: map[string]time.Duration{"slow.example": 50 * time.Millisecond}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, d := blob(10, 'e')
	st, err := s.Fetch(context.Background(), d, "slow.example", stallingSource([]byte("abc"), 10))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(st.Reader(context.Background(), 0, nil)); !errors.Is(err, ErrStalled) {
		t.Fatalf("want stall error, got %v", err)
	}
	if s.stallFor("other.example") != time.Hour {
		t.Errorf("another upstream's stall timeout is %v, want the store's hour", s.stallFor("other.example"))
	}
}

func TestAccessTimesPersistedForLRU(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	a, da := blob(100, 'f')
	b, db := blob(100, 'g')
	fetchAll(t, s, da, source(a))
	fetchAll(t, s, db, source(b))
	time.Sleep(10 * time.Millisecond)
	f, _ := s.OpenBlob(da) // a is now the most recently used
	f.Close()
	s.Close()

	s = open(t, dir, 150)
	defer s.Close()
	if n, _ := s.Evict(0); n != 1 {
		t.Fatalf("evicted %d", n)
	}
	if _, ok := s.StatBlob(da); !ok {
		t.Fatal("recently used blob evicted after restart")
	}
}

func TestEvictionSkipsBlobsInUse(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	a, da := blob(100, 'h')
	fetchAll(t, s, da, source(a))
	f, _ := s.OpenBlob(da)
	if n, _ := s.Evict(1); n != 0 {
		t.Fatal("evicted a blob being read")
	}
	f.Close()
	if n, _ := s.Evict(1); n != 1 {
		t.Fatal("released blob not evicted")
	}
}

// A second store on the same directory (a second gatehouse started by
// mistake, or `gatehouse cache verify` on a live node) fails with a clear
// error and leaves the running store's partial downloads alone: the fetch
// under way completes and is cached.
func TestSecondOpenLeavesPartialDownloads(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	defer s.Close()
	data, d := blob(4<<20, 'p')
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // before s.Close, which waits for the fetch
	st, err := s.Fetch(context.Background(), d, "up", func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		pr, pw := io.Pipe()
		go func() {
			pw.Write(data[:1<<20])
			<-release
			pw.Write(data[1<<20:])
			pw.Close()
		}()
		return pr, 0, int64(len(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(tmpFiles(t, s)); n != 1 {
		t.Fatalf("%d partial downloads, want 1", n)
	}

	_, err = openDirWait(dir, Options{Log: slog.New(slog.DiscardHandler)}, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "another gatehouse") {
		t.Fatalf("second Open: %v; want an error asking about another gatehouse", err)
	}
	if n := len(tmpFiles(t, s)); n != 1 {
		t.Fatalf("the second Open removed the running fetch's partial download (%d left)", n)
	}
	unblock()
	got, err := io.ReadAll(st.Reader(context.Background(), 0, nil))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	// The fetch commits after its last byte was read (fsync, rename).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, ok := s.StatBlob(d); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fetch under way was not cached")
		}
	}
}

// Fetches share one budget of chunks: with room for a single chunk, three
// concurrent downloads still all complete (each chunk goes back once the
// writer and the hasher are done with it), and afterwards every token is
// back.
// Fetches share the chunk budget, the chunks they keep for their readers
// included: with a budget of one chunk, or of fewer than three fetches
// would keep, every fetch completes and every token comes back.
func TestFetchesShareTheChunkBudget(t *testing.T) {
	for _, max := range []int{1, 8} {
		t.Run(fmt.Sprint(max), func(t *testing.T) { testChunkBudget(t, max) })
	}
}

func testChunkBudget(t *testing.T, max int) {
	s, err := openDir(t.TempDir(), Options{maxChunks: max, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a lost token would hang the fetches
	defer cancel()
	var wg sync.WaitGroup
	for i := range 3 {
		data, d := blob(6*chunkSize+123, byte('a'+i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.Fetch(ctx, d, "up", source(data))
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			if err := st.Wait(ctx); err != nil {
				t.Error(err)
				return
			}
			got, err := io.ReadAll(st.Reader(ctx, 0, nil))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("blob %d: read %d bytes, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	for deadline := time.Now().Add(30 * time.Second); len(s.chunks) != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d chunk tokens still taken after every fetch ended", len(s.chunks))
		}
	}
}

// A warm hit hands out the *os.File of the local blob store itself, which
// http.ServeContent sends with sendfile; a fetch in progress has no File.
func TestWarmHitIsTheFile(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	data, d := blob(1000, 'w')
	fetchAll(t, s, d, source(data))
	st, err := s.Fetch(context.Background(), d, "up", source(data))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if f, ok := st.File().(*os.File); !ok || f == nil {
		t.Fatalf("File() of a cached blob is a %T, want *os.File", st.File())
	}
	_, d2 := blob(10, 'x')
	st2, err := s.Fetch(context.Background(), d2, "up", stallingSource(nil, 10))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if st2.File() != nil {
		t.Fatal("File() of a fetch in progress is not nil")
	}
}

// SweepManifests removes what keep refuses, once per version: the same
// version again reads nothing, a later one sweeps again.
func TestSweepManifests(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, data := range []string{`{"a":1}`, `{"b":2}`} {
		d, _, _ := v1.SHA256(strings.NewReader(data))
		if err := s.PutManifest(&Manifest{Digest: d, Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	calls := 0
	dropA := func(m *Manifest) bool { calls++; return !strings.Contains(string(m.Data), `"a"`) }
	for i, want := range []struct {
		version        uint32
		removed, calls int
	}{{1, 1, 2}, {1, 0, 2}, {2, 0, 3}} {
		n, err := s.SweepManifests(want.version, dropA)
		if err != nil || n != want.removed || calls != want.calls {
			t.Fatalf("sweep %d (version %d): removed %d, %d calls, %v; want %d removed, %d calls", i, want.version, n, calls, err, want.removed, want.calls)
		}
	}
}
