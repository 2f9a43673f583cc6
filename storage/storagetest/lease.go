package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/storage"
)

// Leaser runs the Leaser contract against leasers made by open. Every
// check uses lease names of its own; none measures how fast anything is.
// Waits are bounded only so that a broken leaser fails rather than hangs.
func Leaser(t *testing.T, open func(t *testing.T) storage.Leaser) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, storage.Leaser)
	}{
		{"AcquireFree", leaseAcquire},
		{"HeldByAnother", leaseHeld},
		{"RenewExtends", leaseRenew},
		{"ExpiredIsTakenOver", leaseExpiry},
		{"StaleGenerationIsLost", leaseStale},
		{"ReleaseFreesAtOnce", leaseRelease},
		{"NamesAreSeparate", leaseNames},
		{"WaitReleaseOfFreeLease", leaseWaitFree},
		{"WaitReleaseWokenByRelease", leaseWaitRelease},
		{"WaitReleaseAtExpiry", leaseWaitExpiry},
		{"WaitReleaseContextEnds", leaseWaitCancel},
		{"ConcurrentLeaseOneAcquires", leaseConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// bound is how long a check waits for something that must happen, so
// that a broken leaser fails instead of hanging; it is no speed target.
const bound = 30 * time.Second

func take(t *testing.T, l storage.Leaser, name, holder string, ttl time.Duration) storage.Lease {
	t.Helper()
	got, acquired, err := l.Lease(t.Context(), name, holder, "http://"+holder, ttl)
	if err != nil {
		t.Fatalf("Lease(%s, %s): %v", name, holder, err)
	}
	if !acquired {
		t.Fatalf("Lease(%s, %s): not acquired, held by %+v", name, holder, got)
	}
	return got
}

// holderOf asks for name as holder and returns the lease it found held.
func holderOf(t *testing.T, l storage.Leaser, name, holder string) storage.Lease {
	t.Helper()
	got, acquired, err := l.Lease(t.Context(), name, holder, "http://"+holder, time.Minute)
	if err != nil {
		t.Fatalf("Lease(%s, %s): %v", name, holder, err)
	}
	if acquired {
		t.Fatalf("Lease(%s, %s) acquired a lease that is held: %+v", name, holder, got)
	}
	return got
}

// leaseName makes names unique across the checks of one run, in case
// open hands out leasers of one shared store.
func leaseName(t *testing.T, name string) string {
	return fmt.Sprintf("%s/%s/%d", t.Name(), name, time.Now().UnixNano())
}

func leaseAcquire(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	got := take(t, l, name, "r1", time.Minute)
	if got.Name != name || got.Holder != "r1" || got.Addr != "http://r1" {
		t.Errorf("acquired lease %+v: want name %s, holder r1, addr http://r1", got, name)
	}
	if got.Generation <= 0 {
		t.Errorf("generation %d of an acquired lease, want > 0", got.Generation)
	}
	if got.Expires.IsZero() {
		t.Error("acquired lease has no expiry")
	}
}

func leaseHeld(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	first := take(t, l, name, "r1", time.Minute)
	for _, asker := range []string{"r2", "r1"} { // the holder asking again gets no new lease either
		got := holderOf(t, l, name, asker)
		if got.Holder != "r1" || got.Addr != "http://r1" || got.Generation != first.Generation || got.Name != name {
			t.Errorf("%s found %+v, want the lease of r1: %+v", asker, got, first)
		}
	}
}

func leaseRenew(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	first := take(t, l, name, "r1", 300*time.Millisecond)
	if err := l.Renew(t.Context(), first, time.Minute); err != nil {
		t.Fatalf("Renew of a held lease: %v", err)
	}
	// Past the first ttl, the renewed lease is still r1's.
	time.Sleep(600 * time.Millisecond)
	got := holderOf(t, l, name, "r2")
	if got.Holder != "r1" || got.Generation != first.Generation {
		t.Errorf("after Renew, found %+v; want r1's lease of generation %d", got, first.Generation)
	}
	if err := l.Renew(t.Context(), first, time.Minute); err != nil {
		t.Errorf("second Renew: %v", err)
	}
}

// takeOver asks for name as holder until it gets it (an expiring lease).
func takeOver(t *testing.T, l storage.Leaser, name, holder string) storage.Lease {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		got, acquired, err := l.Lease(t.Context(), name, holder, "http://"+holder, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if acquired {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s could not take %s within %v: held by %+v", holder, name, bound, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func leaseExpiry(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	first := take(t, l, name, "r1", 300*time.Millisecond)
	second := takeOver(t, l, name, "r2")
	if second.Holder != "r2" || second.Generation <= first.Generation {
		t.Errorf("taken over after expiry: %+v; want r2 with a generation > %d", second, first.Generation)
	}
	if got := holderOf(t, l, name, "r3"); got.Holder != "r2" || got.Generation != second.Generation {
		t.Errorf("after the takeover r3 found %+v, want r2's lease", got)
	}
}

func leaseStale(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	first := take(t, l, name, "r1", 300*time.Millisecond)
	second := takeOver(t, l, name, "r2")
	if err := l.Renew(t.Context(), first, time.Minute); !errors.Is(err, storage.ErrLeaseLost) {
		t.Errorf("Renew with the lost generation %d: %v, want ErrLeaseLost", first.Generation, err)
	}
	if err := l.Release(t.Context(), first); !errors.Is(err, storage.ErrLeaseLost) {
		t.Errorf("Release with the lost generation %d: %v, want ErrLeaseLost", first.Generation, err)
	}
	// Neither touched the new holder's lease.
	if got := holderOf(t, l, name, "r3"); got.Holder != "r2" || got.Generation != second.Generation {
		t.Errorf("after a stale Renew and Release, r3 found %+v; want r2's lease %+v", got, second)
	}
	if err := l.Renew(t.Context(), second, time.Minute); err != nil {
		t.Errorf("Renew by the current holder: %v", err)
	}
}

func leaseRelease(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	first := take(t, l, name, "r1", time.Minute)
	if err := l.Release(t.Context(), first); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// Free at once, long before its ttl, and the generation still grows.
	second := take(t, l, name, "r2", time.Minute)
	if second.Generation <= first.Generation {
		t.Errorf("generation %d after a Release of generation %d: want greater", second.Generation, first.Generation)
	}
	if err := l.Renew(t.Context(), first, time.Minute); !errors.Is(err, storage.ErrLeaseLost) {
		t.Errorf("Renew of the released lease after another took it: %v, want ErrLeaseLost", err)
	}
	if err := l.Release(t.Context(), second); err != nil {
		t.Fatal(err)
	}
	third := take(t, l, name, "r1", time.Minute)
	if third.Generation <= second.Generation {
		t.Errorf("generation %d after generation %d: want greater", third.Generation, second.Generation)
	}
}

func leaseNames(t *testing.T, l storage.Leaser) {
	a, b := leaseName(t, "a"), leaseName(t, "b")
	take(t, l, a, "r1", time.Minute)
	got := take(t, l, b, "r2", time.Minute) // a held is no reason to refuse b
	if got.Holder != "r2" {
		t.Errorf("lease b: %+v", got)
	}
}

// waitRelease runs WaitRelease in a goroutine; its result arrives on the
// channel.
func waitRelease(ctx context.Context, l storage.Leaser, name string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- l.WaitRelease(ctx, name) }()
	return done
}

func await(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		t.Fatalf("WaitRelease did not return within %v %s", bound, what)
		return nil
	}
}

func leaseWaitFree(t *testing.T, l storage.Leaser) {
	if err := await(t, waitRelease(t.Context(), l, leaseName(t, "never")), "for a lease never taken"); err != nil {
		t.Errorf("WaitRelease of a lease never taken: %v", err)
	}
	name := leaseName(t, "released")
	if err := l.Release(t.Context(), take(t, l, name, "r1", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := await(t, waitRelease(t.Context(), l, name), "for a released lease"); err != nil {
		t.Errorf("WaitRelease of a released lease: %v", err)
	}
}

func leaseWaitRelease(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	held := take(t, l, name, "r1", time.Minute)
	done := waitRelease(t.Context(), l, name)
	// Held for a minute: WaitRelease must not return meanwhile.
	select {
	case err := <-done:
		t.Fatalf("WaitRelease returned (%v) while the lease is held", err)
	case <-time.After(300 * time.Millisecond):
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Release(context.Background(), held); err != nil {
			t.Error(err)
		}
	})
	if err := await(t, done, "after Release"); err != nil {
		t.Errorf("WaitRelease after Release: %v", err)
	}
	wg.Wait()
}

func leaseWaitExpiry(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	take(t, l, name, "r1", 300*time.Millisecond)
	if err := await(t, waitRelease(t.Context(), l, name), "after the lease expired"); err != nil {
		t.Errorf("WaitRelease of an expiring lease: %v", err)
	}
	take(t, l, name, "r2", time.Minute) // it is free indeed
}

func leaseWaitCancel(t *testing.T, l storage.Leaser) {
	name := leaseName(t, "a")
	take(t, l, name, "r1", time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	done := waitRelease(ctx, l, name)
	cancel()
	if err := await(t, done, "after its context was canceled"); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitRelease after its context was canceled: %v, want context.Canceled", err)
	}
	if got := holderOf(t, l, name, "r2"); got.Holder != "r1" {
		t.Errorf("lease after a canceled wait: %+v", got)
	}
}

func leaseConcurrent(t *testing.T, l storage.Leaser) {
	const n = 16
	name := leaseName(t, "a")
	type result struct {
		l        storage.Lease
		acquired bool
		err      error
	}
	results := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			got, acquired, err := l.Lease(context.Background(), name, fmt.Sprintf("r%d", i), fmt.Sprintf("http://r%d", i), time.Minute)
			results[i] = result{got, acquired, err}
		})
	}
	close(start)
	wg.Wait()
	var winner *storage.Lease
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("Lease of r%d: %v", i, r.err)
		}
		if r.acquired {
			if winner != nil {
				t.Fatalf("two of %d concurrent Lease calls acquired: %+v and %+v", n, *winner, r.l)
			}
			winner = &results[i].l
		}
	}
	if winner == nil {
		t.Fatalf("none of %d concurrent Lease calls acquired", n)
	}
	for i, r := range results {
		if !r.acquired && (r.l.Holder != winner.Holder || r.l.Generation != winner.Generation) {
			t.Errorf("r%d found %+v, want the winner's lease %+v", i, r.l, *winner)
		}
	}
}
