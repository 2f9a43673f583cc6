package pgmeta

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/gatehouse/gatehouse/internal/testsvc"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open opens a store of namespace ns on dsn, closed when t ends.
func open(t *testing.T, dsn, ns string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{DSN: dsn, Namespace: ns, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMetaStore(t *testing.T) {
	storagetest.MetaStore(t, func(t *testing.T) storage.MetaStore {
		return open(t, testsvc.Postgres(t).DSN, "cache")
	})
}

// TestMetaStoreNamespaces runs the contract on namespaces of one database
// that already holds tables of the same names in another namespace: a
// store that saw them would fail it.
func TestMetaStoreNamespaces(t *testing.T) {
	dsn := testsvc.Postgres(t).DSN
	other := open(t, dsn, "other")
	if err := other.Update(t.Context(), func(tx storage.Tx) error {
		for _, table := range []string{"t", "t2", "t/", "u", "new", "none", "other"} {
			for _, k := range []string{"", "a", "ab", "b", "c", "counter", "k00001", "\xff"} {
				if err := tx.Put(table, []byte(k), []byte("other's")); err != nil {
					return err
				}
			}
			if _, err := tx.NextSequence(table); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n := 0
	storagetest.MetaStore(t, func(t *testing.T) storage.MetaStore {
		n++
		return open(t, dsn, "ns"+strconv.Itoa(n))
	})
	var keys int
	if err := other.View(t.Context(), func(tx storage.Tx) error {
		return tx.Scan("t", nil, false, func(k, v []byte) (bool, error) {
			keys++
			if string(v) != "other's" {
				return false, fmt.Errorf("other/t/%q = %q", k, v)
			}
			return true, nil
		})
	}); err != nil || keys != 8 {
		t.Errorf("namespace other after the contract: %d keys of 8, %v", keys, err)
	}
}

func get(t *testing.T, m storage.MetaStore, table, key string) []byte {
	t.Helper()
	var out []byte
	if err := m.View(t.Context(), func(tx storage.Tx) error {
		v, err := tx.Get(table, []byte(key))
		out = bytes.Clone(v)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func put(t *testing.T, m storage.MetaStore, table, key, value string) {
	t.Helper()
	if err := m.Update(t.Context(), func(tx storage.Tx) error {
		return tx.Put(table, []byte(key), []byte(value))
	}); err != nil {
		t.Fatal(err)
	}
}

func TestNamespacesAreSeparate(t *testing.T) {
	dsn := testsvc.Postgres(t).DSN
	cache, gate := open(t, dsn, "cache"), open(t, dsn, "gate")
	put(t, cache, "t", "a", "cache")
	if v := get(t, gate, "t", "a"); v != nil {
		t.Errorf("gate sees cache's t/a = %q", v)
	}
	put(t, gate, "t", "b", "gate")
	var seqs []uint64
	for _, s := range []*Store{cache, cache, gate} {
		if err := s.Update(t.Context(), func(tx storage.Tx) error {
			n, err := tx.NextSequence("t")
			seqs = append(seqs, n)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(seqs, []uint64{1, 2, 1}) {
		t.Errorf("sequences cache, cache, gate = %v, want [1 2 1]", seqs)
	}
	if err := gate.Update(t.Context(), func(tx storage.Tx) error { return tx.DropTable("t") }); err != nil {
		t.Fatal(err)
	}
	if v := get(t, cache, "t", "a"); string(v) != "cache" {
		t.Errorf("cache's t/a after gate dropped its t = %q", v)
	}
	var keys []string
	if err := cache.View(t.Context(), func(tx storage.Tx) error {
		return tx.Scan("t", nil, false, func(k, _ []byte) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		})
	}); err != nil || !slices.Equal(keys, []string{"a"}) {
		t.Errorf("cache's t holds %q (%v), want only a", keys, err)
	}

	// The Update lock is the namespace's: an Update of gate runs while
	// one of cache is open.
	gateDone := make(chan error, 1)
	err := cache.Update(t.Context(), func(tx storage.Tx) error {
		go func() {
			gateDone <- gate.Update(context.Background(), func(tx storage.Tx) error {
				return tx.Put("t", []byte("c"), []byte("gate"))
			})
		}()
		select {
		case err := <-gateDone:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("an Update of gate waited for the open Update of cache")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpdatesSerialisedAcrossStores: two stores of one namespace are two
// replicas; their Updates are serialised by the database.
func TestUpdatesSerialisedAcrossStores(t *testing.T) {
	dsn := testsvc.Postgres(t).DSN
	stores := []*Store{open(t, dsn, "cache"), open(t, dsn, "cache")}
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range 2 * n {
		wg.Go(func() {
			errs <- stores[i%2].Update(context.Background(), func(tx storage.Tx) error {
				v, err := tx.Get("t", []byte("counter"))
				if err != nil {
					return err
				}
				var c uint64
				if v != nil {
					c = binary.BigEndian.Uint64(v)
				}
				return tx.Put("t", []byte("counter"), binary.BigEndian.AppendUint64(nil, c+1))
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v := get(t, stores[0], "t", "counter"); len(v) != 8 || binary.BigEndian.Uint64(v) != 2*n {
		t.Errorf("counter after %d increments by two stores = %x", 2*n, v)
	}
}

// TestScanCallsBackInTheTransaction: fn of Scan reads the scanned table
// and writes another while the scan crosses several pages.
func TestScanCallsBackInTheTransaction(t *testing.T) {
	s := open(t, testsvc.Postgres(t).DSN, "cache")
	const n = 3*scanPage + 17
	if err := s.Update(t.Context(), func(tx storage.Tx) error {
		for i := range n {
			if err := tx.Put("t", fmt.Appendf(nil, "k%04d", i), fmt.Appendf(nil, "v%d", i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, reverse := range []bool{false, true} {
		seen := 0
		if err := s.Update(t.Context(), func(tx storage.Tx) error {
			if err := tx.DropTable("copy"); err != nil {
				return err
			}
			return tx.Scan("t", []byte("k"), reverse, func(k, v []byte) (bool, error) {
				seen++
				again, err := tx.Get("t", k)
				if err != nil || !bytes.Equal(again, v) {
					return false, fmt.Errorf("Get(%s) inside Scan = %q, %v; want %q", k, again, err, v)
				}
				return true, tx.Put("copy", k, v)
			})
		}); err != nil {
			t.Fatal(err)
		}
		if seen != n {
			t.Errorf("Scan (reverse=%v) saw %d keys of %d", reverse, seen, n)
		}
		copied := 0
		if err := s.View(t.Context(), func(tx storage.Tx) error {
			return tx.Scan("copy", nil, false, func(k, v []byte) (bool, error) {
				copied++
				orig, err := tx.Get("t", k) // another table, inside a View's Scan
				if err != nil || !bytes.Equal(orig, v) {
					return false, fmt.Errorf("copy/%s = %q, t/%s = %q (%v)", k, v, k, orig, err)
				}
				return true, nil
			})
		}); err != nil || copied != n {
			t.Fatalf("copy holds %d keys of %d: %v", copied, n, err)
		}
	}
}

// TestKeyOrderIsBytewise checks the order of keys a text collation would
// get wrong: the empty key, 0x00, 0x7f against 0x80, 0xff, case.
func TestKeyOrderIsBytewise(t *testing.T) {
	s := open(t, testsvc.Postgres(t).DSN, "cache")
	keys := [][]byte{{}, {0}, {0, 0}, {0, 0xff}, {'A'}, {'B'}, {'a'}, {'a', 0}, {'b'}, {0x7f}, {0x80}, {0xc3, 0xa9}, {0xfe, 0xff}, {0xff}, {0xff, 0}, {0xff, 0xff}}
	if err := s.Update(t.Context(), func(tx storage.Tx) error {
		for i := len(keys) - 1; i >= 0; i-- {
			if err := tx.Put("t", keys[i], []byte{byte(i)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	if err := s.View(t.Context(), func(tx storage.Tx) error {
		return tx.Scan("t", nil, false, func(k, v []byte) (bool, error) {
			got = append(got, k)
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, keys, bytes.Equal) {
		t.Errorf("Scan order %x, want %x", got, keys)
	}
	if v := get(t, s, "t", ""); !bytes.Equal(v, []byte{0}) {
		t.Errorf("the empty key's value = %x", v)
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct{ prefix, want []byte }{
		{nil, nil},
		{[]byte{}, nil},
		{[]byte{0xff}, nil},
		{[]byte{0xff, 0xff}, nil},
		{[]byte("a"), []byte("b")},
		{[]byte{'a', 0xff}, []byte("b")},
		{[]byte{'a', 0xfe, 0xff}, []byte{'a', 0xff}},
		{[]byte{0}, []byte{1}},
	} {
		if got := prefixEnd(tc.prefix); !bytes.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("prefixEnd(%x) = %x, want %x", tc.prefix, got, tc.want)
		}
	}
}

func TestMigrations(t *testing.T) {
	migs, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var all []int
	for _, m := range migs {
		all = append(all, m.version)
	}
	dsn := testsvc.Postgres(t).DSN

	// Replicas starting together on a new database: one applies every
	// migration, the others none.
	const n = 4
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = Open(t.Context(), Options{DSN: dsn, Namespace: "cache", Log: slog.New(slog.DiscardHandler)})
		})
	}
	wg.Wait()
	var applied []int
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		applied = append(applied, stores[i].applied...)
		defer stores[i].Close()
	}
	slices.Sort(applied)
	if !slices.Equal(applied, all) {
		t.Errorf("%d stores opening at once applied %v, want each of %v once", n, applied, all)
	}
	var rows int
	if err := stores[0].pool.QueryRow(t.Context(), "SELECT count(*) FROM gatehouse_schema_migrations").Scan(&rows); err != nil || rows != len(all) {
		t.Errorf("gatehouse_schema_migrations holds %d rows (%v), want %d", rows, err, len(all))
	}

	// Opening again applies nothing.
	again := open(t, dsn, "gate")
	if len(again.applied) != 0 {
		t.Errorf("Open of a migrated database applied %v", again.applied)
	}

	// A schema newer than this binary knows is refused.
	newer := all[len(all)-1] + 1
	if _, err := again.pool.Exec(t.Context(), "INSERT INTO gatehouse_schema_migrations (version) VALUES ($1)", newer); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), Options{DSN: dsn, Namespace: "cache", Log: slog.New(slog.DiscardHandler)})
	if err == nil {
		s.Close()
		t.Fatalf("Open of a database at schema version %d succeeded", newer)
	}
	if !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), strconv.Itoa(newer)) {
		t.Errorf("Open of a newer schema: %v; want it to say the version is newer", err)
	}
}

func TestOpenErrorsHideThePassword(t *testing.T) {
	const pw = "s3cret-Pw"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := testsvc.Postgres(t).Server
	for _, dsn := range []string{
		fmt.Sprintf("postgres://gatehouse:%s@127.0.0.1:%d/db?sslmode=disable&connect_timeout=5", pw, closed),
		fmt.Sprintf("host=127.0.0.1 port=%d user=gatehouse password=%s dbname=db sslmode=disable connect_timeout=5", closed, pw),
		fmt.Sprintf("host=127.0.0.1 port=%d user=gatehouse password='%s' dbname=db sslmode=disable connect_timeout=5", closed, pw),
		fmt.Sprintf("postgres://gatehouse:%s@127.0.0.1:%d/db?sslmode=disable", "s3cret%2DPw", closed),
		// pgx names the user in its connection errors: one that is the
		// password too is masked.
		fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/db?sslmode=disable", pw, pw, closed),
		fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/missing_db?sslmode=disable", pw, srv.Port()),
		fmt.Sprintf("postgres://gatehouse:%s@127.0.0.1:notaport/db", pw),
		fmt.Sprintf("postgres://gatehouse:%s@[::1/db", pw),
		fmt.Sprintf("host=127.0.0.1 password='%s", pw),
		fmt.Sprintf("postgres://gatehouse:%s@127.0.0.1/db?pool_max_conns=many", pw),
	} {
		s, err := Open(t.Context(), Options{DSN: dsn, Namespace: "cache", Log: slog.New(slog.DiscardHandler)})
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", dsn)
			continue
		}
		for _, secret := range []string{pw, "s3cret%2DPw", dsn} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Open(%q) error shows %q: %v", dsn, secret, err)
			}
		}
		t.Logf("%s\n\t→ %v", dsn, err)
	}
}

// TestServerRestart: while PostgreSQL is down every call fails with an
// error (never "not found"); after it is back, the same store works
// again, its pool reconnecting.
func TestServerRestart(t *testing.T) {
	srv := testsvc.PostgresServer(t)
	dsn := srv.NewDatabase(t).DSN
	s := open(t, dsn, "cache")
	put(t, s, "t", "a", "1")
	held, _, err := s.Lease(t.Context(), "lease", "r1", "http://r1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Start the lease listener, so that it too sees the restart.
	waitCtx, cancelWait := context.WithCancel(t.Context())
	waitDone := make(chan error, 1)
	go func() { waitDone <- s.WaitRelease(waitCtx, "lease") }()

	srv.Stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = s.View(ctx, func(tx storage.Tx) error {
		v, err := tx.Get("t", []byte("a"))
		if err == nil {
			return fmt.Errorf("Get with the database down = %q, nil error", v)
		}
		return err
	})
	if err == nil || !strings.HasPrefix(err.Error(), "pgmeta: ") {
		t.Errorf("View with the database down: %v, want a pgmeta error", err)
	}
	if err := s.Update(ctx, func(tx storage.Tx) error { return tx.Put("t", []byte("b"), []byte("2")) }); err == nil {
		t.Error("Update with the database down succeeded")
	}
	if _, _, err := s.Lease(ctx, "other", "r1", "", time.Minute); err == nil {
		t.Error("Lease with the database down succeeded")
	}
	select {
	case err := <-waitDone:
		if err == nil {
			t.Error("WaitRelease returned nil while the database is down")
		}
	case <-time.After(30 * time.Second):
		t.Error("WaitRelease neither returned nor failed within 30 s of the database going down")
	}
	cancelWait()

	srv.Start(t)
	// The pool drops connections that died with the server; a call may
	// still meet one of them, but the store recovers by itself.
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := func() (v []byte, err error) {
			err = s.View(ctx, func(tx storage.Tx) error {
				v, err = tx.Get("t", []byte("a"))
				return err
			})
			return v, err
		}()
		if err == nil {
			if string(v) != "1" {
				t.Fatalf("t/a after the restart = %q, want 1", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store did not recover within 30 s of the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.Update(ctx, func(tx storage.Tx) error { return tx.Put("t", []byte("b"), []byte("2")) }); err != nil {
		t.Errorf("Update after the restart: %v", err)
	}

	// Leases survived, and a release is seen by a waiter of the store
	// again.
	other := open(t, dsn, "gate")
	got, acquired, err := other.Lease(ctx, "lease", "r2", "http://r2", time.Minute)
	if err != nil || acquired || got.Generation != held.Generation {
		t.Fatalf("lease after the restart: %+v, %v, %v; want r1's, still held", got, acquired, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.WaitRelease(ctx, "lease") }()
	if err := other.Release(ctx, held); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WaitRelease after the restart: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("WaitRelease did not return after Release")
	}
}

// TestViewIsReadOnlyInTheDatabase: a View's transaction is READ ONLY in
// PostgreSQL too, not only refused by txn.
func TestViewIsReadOnlyInTheDatabase(t *testing.T) {
	s := open(t, testsvc.Postgres(t).DSN, "cache")
	err := s.View(t.Context(), func(tx storage.Tx) error {
		_, err := tx.(*txn).tx.Exec(t.Context(), "INSERT INTO gatehouse_kv VALUES ('cache', 't', 'k', 'v')")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("INSERT in a View's transaction: %v, want a read-only transaction error", err)
	}
}

// TestContextIsHonoured: a transaction whose context ends fails and
// leaves nothing behind.
func TestContextIsHonoured(t *testing.T) {
	s := open(t, testsvc.Postgres(t).DSN, "cache")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.View(ctx, func(storage.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("View with a canceled context: %v", err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	err := s.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Put("t", []byte("a"), []byte("1")); err != nil {
			return err
		}
		cancel()
		return tx.Put("t", []byte("b"), []byte("2"))
	})
	if err == nil {
		t.Error("Update whose context ended inside succeeded")
	}
	if v := get(t, s, "t", "a"); v != nil {
		t.Errorf("a Put of a failed Update stayed: %q", v)
	}
}

// TestClosedStore: nothing runs on a closed store, and Close is
// idempotent.
func TestClosedStore(t *testing.T) {
	s, err := Open(t.Context(), Options{DSN: testsvc.Postgres(t).DSN, Namespace: "cache", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Lease(t.Context(), "l", "r1", "", time.Minute); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.WaitRelease(context.Background(), "l") }()
	time.Sleep(100 * time.Millisecond) // let it register, most likely
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("WaitRelease of a held lease returned nil when the store closed")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitRelease did not return when the store closed")
	}
	if err := s.View(t.Context(), func(storage.Tx) error { return nil }); err == nil {
		t.Error("View on a closed store succeeded")
	}
	if err := s.WaitRelease(t.Context(), "l"); err == nil {
		t.Error("WaitRelease on a closed store succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWrapRedacts(t *testing.T) {
	s := &Store{secrets: secretsOf("postgres://u:p%40ss@h/db", &pgx.ConnConfig{Config: pgconn.Config{Password: "p@ss"}})}
	inner := fmt.Errorf("dial postgres://u:p%%40ss@h/db as p@ss: %w", context.Canceled)
	err := s.wrap(inner, "get %s", "t")
	if strings.Contains(err.Error(), "p@ss") || strings.Contains(err.Error(), "p%40ss") {
		t.Errorf("wrap left a secret: %v", err)
	}
	if !strings.HasPrefix(err.Error(), "pgmeta: get t: dial ") {
		t.Errorf("wrap = %q", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a redacted error no longer unwraps to its cause: %v", err)
	}
}

func TestWrapWithoutSecrets(t *testing.T) {
	s := &Store{secrets: secretsOf("", &pgx.ConnConfig{})}
	err := s.wrap(errors.New("boom"), "get")
	if err.Error() != "pgmeta: get: boom (storage unavailable)" {
		t.Errorf("wrap with an empty DSN and no password = %q", err)
	}
	// A database that does not do what was asked is a 503 and a retry.
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("wrap does not mark the error storage.ErrUnavailable: %v", err)
	}
}

func TestOpenNeedsANamespace(t *testing.T) {
	if _, err := Open(t.Context(), Options{DSN: "postgres://127.0.0.1/db"}); err == nil {
		t.Error("Open without a namespace succeeded")
	}
}
