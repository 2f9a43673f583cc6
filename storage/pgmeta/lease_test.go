package pgmeta

import (
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/internal/testsvc"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

func TestLeaser(t *testing.T) {
	storagetest.Leaser(t, func(t *testing.T) storage.Leaser {
		return open(t, testsvc.Postgres(t).DSN, "cache")
	})
}

// TestLeasesAcrossStores: leases are the database's, shared by replicas
// and namespaces; a Release on one store wakes WaitRelease on another.
func TestLeasesAcrossStores(t *testing.T) {
	dsn := testsvc.Postgres(t).DSN
	a, b := open(t, dsn, "cache"), open(t, dsn, "gate")
	held, acquired, err := a.Lease(t.Context(), "fetch/sha256:x", "r1", "http://r1", time.Minute)
	if err != nil || !acquired {
		t.Fatalf("Lease on a: %+v, %v, %v", held, acquired, err)
	}
	got, acquired, err := b.Lease(t.Context(), "fetch/sha256:x", "r2", "http://r2", time.Minute)
	if err != nil || acquired || got.Holder != "r1" || got.Addr != "http://r1" {
		t.Fatalf("Lease on b of a's lease: %+v, %v, %v; want r1's", got, acquired, err)
	}
	done := make(chan error, 1)
	go func() { done <- b.WaitRelease(t.Context(), "fetch/sha256:x") }()
	select {
	case err := <-done:
		t.Fatalf("WaitRelease on b returned (%v) while a holds the lease", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Release(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitRelease on b did not return after a released")
	}
	if got, acquired, err := b.Lease(t.Context(), "fetch/sha256:x", "r2", "http://r2", time.Minute); err != nil || !acquired || got.Generation <= held.Generation {
		t.Errorf("b's Lease after the release: %+v, %v, %v; want acquired, generation > %d", got, acquired, err, held.Generation)
	}
}

// TestReleaseNotifies checks that Release reaches the waiters of another
// store through NOTIFY: the channel watched here is woken by the listener
// only, never by WaitRelease's poll.
func TestReleaseNotifies(t *testing.T) {
	dsn := testsvc.Postgres(t).DSN
	a, b := open(t, dsn, "cache"), open(t, dsn, "cache")
	held, _, err := a.Lease(t.Context(), "x", "r1", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := b.lis.add(b, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer b.lis.remove("x", ch)
	// The listener's first LISTEN wakes every waiter once: drain that.
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("the listener did not start")
	}
	if err := a.Release(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("no notification reached the waiter of x after Release")
	}
}
