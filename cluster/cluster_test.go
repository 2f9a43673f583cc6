package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/storage/localblob"
)

// memLeaser is an in-process storage.Leaser for unit tests (pgmeta's is
// checked against PostgreSQL by storagetest.Leaser). cut, when set, makes
// every call of that holder fail, as if its replica were gone.
type memLeaser struct {
	mu     sync.Mutex
	leases map[string]storage.Lease
	cut    map[string]bool
}

func newMemLeaser() *memLeaser {
	return &memLeaser{leases: map[string]storage.Lease{}, cut: map[string]bool{}}
}

var errCut = errors.New("replica cut off")

func (m *memLeaser) Lease(_ context.Context, name, holder, addr string, ttl time.Duration) (storage.Lease, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cut[holder] {
		return storage.Lease{}, false, errCut
	}
	l, ok := m.leases[name]
	if ok && time.Now().Before(l.Expires) {
		return l, false, nil
	}
	l = storage.Lease{Name: name, Holder: holder, Addr: addr, Generation: l.Generation + 1, Expires: time.Now().Add(ttl)}
	m.leases[name] = l
	return l, true, nil
}

func (m *memLeaser) Renew(_ context.Context, l storage.Lease, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cut[l.Holder] {
		return errCut
	}
	cur := m.leases[l.Name]
	if cur.Generation != l.Generation || !time.Now().Before(cur.Expires) {
		return storage.ErrLeaseLost
	}
	cur.Expires = time.Now().Add(ttl)
	m.leases[l.Name] = cur
	return nil
}

func (m *memLeaser) Release(_ context.Context, l storage.Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.leases[l.Name]
	if cur.Generation != l.Generation {
		return storage.ErrLeaseLost
	}
	cur.Expires = time.Now().Add(-time.Second)
	m.leases[l.Name] = cur
	return nil
}

func (m *memLeaser) WaitRelease(ctx context.Context, name string) error {
	for {
		m.mu.Lock()
		l := m.leases[name]
		m.mu.Unlock()
		if !time.Now().Before(l.Expires) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// replica is one gatehouse of a test cluster: its cache on the shared
// stores, its node and its peer listener.
type replica struct {
	store *cache.Store
	node  *Node
	peer  *httptest.Server
}

// newCluster starts n replicas sharing one record store, one blob store
// and one lease table.
func newCluster(t *testing.T, n int, ttl time.Duration) ([]*replica, *memLeaser) {
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
	leaser := newMemLeaser()
	var rs []*replica
	for range n {
		r := &replica{}
		r.peer = httptest.NewUnstartedServer(nil)
		node, err := New(Options{Leaser: leaser, Addr: "http://" + r.peer.Listener.Addr().String(),
			Secret: []byte("0123456789abcdef"), TTL: ttl, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		r.node = node
		r.store, err = cache.Open(cache.Options{Blobs: blobs, Meta: meta, Shared: true, Coordinator: node, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		r.peer.Config.Handler = node.Handler(r.store)
		r.peer.Start()
		t.Cleanup(func() { r.peer.Close(); r.store.Close() })
		rs = append(rs, r)
	}
	return rs, leaser
}

func testBlob(n int) ([]byte, v1.Hash) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/4093)
	}
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// slowSource serves data in 64 KiB steps, one every step, counting the
// upstream requests; after stopAt bytes (when > 0) it blocks until ctx ends.
func slowSource(data []byte, step time.Duration, stopAt int, calls *atomic.Int32) cache.Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		calls.Add(1)
		pr, pw := io.Pipe()
		go func() {
			for pos := int(off); pos < len(data); pos += 64 << 10 {
				if stopAt > 0 && pos >= stopAt {
					<-ctx.Done()
					pw.CloseWithError(ctx.Err())
					return
				}
				select {
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				case <-time.After(step):
				}
				if _, err := pw.Write(data[pos:min(pos+64<<10, len(data))]); err != nil {
					return
				}
			}
			pw.Close()
		}()
		return pr, off, int64(len(data)), nil
	}
}

func readAll(ctx context.Context, s *cache.Store, d v1.Hash, src cache.Source) ([]byte, error) {
	st, err := s.Fetch(ctx, d, "up", src)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := st.Wait(ctx); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	_, err = st.Send(ctx, &buf, 0, st.Size(), nil)
	return buf.Bytes(), err
}

// Concurrent cold requests at three replicas cost one upstream request;
// every reader gets the blob's bytes while they arrive, and later readers
// at any replica find the committed blob through the shared records.
func TestOneFetchForTheCluster(t *testing.T) {
	rs, _ := newCluster(t, 3, 2*time.Second)
	data, d := testBlob(2<<20 + 123)
	var calls atomic.Int32
	src := slowSource(data, 2*time.Millisecond, 0, &calls)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	got := make([][]byte, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = readAll(t.Context(), rs[i%3].store, d, src)
		}()
	}
	wg.Wait()
	for i := range 6 {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %v (%d bytes)", i, errs[i], len(got[i]))
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d upstream requests for one blob at three replicas, want 1", n)
	}
	var peered int64
	for _, r := range rs {
		peered += r.store.Stats().Peered
	}
	if peered == 0 {
		t.Fatal("no reader streamed from the fetching replica")
	}
	for _, r := range rs {
		b, err := readAll(t.Context(), r.store, d, src)
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("warm read: %v", err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d upstream requests after warm reads, want 1", n)
	}
}

// A fetching replica that dies mid-blob: its peers' readers fail (never a
// short or wrong blob), and once its lease lapsed another replica fetches
// the blob itself.
func TestFetchingReplicaDies(t *testing.T) {
	rs, leaser := newCluster(t, 2, 600*time.Millisecond)
	a, b := rs[0], rs[1]
	data, d := testBlob(1 << 20)
	var calls atomic.Int32
	stuck := slowSource(data, time.Millisecond, 512<<10, &calls) // A's upstream stops half way

	ctxA, cancelA := context.WithCancel(t.Context())
	defer cancelA()
	stA, err := a.store.Fetch(ctxA, d, "up", stuck)
	if err != nil {
		t.Fatal(err)
	}
	defer stA.Close()
	done := make(chan error, 1)
	go func() {
		got, err := readAll(t.Context(), b.store, d, stuck)
		if err == nil && !bytes.Equal(got, data) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	// A dies once B is streaming from it (a sleep here let A die before
	// B asked it, and the test pass without a reader mid-stream).
	for deadline := time.Now().Add(10 * time.Second); b.store.Stats().Peered == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("B did not stream from A within 10 s")
		}
	}
	// A dies: its peer listener goes, its lease is no longer renewed.
	leaser.mu.Lock()
	leaser.cut[a.node.ID()] = true
	leaser.mu.Unlock()
	a.peer.CloseClientConnections()
	a.peer.Close()
	if err := <-done; err == nil {
		t.Fatal("a reader of a dead replica's fetch got a complete blob it cannot have")
	}
	// B takes over after the lease expired, from an upstream that works.
	var calls2 atomic.Int32
	got, err := readAll(t.Context(), b.store, d, slowSource(data, 0, 0, &calls2))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("take-over: %v", err)
	}
	if calls2.Load() != 1 {
		t.Fatalf("take-over made %d upstream requests", calls2.Load())
	}
}

// Peer requests need the cluster's secret.
func TestPeerRequestsAreAuthenticated(t *testing.T) {
	rs, _ := newCluster(t, 1, time.Second)
	_, d := testBlob(10)
	resp, err := http.Get(rs[0].peer.URL + blobPath + d.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated peer request: %s", resp.Status)
	}
	other, _ := New(Options{Leaser: newMemLeaser(), Secret: []byte("another secret of 16+"), Log: slog.New(slog.DiscardHandler)})
	req, _ := http.NewRequest(http.MethodGet, rs[0].peer.URL+blobPath+d.String(), nil)
	other.sign(req)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("peer request signed with another secret: %s", resp.Status)
	}
	req, _ = http.NewRequest(http.MethodGet, rs[0].peer.URL+blobPath+d.String(), nil)
	rs[0].node.sign(req)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("signed request for a blob the replica does not have: %s", resp.Status)
	}
}

// Once runs the work on one replica; the others wait and find it done.
func TestOnce(t *testing.T) {
	rs, _ := newCluster(t, 3, time.Second)
	var runs atomic.Int32
	var done atomic.Bool
	have := func(context.Context) (bool, error) { return done.Load(), nil }
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := rs[i%3].node.Once(t.Context(), "scan", "scan/x", have, func(context.Context) error {
				runs.Add(1)
				time.Sleep(50 * time.Millisecond)
				done.Store(true)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if runs.Load() != 1 {
		t.Fatalf("work ran %d times, want 1", runs.Load())
	}
}

// A claim of this replica that was never released (PostgreSQL did not
// answer the release) is waited out, not spun on: the next request
// fetches once it lapsed.
func TestStaleOwnClaim(t *testing.T) {
	rs, leaser := newCluster(t, 1, 600*time.Millisecond)
	a := rs[0]
	data, d := testBlob(100 << 10)
	if _, ok, err := leaser.Lease(t.Context(), "fetch/"+d.String(), a.node.ID(), a.node.addr, 3*time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	var calls atomic.Int32
	got, err := readAll(t.Context(), a.store, d, slowSource(data, 0, 0, &calls))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetch behind a stale own claim: %v", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d upstream requests", calls.Load())
	}
}
