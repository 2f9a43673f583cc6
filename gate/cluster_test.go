package gate

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// onceCluster is an in-process Cluster for unit tests: one lock per name
// (package cluster's leases in PostgreSQL are tested there and end to end).
type onceCluster struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (c *onceCluster) Once(ctx context.Context, kind, name string, have func(context.Context) (bool, error), do func(context.Context) error) error {
	c.mu.Lock()
	if c.locks == nil {
		c.locks = map[string]*sync.Mutex{}
	}
	l := c.locks[name]
	if l == nil {
		l = &sync.Mutex{}
		c.locks[name] = l
	}
	c.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	if ok, err := have(ctx); err != nil || ok {
		return err
	}
	return do(ctx)
}

// replicaGate opens another gate on the fixture's records, as a second
// replica sharing them would.
func (f *fixture) replicaGate(t *testing.T, cl Cluster, dbv func() string) *Gate {
	cfg, err := config.Parse([]byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Config: &cfg.Gate, Meta: f.meta, Scanner: f.scanner, Blobs: f.blobs, Cluster: cl, DBVersion: dbv,
		Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// Replicas sharing the records scan an image once between them, and give
// the same verdict.
func TestOneScanForTheCluster(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.block = make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() { close(f.scanner.block) }) // the three Checks overlap
	cl := &onceCluster{}
	gates := []*Gate{f.replicaGate(t, cl, nil), f.replicaGate(t, cl, nil), f.replicaGate(t, cl, nil)}
	s := f.image(t, "team/app")
	f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
	verdicts := make([]*Verdict, len(gates))
	var wg sync.WaitGroup
	for i, g := range gates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := g.Check(t.Context(), s)
			if err != nil {
				t.Error(err)
			}
			verdicts[i] = v
		}()
	}
	wg.Wait()
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans of one image by three replicas, want 1", n)
	}
	for _, v := range verdicts {
		if v == nil || v.Admitted || v.Message != verdicts[0].Message {
			t.Fatalf("verdicts differ: %+v", verdicts)
		}
	}
}

// A replica whose DB is not the cluster's judges no new image: it answers
// *Pending (503, retry) and scans nothing with its old DB.
func TestReplicaWithoutTheClusterDBWaits(t *testing.T) {
	f := newFixture(t, policyYAML)
	g := f.replicaGate(t, &onceCluster{}, func() string { return "db-2" }) // the scanner has db-1
	_, err := g.Check(t.Context(), f.image(t, "team/app"))
	var p *Pending
	if !errors.As(err, &p) {
		t.Fatalf("Check with the cluster on another DB: %v, want *Pending", err)
	}
	if n := f.scanner.scans.Load(); n != 0 {
		t.Fatalf("%d scans with a DB that is not the cluster's", n)
	}
	if g.DBVersion() != "db-2" {
		t.Fatalf("DBVersion %q, want the cluster's", g.DBVersion())
	}
}
