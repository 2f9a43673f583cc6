package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage/localblob"
)

// countingSource serves data and counts how often upstream was asked.
func countingSource(data []byte, calls *atomic.Int32) Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		calls.Add(1)
		return io.NopCloser(bytes.NewReader(data)), 0, int64(len(data)), nil
	}
}

func randomBlob(t *testing.T, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// tmpDir is the directory of partial downloads of a store openDir opened.
func (s *Store) tmpDir() string {
	return filepath.Join(s.blobStore.(*localblob.Store).Dir(), "tmp")
}

func tmpFiles(t *testing.T, s *Store) []os.DirEntry {
	t.Helper()
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil && !errors.Is(err, syscall.ENOTDIR) {
		t.Fatal(err)
	}
	return ents
}

// An unwritable cache (here: its partial-download directory replaced by a
// file, which stops root as well as anyone) does not fail pulls: the blob
// streams from upstream, verified, and nothing is kept.
func TestUnwritableCacheStreamsThrough(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	defer s.Close()
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.tmpDir(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	errs0 := testutil.ToFloat64(metrics.CacheWriteErrors)
	pass0 := testutil.ToFloat64(metrics.BlobPassthroughs)

	data, d := randomBlob(t, 3<<20)
	var calls atomic.Int32
	for i := range 2 {
		st, err := s.Fetch(context.Background(), d, "up", countingSource(data, &calls))
		if err != nil {
			t.Fatal(err)
		}
		if st.Cached() {
			t.Fatalf("fetch %d: stream claims to be cached", i)
		}
		if err := st.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if n, err := st.Send(context.Background(), &out, 0, st.Size(), nil); err != nil || n != int64(len(data)) {
			t.Fatalf("fetch %d: sent %d: %v", i, n, err)
		}
		st.Close()
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("fetch %d: content differs", i)
		}
	}
	if _, ok := s.StatBlob(d); ok {
		t.Fatal("blob was cached")
	}
	if got := s.Stats().Bypassed; got != 2 {
		t.Errorf("bypassed %d transfers, want 2", got)
	}
	if calls.Load() != 2 {
		t.Errorf("upstream asked %d times, want 2", calls.Load())
	}
	// The first failure is counted; the second fetch did not try again.
	if got := testutil.ToFloat64(metrics.CacheWriteErrors) - errs0; got != 1 {
		t.Errorf("cache write errors counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.BlobPassthroughs) - pass0; got != 2 {
		t.Errorf("passthroughs counted %v, want 2", got)
	}

	// Once writing works again and the retry interval passed, blobs are
	// cached again.
	if err := os.Remove(s.tmpDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(s.tmpDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.writeFailed = s.writeFailed.Add(-s.writeRetry)
	s.mu.Unlock()
	if got := fetchAll(t, s, d, countingSource(data, &calls)); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	if _, ok := s.StatBlob(d); !ok {
		t.Fatal("blob not cached after the cache became writable")
	}
}

// A transfer that bypasses the cache ends with ErrStalled when upstream
// stops sending, as a cached fetch does: the client is not held forever.
func TestPassthroughStalls(t *testing.T) {
	dir := t.TempDir()
	s, err := openDir(dir, Options{StallTimeouts: map[string]time.Duration{"up": 50 * time.Millisecond}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.tmpDir(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, d := randomBlob(t, 1<<10)
	st, err := s.Fetch(context.Background(), d, "up", stallingSource(make([]byte, 100), 1<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Cached() {
		t.Fatal("stream claims to be cached")
	}
	if err := st.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := st.Send(context.Background(), &out, 0, st.Size(), nil)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("sent %d, err %v; want ErrStalled", n, err)
	}
	if n >= 100 {
		t.Errorf("sent %d bytes; the bytes before the stall may be sent, but not all (the last is held back)", n)
	}
}

// A transfer that bypasses the cache still never looks complete when
// upstream sends the wrong bytes: the last byte is held back until the
// digest verified.
func TestPassthroughVerifies(t *testing.T) {
	data, d := randomBlob(t, 1<<20)
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	for name, body := range map[string][]byte{"corrupt": bad, "truncated": data[:len(data)-1]} {
		t.Run(name, func(t *testing.T) {
			src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
				return io.NopCloser(bytes.NewReader(body)), 0, int64(len(data)), nil
			}
			st := &Stream{dgst: d, src: src}
			if err := st.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			got, err := io.ReadAll(st.Reader(context.Background(), 0, nil))
			if !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrSizeMismatch) {
				t.Fatalf("err = %v, want a mismatch", err)
			}
			if len(got) >= len(data) {
				t.Fatalf("read %d bytes of a bad blob of %d: it looks complete", len(got), len(data))
			}
		})
	}
}

// A transfer that bypasses the cache can be read a byte at a time (the
// last read of an io.LimitedReader is often a single byte), skipping bytes
// or not.
func TestPassthroughReadsOneByteAtATime(t *testing.T) {
	data, d := randomBlob(t, 3000)
	for _, off := range []int64{0, 1, 2999} {
		st := &Stream{dgst: d, src: source(data)}
		if err := st.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(iotest.OneByteReader(st.Reader(context.Background(), off, nil)))
		st.Close()
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("from %d: read %d bytes, %v", off, len(got), err)
		}
	}
	// A skip that ends one byte into the blob's last chunk, as Send's
	// bypass after a write failure does.
	p, err := openPass(context.Background(), d, source(data), int64(len(data)-1), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if got, err := io.ReadAll(p); err != nil || !bytes.Equal(got, data[len(data)-1:]) {
		t.Fatalf("after skipping all but one byte: %q, %v", got, err)
	}
}

// When the cache file cannot be written part-way (here: the process's
// file size limit, as a full disk would), every reader of the fetch goes
// on from upstream where it was, gets the whole verified blob, and the
// partial file is removed.
func TestWriteFailureMidFetchStreamsThrough(t *testing.T) {
	dir := t.TempDir()
	s, err := openDir(dir, Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data, d := randomBlob(t, 8<<20)
	var calls atomic.Int32

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	small := lim
	small.Cur = 1 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()

	// The source gives out its bytes only when told, so that both readers
	// join the fetch before the write fails.
	gate := make(chan struct{})
	var first atomic.Bool
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		calls.Add(1)
		if first.CompareAndSwap(false, true) {
			<-gate
		}
		return io.NopCloser(bytes.NewReader(data)), 0, int64(len(data)), nil
	}
	var streams []*Stream
	for range 2 {
		st, err := s.Fetch(context.Background(), d, "up", src)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Cached() {
			t.Fatal("fetch bypassed a writable cache")
		}
		streams = append(streams, st)
	}
	close(gate)
	var wg sync.WaitGroup
	outs := make([][]byte, len(streams))
	errs := make([]error, len(streams))
	for i, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			if err := st.Wait(context.Background()); err != nil {
				errs[i] = err
				return
			}
			if i == 0 {
				var out bytes.Buffer
				_, errs[i] = st.Send(context.Background(), &out, 0, st.Size(), nil)
				outs[i] = out.Bytes()
			} else {
				outs[i], errs[i] = io.ReadAll(st.Reader(context.Background(), 0, nil))
			}
		}()
	}
	wg.Wait()
	restore()
	for i := range streams {
		if errs[i] != nil {
			t.Fatalf("reader %d: %v", i, errs[i])
		}
		if !bytes.Equal(outs[i], data) {
			t.Fatalf("reader %d: got %d bytes, content differs", i, len(outs[i]))
		}
	}
	if _, ok := s.StatBlob(d); ok {
		t.Fatal("a blob whose write failed was cached")
	}
	if calls.Load() != 3 {
		t.Errorf("upstream asked %d times, want 3 (the fetch, then one per reader)", calls.Load())
	}
	// Wait for the fetch to clean up, then: no partial file left.
	s.wg.Wait()
	if ents := tmpFiles(t, s); len(ents) != 0 {
		t.Errorf("partial downloads left: %v", ents)
	}
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			t.Errorf("blob file kept: %s", p)
		}
		return nil
	})
}
