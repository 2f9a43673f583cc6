package warm_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/upstream"
	"github.com/gatehouse/gatehouse/warm"
)

// oneLease is a cluster of one lease: Once runs do while nobody else
// does, and returns at once otherwise (as cluster.Node does with no have).
type oneLease struct{ mu sync.Mutex }

func (o *oneLease) Once(ctx context.Context, kind, name string, have func(context.Context) (bool, error), do func(context.Context) error) error {
	if !o.mu.TryLock() {
		return nil
	}
	defer o.mu.Unlock()
	return do(ctx)
}

// headCounter counts the tags a watcher asks about (none exists).
type headCounter struct {
	warm.Content
	heads atomic.Int32
}

func (h *headCounter) ResolveTag(context.Context, string, string, string) (v1.Hash, error) {
	h.heads.Add(1)
	return v1.Hash{}, &upstream.Error{Status: http.StatusNotFound}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRunLeader: of two replicas, only the holder of the watch lease
// polls; when it stops, the other takes over.
func TestRunLeader(t *testing.T) {
	watches := []config.Watch{{Repository: "r.io/app", Upstream: "r.io", Repo: "app", Tags: []string{"v1"}, MaxTags: 1,
		Interval: config.Duration(time.Millisecond)}}
	cl := &oneLease{}
	a, b := &headCounter{}, &headCounter{}
	actx, stopA := context.WithCancel(t.Context())
	bctx, stopB := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { warm.NewWatcher(a, nil, watches, nil).RunLeader(actx, cl, time.Millisecond) })
	waitUntil(t, "poll by the first replica", func() bool { return a.heads.Load() >= 3 })
	wg.Go(func() { warm.NewWatcher(b, nil, watches, nil).RunLeader(bctx, cl, time.Millisecond) })
	waitUntil(t, "more polls by the first replica", func() bool { return a.heads.Load() >= 20 })
	if n := b.heads.Load(); n != 0 {
		t.Errorf("the replica without the lease polled %d times", n)
	}
	stopA()
	waitUntil(t, "poll by the second replica after the first stopped", func() bool { return b.heads.Load() >= 1 })
	stopB()
	wg.Wait()
}
